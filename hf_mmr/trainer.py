"""``MMRTrainer``: the Hugging Face ``Trainer`` with a multi-margin regularization term and MMS sampling."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import is_datasets_available

from .arguments import MMRTrainingArguments
from .errors import CheckpointError, HeadNotFoundError, MMRConfigError, NonFiniteLossError
from .head import FeatureCapture, HeadCall, find_classifier_head
from .margins import margin_summary, minimal_margin_scores, mmr_penalty, squared_radius
from .metrics import expected_calibration_error, negative_log_likelihood
from .recording import MarginRecorder
from .recovery import check_resumable, last_complete_checkpoint, mark_complete
from .sampling import (
    INDEX_KEY,
    CachedMarginSampler,
    EpochPlan,
    IndexCollator,
    IndexedDataset,
    MarginCache,
    lowest,
    plan_epochs,
    pool_size_to_select,
    take_rows,
)

logger = logging.getLogger(__name__)

# Quantiles of each training batch's MMS that are logged (as mms/p10, mms/p50, mms/p90).
MMS_QUANTILES = torch.tensor([0.1, 0.5, 0.9])

# Written into output_dir by record_margins: one row per training example.
MARGINS_FILE = "train_margins.csv"

# Every MMR and MMS setting, as recorded in the model card.
MMR_SETTINGS = (
    "mmr_lambda",
    "mmr_lambda_start",
    "mmr_lambda_warmup_ratio",
    "mmr_form",
    "mmr_top_k",
    "mmr_detach_radius",
    "mmr_head",
    "mms_selection",
    "mms_pool_factor",
    "mms_scoring_batch_size",
    "mms_warmup_steps",
    "mms_keep_quantile",
    "mms_keep_fraction",
    "mms_anneal_epochs",
    "record_margins",
)

# How the model card states each form of the penalty.
CARD_FORMULAS = {
    "weights": "= mean_i mean_{j in J_i} R² · ||w_{y_i} − w_j||² (J_i: the strongest wrong classes)",
    "margin": "= R / mean_i m_i (m_i: distance of h_i to the nearest decision boundaries of its predicted class)",
}


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits of a model output: a ``ModelOutput``/dict, a ``(loss, logits, ...)`` tuple or a tensor."""
    if isinstance(outputs, Mapping):
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)):
        return outputs[1] if len(outputs) > 1 else outputs[0]
    return outputs


class MMRTrainer(Trainer):
    """``Trainer`` whose training loss is ``classification loss + lambda_t * MMR``, with optional MMS sampling.

    The input of the classifier's final ``nn.Linear`` is captured by a forward hook during the
    normal forward pass. Diagnostics, averaged over each logging window, are added to the
    Trainer's own logs, so every ``report_to`` integration receives them: ``mmr/penalty``,
    ``mmr/radius``, ``mmr/lambda``, ``mms/mean`` and its quantiles ``mms/p10``, ``mms/p50``,
    ``mms/p90``; with MMS sampling also ``mms/selected_mean``, ``mms/pool_mean``,
    ``mms/misclassified_selected``, ``mms/scoring_time_share`` (select) or ``mms/kept_fraction``
    and ``mms/steps_saved`` (cached). With ``mmr_lambda == 0`` and ``mms_selection == "none"``
    the training is exactly that of ``Trainer``.

    Every evaluation also reports the margins of the evaluation set, from the features of its
    normal forward pass: ``eval_mms_median`` and ``eval_relative_margin_median`` (median MMS / R,
    R the largest feature norm of the set). ``eval_margins`` keeps the last evaluation's
    per-example MMS and its R.
    """

    args: MMRTrainingArguments
    _initialized = False  # Trainer.__init__ calls model_init before MMRTrainer.__init__ has attached the head

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, MMRTrainingArguments):
            raise TypeError("MMRTrainer needs MMRTrainingArguments (a drop-in replacement for TrainingArguments)")
        self._capture: FeatureCapture | None = None
        self._head_checked = False
        self._window: dict[str, list] = {}  # name -> [sum, count] over the current logging window
        self._cache: MarginCache | None = None
        self._sampler: CachedMarginSampler | None = None
        self._plan: EpochPlan | None = None  # cached mode: the epochs of the current run
        self._last_step_start: float | None = None
        self._loss_is_batch_mean: bool | None = None  # see _mean_factor
        self._eval_parts: list[dict[str, torch.Tensor]] | None = None  # MMS, ||h||, probabilities per eval batch
        self._recorder: MarginRecorder | None = None
        self.train_margins = None  # record_margins: the per-example table of the last training run
        self.eval_margins: dict[str, Any] | None = None
        self.search_report: dict | None = None  # a search's trials and choice, shown in the model card
        self._attach_head()
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
        if self._capture is not None:
            self._capture.remove()
            self._capture = None
        selection = self.args.mms_selection
        needs_head = self.args.mmr_enabled or selection != "none"
        model = self.accelerator.unwrap_model(self.model)
        config = getattr(model, "config", None)
        if config is not None and getattr(config, "num_labels", None) is not None:
            self.args.check_model(config.num_labels, getattr(config, "problem_type", None))
        try:
            path, head = find_classifier_head(model, self.args.mmr_head)
        except HeadNotFoundError as error:
            if needs_head:
                raise
            logger.warning("MMR diagnostics are off: %s", error)
            return
        self.args.check_model(head.out_features)  # a model without config.num_labels: its head decides
        self._capture = FeatureCapture(head, path)
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
        indices = inputs.pop(INDEX_KEY, None)  # never reaches the model's forward
        labels = inputs.get("labels")  # the parent may pop it from inputs
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self._capture is not None and model.training:  # evaluation features are prediction_step's
            logits = logits_of(outputs)
            call = self._capture.pop(logits)
            if labels is not None:
                if not self._head_checked:
                    autocast = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
                    self._capture.check_reproduces(call, logits, autocast)
                    self._head_checked = True
                with torch.no_grad():
                    mms = minimal_margin_scores(logits.detach(), call.weight.detach())
                if self._recorder is not None and indices is not None:
                    self._record_examples(indices, logits, call.weight, labels)
                self._record("mms/mean", mms.mean())
                for name, value in zip(("mms/p10", "mms/p50", "mms/p90"), torch.quantile(mms, MMS_QUANTILES)):
                    self._record(name, value)
                weighted = self._cache is not None and indices is not None
                if weighted:
                    self._remember_scores(indices, mms)
                    loss = self._cache.weighted_loss(logits, labels, indices, self.args.label_smoothing_factor)
                    loss = loss * self._sum_scale(labels.shape[0], num_items_in_batch)
                term = self._margin_term(call, logits, labels)
                if term is not None:
                    if weighted:
                        factor = labels.shape[0] * self._sum_scale(labels.shape[0], num_items_in_batch)
                    else:
                        factor = self._mean_factor(loss, outputs, logits, labels, num_items_in_batch)
                    loss = loss + term * factor
        if model.training and not torch.isfinite(loss).all():
            # Stop before backward: the weights and the checkpoints on disk stay those of the last good step.
            last = last_complete_checkpoint(self.args.output_dir) or "none saved yet"
            raise NonFiniteLossError(
                f"the training loss is {loss.detach().float().item()} at step {self.state.global_step}; the last "
                f"checkpoint is {last}. Lower --learning_rate or --mmr_lambda, or train in float32"
            )
        return (loss, outputs) if return_outputs else loss

    def _margin_term(self, call: HeadCall, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """``lambda_t * MMR`` of this batch (None when MMR is off); records the diagnostics."""
        features = call.features
        enabled = self.args.mmr_enabled
        if enabled and (labels.dim() != 1 or labels.is_floating_point()):
            raise MMRConfigError("MMR needs one integer class label per example; set --mmr_lambda 0 for this task")
        with torch.set_grad_enabled(enabled and torch.is_grad_enabled()):
            r2 = self._global_max(squared_radius(features), differentiable=enabled)
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
                sum_over_processes=self._sum_over_processes if self.args.world_size > 1 else None,
            )
        lam = self.args.mmr_lambda_at(self.state.global_step, self.state.max_steps)
        self._record("mmr/penalty", penalty.detach())
        self._record("mmr/radius", radius.detach())
        self._record("mmr/lambda", lam)
        if not enabled:
            return None  # adding nothing keeps the loss bit-for-bit that of Trainer
        return lam * penalty

    def _mean_factor(
        self, loss: torch.Tensor, outputs: Any, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: Any
    ) -> Any:
        """Factor that puts a per-batch mean on the footing of this step's classification loss.

        Most classification heads return the batch-mean cross-entropy and ignore
        ``num_items_in_batch``, while the Trainer may still scale their loss (by the number of
        processes when averaging tokens across devices). Then the mean is scaled by the same
        factor, so ``mmr_lambda`` weighs the penalty against the cross-entropy the same way in
        every setup. Otherwise (the loss is normalized by ``num_items_in_batch``, or comes from
        a label smoother or ``compute_loss_func``) the mean is normalized the same way.
        """
        raw = outputs.get("loss") if isinstance(outputs, Mapping) else None
        if raw is None or labels.dim() != 1 or labels.is_floating_point():
            return labels.shape[0] * self._sum_scale(labels.shape[0], num_items_in_batch)
        if self._loss_is_batch_mean is None:  # the model's loss convention does not change: check it once
            with torch.no_grad():
                batch_mean = F.cross_entropy(logits.detach().float(), labels)
                self._loss_is_batch_mean = bool(torch.isclose(raw.detach().float(), batch_mean, rtol=1e-3))
        if self._loss_is_batch_mean:  # the Trainer's own factor, without a host sync
            raw, loss = raw.detach(), loss.detach()
            return torch.where(raw != 0, loss / raw, torch.ones_like(loss))
        return labels.shape[0] * self._sum_scale(labels.shape[0], num_items_in_batch)

    def _sum_scale(self, batch_size: int, num_items_in_batch: torch.Tensor | int | None) -> Any:
        """Factor that turns a sum over this micro-batch into a mean over the accumulated (global) batch.

        The Trainer divides the loss by the accumulation steps unless it counts it as already
        normalized over the whole accumulated batch by ``num_items_in_batch``; in that case the
        sum is normalized by ``num_items_in_batch`` too.
        """
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
                self.compute_loss_func is not None
            )
        if not scaled:
            return 1.0 / batch_size
        if num_items_in_batch is None:
            return 1.0 / (batch_size * self.current_gradient_accumulation_steps)
        scale = 1.0 / num_items_in_batch
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            scale = scale * self.accelerator.num_processes  # the Trainer scales its loss the same way
        return scale

    def _global_max(self, local_max: torch.Tensor, differentiable: bool) -> torch.Tensor:
        """Max of a scalar over all processes; the gradient reaches the process that holds it."""
        if self.args.world_size <= 1:
            return local_max
        if differentiable:
            import torch.distributed.nn.functional as dist_fn

            return torch.stack(dist_fn.all_gather(local_max)).max()
        return self.accelerator.gather(local_max.detach()[None]).max()

    def _sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over all processes; differentiable when the tensor needs a gradient."""
        if tensor.requires_grad:
            import torch.distributed.nn.functional as dist_fn

            return dist_fn.all_reduce(tensor)
        return self.accelerator.reduce(tensor, reduction="sum")

    # ------------------------------------------------------------------ evaluation margins
    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The Trainer's step, plus each example's MMS, feature norm and class probabilities from the same forward."""
        result = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if self._capture is not None:
            call = self._capture.discard()
            if self._eval_parts is not None and call is not None and call.features.dim() == 2:
                with torch.no_grad():
                    h, weight = call.features.detach().float(), call.weight.detach().float()
                    logits = F.linear(h, weight, None if call.bias is None else call.bias.float())
                    parts = {"mms": minimal_margin_scores(logits, weight), "norm": h.norm(dim=1)}
                    labels = inputs.get("labels")
                    if _single_label(labels) and logits.shape[1] > 1:
                        parts.update(probs=logits.softmax(dim=1), labels=labels.to(logits.device))
                    gathered = self.accelerator.gather_for_metrics(parts)
                    self._eval_parts.append({name: value.cpu() for name, value in gathered.items()})
        return result

    def evaluation_loop(self, *args: Any, metric_key_prefix: str = "eval", **kwargs: Any) -> Any:
        """The Trainer's loop; its metrics gain ``<prefix>_mms_median``, ``<prefix>_relative_margin_median`` and,
        for single-label classification, ``<prefix>_ece`` and ``<prefix>_nll``."""
        self._eval_parts = [] if self._capture is not None else None
        try:
            output = super().evaluation_loop(*args, metric_key_prefix=metric_key_prefix, **kwargs)
        finally:
            parts, self._eval_parts = self._eval_parts, None
        if parts:
            columns = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
            scores, norms = columns["mms"], columns["norm"]
            self.eval_margins = {"mms": scores.numpy(), "radius": float(norms.max())}
            summary = margin_summary(scores, norms)
            if "probs" in columns:
                probs, labels = columns["probs"].double().numpy(), columns["labels"].numpy()
                summary.update(
                    ece=expected_calibration_error(probs, labels), nll=negative_log_likelihood(probs, labels)
                )
            output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in summary.items()})
        return output

    # ------------------------------------------------------------------ data
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._needs_indices and INDEX_KEY not in self._signature_columns:
            self._signature_columns.append(INDEX_KEY)  # so that unused-column removal keeps it

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """With MMS sampling or recording, batches also carry example indices; select mode loads pools of r x batch."""
        if not self._needs_indices:
            return super().get_train_dataloader()
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        dataset = self.train_dataset
        if is_datasets_available() and isinstance(dataset, _datasets().Dataset):  # datasets is optional here
            dataset = self._remove_unused_columns(dataset, description="training")
        factor = self.args.mms_pool_factor if self.args.mms_selection == "select" else 1
        pool, world = self._train_batch_size * factor * self.args.world_size, self.args.world_size
        if factor > 1 and len(dataset) < pool:
            chosen = pool_size_to_select(len(dataset), factor, world)
            logger.warning(
                "select: a pool holds %d candidates but the training set has %d examples, so each step trains on "
                "%d of them instead of a batch of %d; lower --mms_pool_factor or the batch size to train full batches",
                pool,
                len(dataset),
                chosen,
                self._train_batch_size * world,
            )
        collator = self.data_collator
        self.data_collator = IndexCollator(collator)
        try:
            return self._get_dataloader(
                dataset=IndexedDataset(dataset),
                description="Training",
                batch_size=self._train_batch_size * factor,
                sampler_fn=self._get_train_sampler,
                is_training=True,
            )
        finally:
            self.data_collator = collator

    @property
    def _needs_indices(self) -> bool:
        return self.args.mms_selection != "none" or self.args.record_margins

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        if self.args.mms_selection != "cached":
            return super()._get_train_sampler(train_dataset)
        if self._cache is None or self._cache.scores.numel() != len(self.train_dataset):
            self._cache = MarginCache(len(self.train_dataset))
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        self._sampler = CachedMarginSampler(self._cache, self.args.mms_keep_quantile, self.args.mms_keep_fraction, seed)
        return self._sampler

    # ------------------------------------------------------------------ cached mode: epochs of known length
    def set_initial_training_values(self, args: MMRTrainingArguments, dataloader: Any) -> tuple:
        """Cached mode: plan every epoch's length first, so that ``max_steps`` and the schedule count them."""
        values = super().set_initial_training_values(args, dataloader)
        if self._sampler is None or args.mms_selection != "cached":
            self._plan = None
            return values
        _, _, num_examples, _, total_batch_size, _, _ = values

        def batches_of(epoch: int, prunable: float) -> int:
            self._sampler.prunable = [0.0] * epoch + [prunable]
            self._sampler.set_epoch(epoch)
            return len(dataloader)  # the DataLoader's own count, sharding and drop_last included

        plan = plan_epochs(
            args.num_train_epochs,
            args.max_steps,
            args.mms_warmup_steps,
            args.mms_anneal_epochs,
            args.gradient_accumulation_steps,
            batches_of,
        )
        self._sampler.prunable = plan.prunable
        self._sampler.set_epoch(0)
        self._plan = plan
        num_train_samples = sum(plan.batches) * total_batch_size // args.gradient_accumulation_steps
        return (
            len(plan.steps),
            plan.steps[0],
            num_examples,
            num_train_samples,
            total_batch_size,
            plan.batches[0],
            plan.max_steps,
        )

    def _init_training_state(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        """Where a resumed cached-mode run stands, counted in its own epochs (they differ in length)."""
        epochs_trained, steps_trained = super()._init_training_state(*args, **kwargs)
        if self._plan is not None and self.state.global_step > 0:
            epochs_trained, steps_done = self._plan.epoch_at(self.state.global_step)
            steps_trained = 0 if self.args.ignore_data_skip else steps_done * self.args.gradient_accumulation_steps
            saved, planned = self._cache.plan_batches, self._plan.batches[: epochs_trained + 1]
            if saved is not None and saved[: epochs_trained + 1] != planned:
                raise MMRConfigError(
                    f"the checkpoint's cached-mode epochs had {saved[: epochs_trained + 1]} batches per process, this "
                    f"run plans {planned}: resume with the same data, batch size, number of processes and mms_* "
                    "settings"
                )
        return epochs_trained, steps_trained

    def _run_epoch(self, *args: Any, epoch: int, **kwargs: Any) -> Any:
        """One epoch; in cached mode with its own number of batches and optimizer steps."""
        if self._plan is not None:
            kwargs.update(steps_in_epoch=self._plan.batches[epoch], num_update_steps_per_epoch=self._plan.steps[epoch])
        return super()._run_epoch(*args, epoch=epoch, **kwargs)

    def _remember_scores(self, indices: torch.Tensor, mms: torch.Tensor) -> None:
        if self.args.world_size > 1:
            indices = self.accelerator.gather(self.accelerator.pad_across_processes(indices, pad_index=-1))
            mms = self.accelerator.gather(self.accelerator.pad_across_processes(mms, pad_index=0))
            mms, indices = mms[indices >= 0], indices[indices >= 0]
        self._cache.update(indices, mms)

    def _record_examples(
        self, indices: torch.Tensor, logits: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor
    ) -> None:
        """Add a trained micro-batch to the per-example table (every process adds the global batch)."""
        values = self._recorder.values(logits, weight, labels)
        indices = indices.to(values.device)
        if self.args.world_size > 1:
            indices = self.accelerator.gather(self.accelerator.pad_across_processes(indices, pad_index=-1))
            values = self.accelerator.gather(self.accelerator.pad_across_processes(values, dim=1).T).T
            values, indices = values[:, indices >= 0], indices[indices >= 0]
        self._recorder.add(indices, values)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        """Select mode: count the labels of the examples that will be trained on, not of the whole pools."""
        num_items = super()._get_num_items_in_batch(batch_samples, device)
        is_pool = self.args.mms_selection == "select" and all(INDEX_KEY in batch for batch in batch_samples)
        if num_items is None or not batch_samples or not is_pool:  # evaluation batches are no pools
            return num_items
        world = self.args.world_size
        pool = sum(len(batch[INDEX_KEY]) for batch in batch_samples)
        chosen = sum(
            pool_size_to_select(len(batch[INDEX_KEY]) * world, self.args.mms_pool_factor, world) // world
            for batch in batch_samples
        )
        return num_items * chosen / pool

    # ------------------------------------------------------------------ select mode
    def training_step(
        self, model: nn.Module, inputs: dict[str, torch.Tensor | Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        if self.args.mms_selection == "select":
            now = time.perf_counter()
            if self._last_step_start is not None:
                self._record("time/step", now - self._last_step_start)
            self._last_step_start = now
            inputs = self._select_from_pool(model, self._prepare_inputs(inputs))
        return super().training_step(model, inputs, num_items_in_batch)

    def _select_from_pool(self, model: nn.Module, pool: dict[str, Any]) -> dict[str, Any]:
        """The candidates of the pool with the smallest MMS (across all processes), this process's share."""
        world, factor = self.args.world_size, self.args.mms_pool_factor
        local_size = len(pool[INDEX_KEY])
        per_process = pool_size_to_select(local_size * world, factor, world) // world
        if self.state.global_step < self.args.mms_warmup_steps:
            return take_rows(pool, torch.arange(min(per_process, local_size), device=pool[INDEX_KEY].device))
        start = time.perf_counter()
        scores, predicted = self._score_pool(model, pool)
        if world > 1:
            pool, scores, predicted = self._gather_pool(pool, scores, predicted)
        chosen = lowest(scores, per_process * world)
        mine = chosen[self.args.process_index :: world]
        self._record("mms/pool_mean", scores.mean())
        self._record("mms/selected_mean", scores[chosen].mean())
        if "labels" in pool:
            wrong = predicted[chosen] != pool["labels"][chosen].to(predicted.device)
            self._record("mms/misclassified_selected", wrong.float().mean())
        self._record("time/scoring", time.perf_counter() - start)
        return take_rows(pool, mine)

    def _score_pool(self, model: nn.Module, pool: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """MMS and predicted class of every candidate: eval mode, no gradient, length-sorted chunks."""
        net = self.accelerator.unwrap_model(model)
        was_training = net.training
        net.eval()
        size = len(pool[INDEX_KEY])
        mask = pool.get("attention_mask")
        order = torch.argsort(mask.sum(dim=1)) if isinstance(mask, torch.Tensor) else torch.arange(size)
        scores = torch.empty(size, device=pool[INDEX_KEY].device)
        predicted = torch.empty(size, dtype=torch.long, device=pool[INDEX_KEY].device)
        # Length-sorted chunks of one training batch: a chunk is padded to its longest candidate, and on MRPC
        # at batch 32 they gave select 1.06-1.24x the throughput of chunks of 4 batches, whose padding outweighs
        # the fewer forward passes (docs/RESULTS.md, "Select's scoring chunks").
        chunk = self.args.mms_scoring_batch_size or self.args.per_device_train_batch_size
        drop = {INDEX_KEY, "labels", *self.label_names}
        try:
            # no_grad, not inference_mode: FSDP2 would keep the weights it gathers here as inference tensors,
            # which the next training forward cannot use.
            with torch.no_grad(), self.compute_loss_context_manager():
                for first in range(0, size, chunk):
                    rows = order[first : first + chunk].to(scores.device)
                    batch = take_rows(pool, rows)
                    logits = logits_of(net(**{k: v for k, v in batch.items() if k not in drop}))
                    scores[rows] = minimal_margin_scores(logits, self._capture.pop(logits).weight)
                    predicted[rows] = logits.argmax(dim=1)
        finally:
            self._capture.discard()
            net.train(was_training)
        return scores, predicted

    def _gather_pool(
        self, pool: dict[str, Any], scores: torch.Tensor, predicted: torch.Tensor
    ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        """Every process's pool and scores, in process order (each candidate was scored by its own process)."""
        gathered = {}
        for key, value in pool.items():
            if isinstance(value, torch.Tensor) and value.dim() >= 1:
                padded = (
                    self.accelerator.pad_across_processes(value, dim=value.dim() - 1) if value.dim() == 2 else value
                )
                gathered[key] = self.accelerator.gather(padded)
            else:
                gathered[key] = value
        return gathered, self.accelerator.gather(scores), self.accelerator.gather(predicted)

    # ------------------------------------------------------------------ logs and checkpoints
    def _record(self, name: str, value: torch.Tensor | float) -> None:
        """Add a value to the logging window; tensors stay on their device (no host sync per step)."""
        value = value.double() if isinstance(value, torch.Tensor) else float(value)
        entry = self._window.get(name)
        if entry is None:
            self._window[name] = [value, 1]
        else:
            entry[0] = entry[0] + value
            entry[1] += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the window averages of the MMR and MMS diagnostics to the training logs."""
        if "loss" in logs and self._window:
            timing = {name: self._window.pop(name) for name in ("time/scoring", "time/step") if name in self._window}
            names = sorted(self._window)
            means = torch.stack(
                [torch.as_tensor(self._window[n][0], dtype=torch.float64).cpu() / self._window[n][1] for n in names]
            )
            if self.args.world_size > 1:
                means = self.accelerator.reduce(means.to(self.args.device), reduction="mean").cpu()
            logs.update({name: round(float(value), 6) for name, value in zip(names, means.tolist())})
            if self._plan is not None:  # fixed for the whole epoch: read, not averaged
                logs["mms/kept_fraction"] = round(self._sampler.kept_fraction, 6)
                logs["mms/steps_saved"] = self._plan.steps_saved(self.state.global_step - 1)
            if "time/scoring" in timing and "time/step" in timing:
                logs["mms/scoring_time_share"] = round(timing["time/scoring"][0] / timing["time/step"][0], 4)
            self._window = {}
        super().log(logs, start_time)

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
        found = {"mmr_head": self._capture.head_path} if self._capture is not None else {}
        rows = "\n".join(f"| `{name}` | {found.get(name, getattr(self.args, name))} |" for name in MMR_SETTINGS)
        formula = CARD_FORMULAS[self.args.mmr_form] if self.args.mmr_enabled else "off (λ = 0)"
        card.text += (
            f"\n## Multi-margin regularization\n\nTrained with hf-mmr {__version__} (`MMRTrainer`): loss = "
            f"classification loss + λ_t · MMR, MMR {formula}.\n\n"
            f"| setting | value |\n|---|---|\n{rows}\n"
        )
        if self.search_report is not None:
            card.text += _search_section(self.search_report)
        card.save(path)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """As ``Trainer.train``; a checkpoint to resume from is checked first (``recovery.checkpoint_problem``), and
        ``resume_from_checkpoint=True`` takes the newest sound one, with a warning for each one passed over."""
        required = self.args.checkpoint_files
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir, required, warn=True)
            if resume_from_checkpoint is None:
                raise CheckpointError(f"no sound checkpoint to resume from in {self.args.output_dir}")
        elif resume_from_checkpoint:
            check_resumable(resume_from_checkpoint, required)
        if not resume_from_checkpoint:
            self._cache = None  # a fresh run starts from unscored examples
        self._recorder = None
        if self.args.record_margins:
            if not hasattr(self.train_dataset, "__len__"):
                raise MMRConfigError("--record_margins needs a map-style train_dataset (one with a length)")
            self._recorder = MarginRecorder(len(self.train_dataset))
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        if self._recorder is not None:
            self.train_margins = self._recorder.table()
            self.save_train_margins()
        return output

    def save_train_margins(self, extra_columns: Mapping[str, Any] | None = None, label_names: Any = None) -> str | None:
        """Write ``train_margins`` to ``output_dir/train_margins.csv`` (on the main process); returns the path.

        ``extra_columns`` (name -> one value per training example, such as the texts) are added after
        ``index``; with ``label_names`` the label and prediction columns gain their names.
        """
        if self.train_margins is None or not self.is_world_process_zero():
            return None
        table = self.train_margins.copy()
        for position, (name, values) in enumerate((extra_columns or {}).items(), start=1):
            table.insert(position, name, list(values))
        if label_names is not None:
            names = dict(enumerate(label_names))
            for column in ("label", "last_prediction"):
                table.insert(table.columns.get_loc(column) + 1, f"{column}_name", table[column].map(names))
        os.makedirs(self.args.output_dir, exist_ok=True)
        path = os.path.join(self.args.output_dir, MARGINS_FILE)
        table.to_csv(path, index=False)
        return path

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, plus the MMS cache, then a marker saying that saving finished."""
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            if self._cache is not None:
                self._cache.save(folder, self._plan.batches if self._plan is not None else [])
            if self._recorder is not None:
                self._recorder.save(folder)
            mark_complete(folder)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if model is None and self._recorder is not None and not self._recorder.load(resume_from_checkpoint):
            logger.warning(
                "%s has no %s (it was saved without --record_margins): train_margins counts only the steps "
                "from here on",
                resume_from_checkpoint,
                MarginRecorder.FILE_NAME,
            )
        if model is None and self.args.mms_selection == "cached":
            if self._cache is None or self._cache.scores.numel() != len(self.train_dataset):
                self._cache = MarginCache(len(self.train_dataset))
            self._cache.load(resume_from_checkpoint)


def _search_section(report: dict) -> str:
    """The model card's account of the MMR search: the chosen setting and every trial."""
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


def _overrides_compute_loss_before(cls: type) -> bool:
    """Whether a base that comes before ``MMRTrainer`` in the MRO of ``cls`` defines its own ``compute_loss``."""
    for base in cls.__mro__:
        if base is MMRTrainer:
            return False
        if base is not cls and "compute_loss" in vars(base):
            return True
    return False


def _datasets() -> Any:
    import datasets

    return datasets


def _single_label(labels: Any) -> bool:
    """Whether ``labels`` are one integer class id per example."""
    return isinstance(labels, torch.Tensor) and labels.dim() == 1 and not labels.is_floating_point()
