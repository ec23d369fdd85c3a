"""``MMRTrainer``: the Hugging Face ``Trainer`` with a multi-margin regularization term and MMS sampling."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from .arguments import MMRTrainingArguments
from .calibration import (
    check_calibration_labels,
    fit_temperature,
    fold_temperature,
    softmax,
    stratified_split,
    temperature_nll,
)
from .card import mmr_card_text
from .collectives import gather_examples, global_max, sum_over_processes
from .compat import TrainerHooks, TrainingPlan
from .context import TrainingContext
from .diagnostics import DiagnosticWindow
from .errors import ArgumentsTypeError, CheckpointError, HeadNotFoundError, MMRConfigError, NonFiniteLossError
from .evaluation import EvalMargins
from .head import FeatureCapture, HeadCall, find_classifier_head, logits_of
from .margins import is_class_labels, minimal_margin_scores, mmr_penalty, squared_radius
from .metrics import expected_calibration_error
from .modes import MicroBatch, SelectionMode, selection_mode
from .recording import MarginRecorder, write_table
from .recovery import check_resumable, last_complete_checkpoint, mark_complete
from .sampling import INDEX_KEY, IndexCollator, IndexedDataset, pool_size_to_select
from .scaling import LossScale
from .state import load_state, save_state

logger = logging.getLogger(__name__)

# Quantiles of each training batch's MMS that are logged (as mms/p10, mms/p50, mms/p90).
MMS_QUANTILES = torch.tensor([0.1, 0.5, 0.9])


class MMRTrainer(TrainerHooks):
    """``Trainer`` whose training loss is ``classification loss + lambda_t * MMR``, with optional MMS sampling.

    The input of the classifier's final ``nn.Linear`` is captured by a forward hook during the
    normal forward pass. Diagnostics, averaged over each logging window, are added to the
    Trainer's own logs, so every ``report_to`` integration receives them: ``mmr/penalty``,
    ``mmr/radius``, ``mmr/lambda``, ``mms/mean`` and its quantiles ``mms/p10``, ``mms/p50``,
    ``mms/p90``, and those of the selection mode. With ``mmr_lambda == 0`` and
    ``mms_selection == "none"`` the training is exactly that of ``Trainer``.

    ``selection`` is the selection mode (``hf_mmr.modes``), one object chosen once from
    ``mms_selection``: the trainer's sampling, epoch and checkpoint hooks delegate to it.
    With ``record_margins``, ``train_margins`` is the per-example table of the last training run
    (``hf_mmr.recording``), also written to ``output_dir/train_margins.csv``.

    Every evaluation also reports the margins of the evaluation set, from the features of its
    normal forward pass: ``eval_mms_median`` and ``eval_relative_margin_median`` (median MMS / R,
    R the largest feature norm of the set), and for single-label classification ``eval_ece`` and
    ``eval_nll``. ``eval_margins`` keeps the last evaluation's per-example MMS and its R.

    With ``calibration="temperature"`` a stratified ``calibration_split`` of the training set is held
    out (``train_rows``: the positions kept for training) unless a ``calibration_dataset`` is given;
    after training ``calibrate`` fits a temperature T on it and divides the head by T, so the saved
    model is calibrated (``temperature``, ``calibration_report``). Later evaluations report
    ``eval_ece`` of the calibrated model and ``eval_ece_uncalibrated`` of the head before it.
    """

    args: MMRTrainingArguments
    _initialized = False  # Trainer.__init__ calls model_init before MMRTrainer.__init__ has attached the head

    def __init__(self, *args: Any, calibration_dataset: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, MMRTrainingArguments):
            raise ArgumentsTypeError(
                "MMRTrainer needs MMRTrainingArguments (a drop-in replacement for TrainingArguments)"
            )
        self.context = TrainingContext(self)  # what the selection mode and the loss scaling see of the trainer
        self.selection: SelectionMode = selection_mode(self.context)  # the mode mms_selection names
        self.feature_capture: FeatureCapture | None = None
        self._head_checked = False
        self._window = DiagnosticWindow()
        self.loss_scale = LossScale(self.context)
        self._eval_margins: EvalMargins | None = None  # during an evaluation loop
        self._recorder: MarginRecorder | None = None
        self._epoch = 0
        self.train_margins = None  # record_margins: the per-example table of the last training run
        self.train_probs: np.ndarray | None = None  # record_margins: every example's mean probability vector
        self.eval_margins: dict[str, Any] | None = None
        self.search_report: dict | None = None  # a search's trials and choice, shown in the model card
        self._attach_head()
        self.calibration_dataset = calibration_dataset
        # With a calibration slice held out: the positions of the given training set that are trained on.
        self.train_rows: list[int] | None = None
        self.temperature: float | None = None  # what the head was divided by, once calibrated
        self.calibration_report: dict[str, float] | None = None
        if self.args.calibrates:
            self._prepare_calibration_set()
        self._initialized = True
        if self.args.mmr_enabled and _overrides_compute_loss_before(type(self)):
            logger.warning(
                "%s overrides compute_loss before MMRTrainer in its bases, so the MMR penalty may never be added; "
                "list MMRTrainer first: class %s(MMRTrainer, YourTrainer)",
                type(self).__name__,
                type(self).__name__,
            )

    def _attach_head(self) -> None:
        """Find the model's classifier head and capture its input (again for each model that model_init makes)."""
        if self.feature_capture is not None:
            self.feature_capture.remove()
            self.feature_capture = None
        model = self.accelerator.unwrap_model(self.model)
        config = getattr(model, "config", None)
        if config is not None and getattr(config, "num_labels", None) is not None:
            self.args.check_model(config.num_labels, getattr(config, "problem_type", None), self.selection.uses_margins)
        try:
            path, head = find_classifier_head(model, self.args.mmr_head)
        except HeadNotFoundError as error:
            if self.needs_head:
                raise
            logger.warning("MMR diagnostics are off: %s", error)
            return
        # A model without config.num_labels: its head decides.
        self.args.check_model(head.out_features, None, self.selection.uses_margins)
        if head.out_features < 2:  # regression: margins and their diagnostics need classes
            logger.info("Margin diagnostics are off: the head %r has one output (regression)", path)
            return
        self.feature_capture = FeatureCapture(head, path)
        self._head_checked = False

    def call_model_init(self, trial: Any = None) -> nn.Module:
        """A fresh model from ``model_init`` (hyperparameter search), with its head captured."""
        model = super().call_model_init(trial)
        if self._initialized:  # a later model (a search trial): capture its head instead
            self.model = model
            self._attach_head()
        return model

    # ------------------------------------------------------------------ loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """Classification loss (weighted by the selection mode, if it weights) + ``lambda_t * MMR``, in named steps:
        the Trainer's forward (the head's input captured), then ``_margin_steps``, then ``_stop_if_not_finite``."""
        indices = inputs.pop(INDEX_KEY, None)  # never reaches the model's forward
        labels = inputs.get("labels")  # the parent may pop it from inputs
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.feature_capture is not None and model.training:  # evaluation features are prediction_step's
            logits = logits_of(outputs)
            call = self.feature_capture.pop(logits)
            if labels is not None:
                loss = self._margin_steps(loss, outputs, call, logits, labels, indices, num_items_in_batch)
        if model.training:
            self._stop_if_not_finite(loss)
        return (loss, outputs) if return_outputs else loss

    def _margin_steps(
        self,
        loss: torch.Tensor,
        outputs: Any,
        call: HeadCall,
        logits: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor | None,
        num_items_in_batch: torch.Tensor | int | None,
    ) -> torch.Tensor:
        """observe (MMS and its quantiles) -> record (``record_margins``) -> weight (the selection mode) -> penalty."""
        mms = self._observe(call, logits)
        self._record(call, logits, labels, indices)
        loss, factor = self.selection.weight_loss(loss, MicroBatch(logits, labels, indices, mms, num_items_in_batch))
        term = self._margin_term(call, logits, labels)
        if term is None:
            return loss
        if factor is None:
            factor = self.loss_scale.of_mean(loss, outputs, logits, labels, num_items_in_batch)
        return loss + term * factor

    def _stop_if_not_finite(self, loss: torch.Tensor) -> None:
        """Stop before backward: the weights and the checkpoints on disk stay those of the last good step."""
        if not torch.isfinite(loss).all():
            last = last_complete_checkpoint(self.args.output_dir) or "none saved yet"
            raise NonFiniteLossError(
                f"the training loss is {loss.detach().float().item()} at step {self.state.global_step}; the last "
                f"checkpoint is {last}. Lower --learning_rate or --mmr_lambda, or train in float32"
            )

    def _observe(self, call: HeadCall, logits: torch.Tensor) -> torch.Tensor:
        """The batch's MMS and its logged quantiles (the first batch checks that the head reproduces the logits)."""
        if not self._head_checked:
            autocast = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
            self.feature_capture.check_reproduces(call, logits, autocast)
            self._head_checked = True
        with torch.no_grad():
            mms = minimal_margin_scores(logits.detach(), call.weight.detach())
        self.add_diagnostic("mms/mean", mms.mean())
        for name, value in zip(("mms/p10", "mms/p50", "mms/p90"), torch.quantile(mms, MMS_QUANTILES)):
            self.add_diagnostic(name, value)
        return mms

    def _record(self, call: HeadCall, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None) -> None:
        """With ``record_margins``, add the batch's examples to the recorder (every process adds the global batch)."""
        if self._recorder is not None and indices is not None:
            values = self._recorder.values(logits, call.weight, labels)
            gathered = gather_examples(self.accelerator, indices.to(values.device), values)
            self._recorder.add(*gathered, epoch=self._epoch)

    def _margin_term(self, call: HeadCall, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """``lambda_t * MMR`` of this batch (None when MMR is off); records the diagnostics."""
        features = call.features
        enabled = self.args.mmr_enabled
        if enabled and not is_class_labels(labels):
            raise MMRConfigError("MMR needs one integer class label per example; set --mmr_lambda 0 for this task")
        with torch.set_grad_enabled(enabled and torch.is_grad_enabled()):
            r2 = global_max(self.accelerator, squared_radius(features), differentiable=enabled)
            # clamp: sqrt has an infinite gradient at 0 (all-zero features).
            radius = r2.clamp_min(1e-12).sqrt()
            if self.args.mmr_detach_radius:
                radius = radius.detach()
            penalty = mmr_penalty(
                features,
                call.weight,
                labels,
                logits,
                self.args.mmr_top_k,
                radius,
                form=self.args.mmr_form,
                sum_over_processes=partial(sum_over_processes, self.accelerator) if self.args.world_size > 1 else None,
            )
        lam = self.args.mmr_lambda_at(self.state.global_step, self.state.max_steps)
        self.add_diagnostic("mmr/penalty", penalty.detach())
        self.add_diagnostic("mmr/radius", radius.detach())
        self.add_diagnostic("mmr/lambda", lam)
        if not enabled:
            return None  # adding nothing keeps the loss bit-for-bit that of Trainer
        return lam * penalty

    # ------------------------------------------------------------------ calibration
    def _prepare_calibration_set(self) -> None:
        """Check the given ``calibration_dataset``, or hold out a stratified slice of the training set as one."""
        num_labels = self.feature_capture.head.out_features
        if self.calibration_dataset is not None:
            if self.calibration_dataset is self.eval_dataset:
                raise MMRConfigError(
                    "calibration_dataset is the eval_dataset: the reported metrics must come from data the "
                    "temperature was not fitted on; pass a held-out slice of the training data"
                )
            check_calibration_labels(_labels_of(self.calibration_dataset), num_labels, "calibration_dataset")
            return
        if self.train_dataset is None:
            return  # nothing to hold out from; calibrate(dataset) still works
        labels = _labels_of(self.train_dataset)
        kept, held = stratified_split(labels, self.args.calibration_split, self.args.seed)
        source = (
            f"the calibration slice (--calibration_split {self.args.calibration_split:g} of {len(labels)} examples)"
        )
        check_calibration_labels([labels[i] for i in held], num_labels, source)
        self.calibration_dataset = _subset(self.train_dataset, held)
        self.train_dataset = _subset(self.train_dataset, kept)
        self.train_rows = kept

    def calibrate(self, dataset: Any = None) -> dict[str, float]:
        """Fit a temperature T on ``dataset`` (default: ``calibration_dataset``) and divide the head by it.

        Returns (and logs) ``calibration_temperature`` (all that the head has been divided by),
        ``calibration_examples`` and the NLL and ECE of ``dataset`` before and after.
        """
        dataset = self.calibration_dataset if dataset is None else dataset
        if dataset is None:
            raise MMRConfigError("calibrate needs a dataset: pass one, or train with --calibration temperature")
        if self.feature_capture is None:
            raise HeadNotFoundError("calibration divides the final nn.Linear by T, which was not found; set mmr_head")
        kept_margins = self.eval_margins  # predicting below would replace the last evaluation's margins
        try:
            output = self.predict(dataset, metric_key_prefix="calibration")
        finally:
            self.eval_margins = kept_margins
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(output.label_ids)
        check_calibration_labels(labels, logits.shape[1], "the calibration set")
        temperature = fit_temperature(logits, labels)
        fold_temperature(self.feature_capture.head, temperature)
        self.temperature = (self.temperature or 1.0) * temperature
        report = {
            "calibration_temperature": self.temperature,
            "calibration_examples": len(labels),
            "calibration_nll_before": temperature_nll(logits, labels, 1.0),
            "calibration_nll_after": temperature_nll(logits, labels, temperature),
            "calibration_ece_before": expected_calibration_error(softmax(logits), labels),
            "calibration_ece_after": expected_calibration_error(softmax(logits / temperature), labels),
        }
        self.calibration_report = report
        self.log(dict(report))
        return report

    # ------------------------------------------------------------------ evaluation margins
    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The Trainer's step; the head's features of the same forward go to the evaluation's margins."""
        result = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if self.feature_capture is not None:
            call = self.feature_capture.discard()
            if self._eval_margins is not None and call is not None:
                self._eval_margins.add(call, inputs.get("labels"), self.accelerator.gather_for_metrics)
        return result

    def evaluation_loop(self, *args: Any, metric_key_prefix: str = "eval", **kwargs: Any) -> Any:
        """The Trainer's loop; its metrics gain ``<prefix>_mms_median``, ``<prefix>_relative_margin_median`` and,
        for single-label classification, ``<prefix>_ece`` and ``<prefix>_nll``."""
        self._eval_margins = EvalMargins(self.temperature) if self.feature_capture is not None else None
        try:
            output = super().evaluation_loop(*args, metric_key_prefix=metric_key_prefix, **kwargs)
        finally:
            collected, self._eval_margins = self._eval_margins, None
        summary = collected.summary() if collected is not None else None
        if summary is not None:
            metrics, self.eval_margins = summary
            output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in metrics.items()})
        return output

    # ------------------------------------------------------------------ data and the selection mode's hooks
    def extra_signature_columns(self) -> tuple[str, ...]:
        return (INDEX_KEY,) if self._needs_indices else ()  # so that unused-column removal keeps it

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """With MMS sampling or recording, batches also carry example indices; select mode loads pools of r x batch."""
        if not self._needs_indices:
            return super().get_train_dataloader()
        if self.train_dataset is None:
            raise MMRConfigError("training needs a train_dataset: pass train_dataset to MMRTrainer")
        dataset = self.model_columns(self.train_dataset)
        factor, world, batch = self.selection.pool_factor, self.args.world_size, self.train_batch_size
        if factor > 1 and len(dataset) < batch * factor * world:
            chosen = pool_size_to_select(len(dataset), factor, world)
            logger.warning(
                "select: a pool holds %d candidates but the training set has %d examples, so each step trains on "
                "%d of them instead of a batch of %d; lower --mms_pool_factor or the batch size to train full batches",
                batch * factor * world,
                len(dataset),
                chosen,
                batch * world,
            )
        return self.training_dataloader(IndexedDataset(dataset), batch * factor, IndexCollator(self.data_collator))

    @property
    def _needs_indices(self) -> bool:
        return self.selection.uses_margins or self.args.record_margins

    @property
    def needs_head(self) -> bool:
        """Whether the classifier head must be found: MMR, the selection mode or calibration uses it."""
        return self.args.mmr_enabled or self.selection.uses_margins or self.args.calibrates

    @property
    def checkpoint_files(self) -> tuple[str, ...]:
        """The files a checkpoint must hold to resume this run exactly, beyond the Trainer's own."""
        return self.selection.checkpoint_files

    def train_sampler(self) -> torch.utils.data.Sampler | None:
        return self.selection.sampler()

    def plan_training(self, plan: TrainingPlan, dataloader: Any) -> TrainingPlan:
        return self.selection.plan(plan, dataloader)

    def resume_position(self, epochs_trained: int, steps_to_skip: int) -> tuple[int, int]:
        return self.selection.resume_position(epochs_trained, steps_to_skip)

    def begin_epoch(self, epoch: int) -> dict[str, int]:
        self._epoch = epoch  # the recorder's per-epoch sums
        return self.selection.epoch_arguments(epoch)

    def training_step(
        self, model: nn.Module, inputs: dict[str, torch.Tensor | Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        return super().training_step(model, self.selection.select(model, inputs), num_items_in_batch)

    def count_items(self, num_items: torch.Tensor | int | None, batch_samples: list) -> torch.Tensor | int | None:
        return self.selection.items_in_batch(num_items, batch_samples)

    # ------------------------------------------------------------------ logs and checkpoints
    def add_diagnostic(self, name: str, value: torch.Tensor | float) -> None:
        """Add a value to the logging window's averages (``mmr/*``, ``mms/*``)."""
        self._window.add(name, value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the window averages of the MMR and MMS diagnostics, and the selection mode's entries, to the logs."""
        if "loss" in logs and self._window:
            logs.update(self._window.pop_means(self._mean_over_processes if self.args.world_size > 1 else None))
            self.selection.log(logs)
        super().log(logs, start_time)

    def _mean_over_processes(self, means: torch.Tensor) -> torch.Tensor:
        """The mean of ``means`` over the processes (the logging window's averages are per process)."""
        return self.accelerator.reduce(means.to(self.args.device), reduction="mean").cpu()

    def create_model_card(self, *args: Any, tags: str | list[str] | None = None, **kwargs: Any) -> None:
        """The Trainer's model card, tagged ``hf-mmr`` and ``text-classification``, with every MMR/MMS setting."""
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        tags += [tag for tag in ("hf-mmr", "text-classification") if tag not in tags]
        super().create_model_card(*args, tags=tags, **kwargs)
        if not self.is_world_process_zero():
            return
        from huggingface_hub import ModelCard

        from . import __version__

        path = os.path.join(self.args.output_dir, "README.md")
        card = ModelCard.load(path)
        head = self.feature_capture.head_path if self.feature_capture is not None else None
        card.text = mmr_card_text(card.text, self.args, head, self.search_report, __version__, self.calibration_report)
        card.save(path)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """As ``Trainer.train``; a checkpoint to resume from is checked first (``recovery.checkpoint_problem``), and
        ``resume_from_checkpoint=True`` takes the newest sound one, with a warning for each one passed over."""
        required = self.checkpoint_files
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir, required, warn=True)
            if resume_from_checkpoint is None:
                raise CheckpointError(f"no sound checkpoint to resume from in {self.args.output_dir}")
        elif resume_from_checkpoint:
            check_resumable(resume_from_checkpoint, required)
        if not resume_from_checkpoint:
            self.selection.reset()  # a fresh run starts from unscored examples
        self.temperature, self.calibration_report = None, None  # the head is trained further: a new T follows
        self._recorder = None
        if self.args.record_margins:
            if not hasattr(self.train_dataset, "__len__"):
                raise MMRConfigError("--record_margins needs a map-style train_dataset (one with a length)")
            self._recorder = MarginRecorder(len(self.train_dataset))
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        if self._recorder is not None:
            self.train_margins = self._recorder.table()
            self.train_probs = self._recorder.probabilities()
            self.save_train_margins()
        if self.args.calibrates:  # after load_best_model_at_end, before the caller saves, evaluates or pushes
            output.metrics.update(self.calibrate())
        return output

    def save_train_margins(self, extra_columns: Mapping[str, Any] | None = None, label_names: Any = None) -> str | None:
        """Write ``train_margins`` to ``output_dir/train_margins.csv`` and ``train_probs`` to
        ``output_dir/train_probs.npy`` (on the main process); returns the table's path.

        ``extra_columns`` (name -> one value per training example, such as the texts) are added after
        ``index``; with ``label_names`` the label and prediction columns gain their names.
        """
        if self.train_margins is None or not self.is_world_process_zero():
            return None
        return write_table(self.train_margins, self.args.output_dir, extra_columns, label_names, self.train_probs)

    def save_checkpoint_state(self, folder: str) -> None:
        """The selection mode's and the recorder's state, then a marker saying that saving finished."""
        self.selection.save(folder)
        if self._recorder is not None:
            save_state(self._recorder, folder)
        mark_complete(folder)

    def load_checkpoint_state(self, folder: str) -> None:
        if self._recorder is not None and not load_state(self._recorder, folder):
            logger.warning(
                "%s has no %s (it was saved without --record_margins): train_margins counts only the steps "
                "from here on",
                folder,
                MarginRecorder.FILE_NAME,
            )
        self.selection.load(folder)


def _overrides_compute_loss_before(cls: type) -> bool:
    """Whether a base that comes before ``MMRTrainer`` in the MRO of ``cls`` defines its own ``compute_loss``."""
    for base in cls.__mro__:
        if base is MMRTrainer:
            return False
        if base is not cls and "compute_loss" in vars(base):
            return True
    return False


def _labels_of(dataset: Any) -> list[int]:
    """The class label of every example of a dataset (its ``labels`` or ``label`` column)."""
    names = getattr(dataset, "column_names", None)
    if names is not None:
        column = "labels" if "labels" in names else "label"
        if column not in names:
            raise MMRConfigError("calibration needs a 'label' or 'labels' column in its dataset")
        return [int(value) for value in dataset[column]]
    return [int(example["labels"] if "labels" in example else example["label"]) for example in dataset]


def _subset(dataset: Any, positions: list[int]) -> Any:
    """The examples of ``dataset`` at ``positions``, as a dataset of the same kind where it can select."""
    if hasattr(dataset, "select"):
        return dataset.select(positions)
    return torch.utils.data.Subset(dataset, positions)
