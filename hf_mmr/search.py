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
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from .errors import MissingPackageError, MMRConfigError
from .margins import MMR_FORMS

logger = logging.getLogger(__name__)

# Wide enough for both forms: the margin form's useful weights lie around the authors' 0.01, the
# weights form's lower (its penalty grows with R^2).
LAMBDA_RANGE = (1e-4, 0.1)
SEARCH_EXTRA = 'pip install "hf-mmr[search]"'
# The MMRTrainingArguments fields a search sets.
SEARCHED = ("mmr_lambda", "mmr_form", "mmr_detach_radius")
# Written in output_dir by a search: every trial and the chosen setting.
SEARCH_FILE = "mmr_search.json"


def make_mmr_hp_space(
    lambda_range: tuple[float, float] = LAMBDA_RANGE,
    forms: Sequence[str] = MMR_FORMS,
    detach_radius: Sequence[bool] = (False, True),
) -> Callable[[Any], dict[str, Any]]:
    """An optuna ``hp_space``: ``mmr_lambda`` log-uniform in ``lambda_range``, ``mmr_form`` among ``forms``,
    ``mmr_detach_radius`` among ``detach_radius`` (a single choice is fixed, not searched)."""
    low, high = lambda_range
    if not 0 < low <= high:
        raise MMRConfigError(f"the lambda range must satisfy 0 < low <= high, got {lambda_range}")
    unknown = [form for form in forms if form not in MMR_FORMS]
    if not forms or unknown:
        raise MMRConfigError(f"forms must be among {', '.join(MMR_FORMS)}, got {list(forms)}")
    if not detach_radius:
        raise MMRConfigError("detach_radius needs at least one value")

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
        raise MissingPackageError(f"the MMR search needs optuna: {SEARCH_EXTRA}") from None


def apply_setting(args: Any, setting: dict[str, Any]) -> Any:
    """A copy of training arguments with a searched MMR setting, validated like the user's own.

    Without a ramp, lambda starts at the searched value (``MMRTrainingArguments`` sets that default).
    """
    start = None if args.mmr_lambda_warmup_ratio == 0 else args.mmr_lambda_start
    return dataclasses.replace(args, **setting, mmr_lambda_start=start)


def search_mmr_setting(
    make_trainer: Callable[[Any, Any, Any], Any],
    args: Any,
    train_dataset: Any,
    *,
    metric: str,
    n_trials: int,
    heldout_fraction: float = 0.2,
    hp_space: Callable[[Any], dict[str, Any]] = mmr_hp_space,
    resuming: bool = False,
) -> dict:
    """Choose the MMR setting on a held-out slice of train; returns the report and writes ``SEARCH_FILE``.

    ``train_dataset`` (a ``datasets.Dataset``) is split by ``args.seed``; ``make_trainer(args, train,
    heldout)`` builds an ``MMRTrainer`` with ``model_init``; each of ``n_trials`` optuna (TPE, seeded)
    trials trains on the rest and is scored by ``metric`` (``eval_<name>``) on the slice. The best
    trial (ties: the earliest) is ``report["best"]``; give it to ``apply_setting``. A resumed run
    reuses the report its first start wrote, so the same command picks up where it stopped.
    """
    path = os.path.join(args.output_dir, SEARCH_FILE)
    if resuming and os.path.isfile(path):
        logger.info(f"Reusing the MMR search in {path}")
        with open(path) as handle:
            return json.load(handle)
    require_optuna()
    import optuna
    from transformers import TrainerCallback

    split = train_dataset.train_test_split(test_size=heldout_fraction, seed=args.seed)
    search_args = dataclasses.replace(
        args,
        output_dir=os.path.join(args.output_dir, "mmr_search"),
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        push_to_hub=False,
        report_to="none",
    )
    searcher = make_trainer(search_args, split["train"], split["test"])
    trials: list[dict] = []
    started = {}

    class TrialClock(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            started["time"] = time.perf_counter()

    def objective(metrics: dict[str, float]) -> float:
        setting = {key: getattr(searcher.args, key) for key in SEARCHED}
        seconds = round(time.perf_counter() - started["time"], 1)
        trials.append({"trial": len(trials), "setting": setting, "score": metrics[metric], "seconds": seconds})
        logger.info(f"MMR search trial {len(trials) - 1}: {setting} -> held-out {metric} {metrics[metric]:.4f}")
        return metrics[metric]

    searcher.add_callback(TrialClock())
    searcher.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=objective,
        n_trials=n_trials,
        direction="maximize",
        backend="optuna",
        sampler=optuna.samplers.TPESampler(seed=args.seed),
    )
    report = {
        "metric": metric,
        "heldout_fraction": heldout_fraction,
        "train_examples": len(split["train"]),
        "heldout_examples": len(split["test"]),
        "best": max(trials, key=lambda trial: (trial["score"], -trial["trial"])),
        "trials": trials,
    }
    if args.should_save:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(path, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


def card_section(report: dict) -> str:
    """The model card's account of a search: the chosen setting and every trial."""
    names = list(report["best"]["setting"])
    header = "| trial | " + " | ".join(f"`{name}`" for name in names) + f" | held-out {report['metric']} | seconds |"
    rows = [header, "|" + "---|" * (len(names) + 3)]
    for trial in report["trials"]:
        values = " | ".join(
            f"{trial['setting'][name]:.4g}"
            if isinstance(trial["setting"][name], float)
            else str(trial["setting"][name])
            for name in names
        )
        rows.append(f"| {trial['trial']} | {values} | {trial['score']:.4f} | {trial['seconds']:.0f} |")
    return (
        f"\n### Choosing the MMR setting\n\n{len(report['trials'])} trials of `Trainer.hyperparameter_search` "
        f"(optuna), each trained on {report['train_examples']} training examples and scored on the other "
        f"{report['heldout_examples']} (held out from train, not the evaluation set). Chosen: trial "
        f"{report['best']['trial']}.\n\n" + "\n".join(rows) + "\n"
    )
