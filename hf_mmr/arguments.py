"""``MMRTrainingArguments``: ``TrainingArguments`` plus the multi-margin regularization settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import TrainingArguments

from .checks import check_number, is_finite_number
from .errors import MMRConfigError
from .margins import MMR_FORMS

CALIBRATIONS = ("none", "temperature")

# TrainingArguments' numbers that run_glue users set, and what each must be (checked before the
# Trainer turns a bad one into a traceback deep in the DataLoader or the optimizer).
POSITIVE_INTEGERS = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
POSITIVE_NUMBERS = ("learning_rate", "num_train_epochs", "adam_epsilon")
NON_NEGATIVE_NUMBERS = ("weight_decay", "max_grad_norm", "warmup_steps")
STEP_INTERVALS = ("logging_steps", "eval_steps", "save_steps")  # > 0 when set (a float < 1 is a ratio)


@dataclass
class MMRTrainingArguments(TrainingArguments):
    """Training arguments of ``MMRTrainer``; with the defaults it trains exactly like ``Trainer``."""

    mmr_lambda: float = field(
        default=0.0,
        metadata={"help": "Weight of the MMR penalty added to the classification loss (0 = plain Trainer)."},
    )
    mmr_lambda_start: float | None = field(
        default=None,
        metadata={
            "help": "MMR weight at step 0; it moves linearly to mmr_lambda over mmr_lambda_warmup_ratio of the "
            "training steps. Default: mmr_lambda (a constant weight)."
        },
    )
    mmr_lambda_warmup_ratio: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of the training steps over which the MMR weight goes from mmr_lambda_start to "
            "mmr_lambda (0 = no ramp)."
        },
    )
    mmr_form: Literal["weights", "margin"] = field(
        default="weights",
        metadata={
            "help": "Which MMR penalty: 'weights' = mean_i mean_{j in J_i} R^2 ||w_{y_i} - w_j||^2 (the authors' CNN "
            "code; J_i the mmr_top_k strongest wrong classes) or 'margin' = R / mean_i m_i, m_i the mean distance "
            "of h_i to the mmr_top_k nearest decision boundaries of its predicted class (the authors' BERT code). "
            "R = max_i ||h_i|| over the batch. The default is the form that cost less accuracy in the form study "
            "(docs/RESULTS.md), where neither beat the baseline."
        },
    )
    mmr_top_k: int = field(
        default=1,
        metadata={"help": "Number of strongest wrong classes penalized per example (1 <= k <= num_labels - 1)."},
    )
    mmr_detach_radius: bool = field(
        default=False,
        metadata={"help": "Stop the gradient through the feature radius R (by default R is optimized too)."},
    )
    mmr_head: str | None = field(
        default=None,
        metadata={
            "help": "Module path of the final nn.Linear that produces the logits, e.g. 'classifier.out_proj'. "
            "Default: found automatically."
        },
    )
    mms_selection: str = field(
        default="none",
        metadata={
            "help": "How training examples are chosen by minimal margin score (MMS): the name of a selection mode "
            "registered in hf_mmr.modes ('none' = the Trainer's uniform sampler); --help lists them all."
        },
    )
    # The cheapest pool measured: r = 4 and 10 cost 2.24x uniform's seconds per step on SST-2 against 1.54x,
    # and ended no higher (docs/RESULTS.md, "Does MMS selection save wall time?").
    mms_pool_factor: int = field(
        default=2,
        metadata={"help": "select: candidates scored per selected example (the pool holds factor x batch examples)."},
    )
    mms_scoring_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "select: examples per forward pass when scoring a pool, in chunks of similar length (inference "
            "only, so larger than the training batch fits, but each chunk is padded to its longest example). "
            "Default: per_device_train_batch_size."
        },
    )
    mms_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Optimizer steps of uniform sampling before MMS selection starts (a fresh head's scores are noise)."
        },
    )
    # The cached defaults are the setting with the fewest steps whose held-out accuracy stayed within 0.3 points
    # of uniform sampling on both SST-2 and MRPC (docs/RESULTS.md, "Does MMS selection save wall time?").
    mms_keep_quantile: float = field(
        default=0.4,
        metadata={"help": "cached: the share of each selective epoch's examples with the lowest MMS, all kept."},
    )
    mms_keep_fraction: float = field(
        default=0.2,
        metadata={
            "help": "cached: the fraction of the other examples kept at random; their loss is weighted by "
            "1 / fraction so the expected loss of the epoch is the full epoch's."
        },
    )
    mms_anneal_epochs: float = field(
        default=0.25,
        metadata={
            "help": "cached: the last epochs of training that keep every example, uniformly; a fraction anneals "
            "that last part of an epoch (0.5: its second half)."
        },
    )

    record_margins: bool = field(
        default=False,
        metadata={
            "help": "Record every training example's margins from the training forward pass (no extra pass) and "
            "write train_margins.csv: aum (mean signed distance of its features to the boundary of its given "
            "label), logit_aum, mean loss, confidence, variability, label_quality (= aum; lower = likelier a label "
            "error) and suspect (the lowest label_quality, as many as the estimated number of label errors)."
        },
    )

    calibration: Literal["none", "temperature"] = field(
        default="none",
        metadata={
            "help": "'temperature': after training, fit one temperature T on held-out training examples (minimum "
            "NLL) and divide the classifier head's weight and bias by it, so the saved model's probabilities are "
            "calibrated for every consumer; predictions do not change. 'none': leave the model as trained."
        },
    )
    calibration_split: float = field(
        default=0.1,
        metadata={
            "help": "calibration: the fraction of the training set held out from training (stratified by label, "
            "drawn with --seed) on which T is fitted; in (0, 0.5]. Ignored when MMRTrainer gets a "
            "calibration_dataset."
        },
    )

    def __post_init__(self) -> None:
        _check_training_numbers(self)
        if self.mmr_lambda_start is None:
            self.mmr_lambda_start = self.mmr_lambda
        check_number(self, "mmr_lambda", at_least=0)
        check_number(self, "mmr_lambda_start", at_least=0)
        check_number(self, "mmr_lambda_warmup_ratio", at_least=0, at_most=1)
        if self.mmr_form not in MMR_FORMS:
            raise MMRConfigError(f"--mmr_form must be one of {', '.join(MMR_FORMS)}, got {self.mmr_form!r}")
        check_number(self, "mmr_top_k", integer=True, at_least=1)
        if self.mmr_head is not None and not (isinstance(self.mmr_head, str) and self.mmr_head.strip()):
            raise MMRConfigError(
                f"--mmr_head must be a module path such as 'classifier', or left unset; got {self.mmr_head!r}"
            )
        for name in ("mmr_detach_radius", "record_margins"):  # a string such as "false" would read as True
            if not isinstance(getattr(self, name), bool):
                raise MMRConfigError(f"--{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.mms_selection, str):
            raise MMRConfigError(f"--mms_selection must be a mode's name, got {self.mms_selection!r}")
        # The mode's name and the mms_* settings are checked by the modes themselves (hf_mmr.modes.check_selection),
        # when MMRTrainer is built and when the script parses its flags.
        if self.calibration not in CALIBRATIONS:
            raise MMRConfigError(f"--calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")
        check_number(self, "calibration_split", above=0, at_most=0.5)
        super().__post_init__()
        if self.dataloader_pin_memory and torch.accelerator.current_accelerator() is None:
            # Pinned memory only speeds copies to an accelerator; without one torch warns at every DataLoader.
            self.dataloader_pin_memory = False

    def check_model(self, num_labels: int, problem_type: str | None = None, mode_uses_margins: bool = False) -> None:
        """Fail clearly if these settings cannot work with a model of ``num_labels`` outputs and ``problem_type``
        (``mode_uses_margins``: whether the selection mode scores examples by their margins)."""
        if num_labels < 2 or problem_type in ("regression", "multi_label_classification"):
            kind = problem_type or "regression"
            if self.mmr_enabled or mode_uses_margins:
                raise MMRConfigError(
                    f"MMR and MMS sampling need single-label classification, but this model is set up for {kind}; "
                    "use --mmr_lambda 0 and --mms_selection none"
                )
            for flag, needed, off in (
                ("--calibration temperature", self.calibrates, "--calibration none"),
                ("--record_margins", self.record_margins, "--record_margins false"),
            ):
                if needed:
                    raise MMRConfigError(
                        f"{flag} needs single-label classification, but this model is set up for {kind}; use {off}"
                    )
        if self.mmr_enabled and self.mmr_top_k > num_labels - 1:
            raise MMRConfigError(f"--mmr_top_k must be <= num_labels - 1 = {num_labels - 1}, got {self.mmr_top_k}")

    @property
    def calibrates(self) -> bool:
        """Whether a temperature is fitted and folded into the head after training."""
        return self.calibration != "none"

    @property
    def mmr_enabled(self) -> bool:
        """Whether the penalty is ever added (otherwise training is the plain Trainer's)."""
        return self.mmr_lambda > 0 or self.mmr_lambda_start > 0

    def mmr_lambda_at(self, step: int, max_steps: int) -> float:
        """MMR weight at optimizer step ``step`` of ``max_steps``: linear from start to mmr_lambda, then constant."""
        ramp_steps = self.mmr_lambda_warmup_ratio * max_steps
        if ramp_steps <= 0 or step >= ramp_steps:
            return float(self.mmr_lambda)
        return float(self.mmr_lambda_start + (self.mmr_lambda - self.mmr_lambda_start) * step / ramp_steps)


def _check_training_numbers(args: TrainingArguments) -> None:
    """One clear error, naming the flag, for a batch size, step count, rate or ratio that cannot work."""
    for name in POSITIVE_INTEGERS:
        check_number(args, name, integer=True, at_least=1)
    for name in POSITIVE_NUMBERS:
        check_number(args, name, above=0)
    for name in NON_NEGATIVE_NUMBERS:
        check_number(args, name, at_least=0)
    if not (isinstance(args.max_steps, int) and (args.max_steps > 0 or args.max_steps == -1)):
        raise MMRConfigError(
            f"--max_steps must be a positive integer, or -1 to train --num_train_epochs; got {args.max_steps!r}"
        )
    for name in STEP_INTERVALS:
        value = getattr(args, name)
        if value is not None and not (is_finite_number(value) and value > 0):
            raise MMRConfigError(
                f"--{name} must be > 0 (an integer, or a fraction of the training steps), got {value!r}"
            )
    check_number(args, "label_smoothing_factor", at_least=0, below=1)
