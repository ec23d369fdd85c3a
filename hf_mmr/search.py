"""Choosing MMR's setting with the Trainer's own ``hyperparameter_search`` (optuna).

``mmr_hp_space`` is an ``hp_space`` for ``MMRTrainer.hyperparameter_search``: it draws
``mmr_lambda`` log-uniformly, the form and the radius detach switch. ``make_mmr_hp_space``
builds one over other ranges. Use it with ``model_init`` (every trial starts from the same
pretrained weights) and an evaluation set held out from *train*, never the dev set::

    trainer = MMRTrainer(model_init=model_init, args=args, train_dataset=train, eval_dataset=heldout,
                         compute_metrics=compute_metrics)
    best = trainer.hyperparameter_search(hp_space=mmr_hp_space, n_trials=8, direction="maximize",
                                         backend="optuna", compute_objective=lambda m: m["eval_accuracy"])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from .margins import MMR_FORMS

# Wide enough for both forms: the margin form's useful weights lie around the authors' 0.01, the
# weights form's lower (its penalty grows with R^2).
LAMBDA_RANGE = (1e-4, 0.1)
SEARCH_EXTRA = 'pip install "hf-mmr[search]"'
# The MMRTrainingArguments fields a search sets.
SEARCHED = ("mmr_lambda", "mmr_form", "mmr_detach_radius")


def make_mmr_hp_space(
    lambda_range: tuple[float, float] = LAMBDA_RANGE,
    forms: Sequence[str] = MMR_FORMS,
    detach_radius: Sequence[bool] = (False, True),
) -> Callable[[Any], dict[str, Any]]:
    """An optuna ``hp_space``: ``mmr_lambda`` log-uniform in ``lambda_range``, ``mmr_form`` among ``forms``,
    ``mmr_detach_radius`` among ``detach_radius`` (a single choice is fixed, not searched)."""
    low, high = lambda_range
    if not 0 < low <= high:
        raise ValueError(f"the lambda range must satisfy 0 < low <= high, got {lambda_range}")
    unknown = [form for form in forms if form not in MMR_FORMS]
    if not forms or unknown:
        raise ValueError(f"forms must be among {', '.join(MMR_FORMS)}, got {list(forms)}")
    if not detach_radius:
        raise ValueError("detach_radius needs at least one value")

    def hp_space(trial: Any) -> dict[str, Any]:
        space = {"mmr_lambda": trial.suggest_float("mmr_lambda", low, high, log=True)}
        space["mmr_form"] = forms[0] if len(forms) == 1 else trial.suggest_categorical("mmr_form", list(forms))
        space["mmr_detach_radius"] = (
            detach_radius[0]
            if len(detach_radius) == 1
            else trial.suggest_categorical("mmr_detach_radius", list(detach_radius))
        )
        return space

    return hp_space


mmr_hp_space = make_mmr_hp_space()


def require_optuna() -> None:
    """Fail with the command that installs optuna when it is missing."""
    try:
        import optuna  # noqa: F401 - only whether it imports
    except ImportError:
        raise ImportError(f"the MMR search needs optuna: {SEARCH_EXTRA}") from None


def apply_setting(args: Any, setting: dict[str, Any]) -> Any:
    """A copy of training arguments with a searched MMR setting, validated like the user's own.

    Without a ramp, lambda starts at the searched value (``MMRTrainingArguments`` sets that default).
    """
    start = None if args.mmr_lambda_warmup_ratio == 0 else args.mmr_lambda_start
    return dataclasses.replace(args, **setting, mmr_lambda_start=start)
