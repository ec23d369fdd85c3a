"""``MMRTrainer``: the Hugging Face ``Trainer`` with a multi-margin regularization term in its loss."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from .arguments import MMRConfigError, MMRTrainingArguments
from .head import FeatureCapture, HeadNotFoundError, find_classifier_head
from .margins import minimal_margin_scores, mmr_penalty, squared_radius

logger = logging.getLogger(__name__)

# Running sums over a logging window, in this order.
_STATS = ("mmr/penalty", "mmr/radius", "mmr/lambda", "mms/mean")


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits of a model output: a ``ModelOutput``/dict, a ``(loss, logits, ...)`` tuple or a tensor."""
    if isinstance(outputs, Mapping):
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)):
        return outputs[1] if len(outputs) > 1 else outputs[0]
    return outputs


class MMRTrainer(Trainer):
    """``Trainer`` whose training loss is ``classification loss + lambda_t * MMR``.

    The input of the classifier's final ``nn.Linear`` is captured by a forward hook during the
    normal forward pass. ``mmr/penalty``, ``mmr/radius``, ``mmr/lambda`` and ``mms/mean``
    (averaged over each logging window) are added to the Trainer's own logs, so every
    ``report_to`` integration receives them. With ``mmr_lambda == 0`` the training is exactly
    that of ``Trainer``.
    """

    args: MMRTrainingArguments

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, MMRTrainingArguments):
            raise TypeError("MMRTrainer needs MMRTrainingArguments (a drop-in replacement for TrainingArguments)")
        model = self.accelerator.unwrap_model(self.model)
        if self.args.mmr_enabled:
            _check_single_label(model)
        self._capture: FeatureCapture | None = None
        try:
            path, head = find_classifier_head(model, self.args.mmr_head)
        except HeadNotFoundError as error:
            if self.args.mmr_enabled:
                raise
            logger.warning("MMR diagnostics are off: %s", error)
            return
        if self.args.mmr_enabled and self.args.mmr_top_k > head.out_features - 1:
            raise MMRConfigError(
                f"--mmr_top_k must be <= num_labels - 1 = {head.out_features - 1}, got {self.args.mmr_top_k}"
            )
        self._capture = FeatureCapture(head, path)
        self._head_checked = False
        self._stats: torch.Tensor | None = None
        self._stats_steps = 0

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        labels = inputs.get("labels")  # the parent may pop it from inputs
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self._capture is not None:
            logits = logits_of(outputs)
            features = self._capture.pop(logits)
            if model.training and labels is not None:
                term = self._margin_term(features, logits, labels, num_items_in_batch)
                if term is not None:
                    loss = loss + term
        return (loss, outputs) if return_outputs else loss

    def _margin_term(
        self,
        features: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        num_items_in_batch: torch.Tensor | int | None,
    ) -> torch.Tensor | None:
        """``lambda_t * MMR`` scaled like the classification loss (None when MMR is off); records the diagnostics."""
        if not self._head_checked:
            self._capture.check_reproduces(features, logits)
            self._head_checked = True
        enabled = self.args.mmr_enabled
        if enabled and (labels.dim() != 1 or labels.is_floating_point()):
            raise MMRConfigError("MMR needs one integer class label per example; set --mmr_lambda 0 for this task")
        weight = self._capture.head.weight
        with torch.set_grad_enabled(enabled and torch.is_grad_enabled()):
            r2 = self._global(squared_radius(features), differentiable=enabled)
            # clamp: sqrt has an infinite gradient at 0 (all-zero features).
            radius = r2.clamp_min(1e-12).sqrt()
            if self.args.mmr_detach_radius:
                radius = radius.detach()
            penalty = mmr_penalty(features, weight, labels, logits, self.args.mmr_top_k, radius)
        lam = self.args.mmr_lambda_at(self.state.global_step, self.state.max_steps)
        with torch.no_grad():
            mms = minimal_margin_scores(logits.detach(), weight.detach()).mean()
            step_stats = torch.stack([penalty.detach(), radius.detach(), penalty.new_tensor(lam), mms])
            # Kept on the device: no host sync per step.
            self._stats = step_stats.double() if self._stats is None else self._stats + step_stats.double()
            self._stats_steps += 1
        if not enabled:
            return None  # adding nothing keeps the loss bit-for-bit that of Trainer
        return lam * penalty * self._penalty_scale(labels.shape[0], num_items_in_batch)

    def _global(self, local_max: torch.Tensor, differentiable: bool) -> torch.Tensor:
        """Max of a scalar over all processes; the gradient reaches the process that holds it."""
        if self.args.world_size <= 1:
            return local_max
        if differentiable:
            import torch.distributed.nn.functional as dist_fn

            return torch.stack(dist_fn.all_gather(local_max)).max()
        return self.accelerator.gather(local_max.detach()[None]).max()

    def _penalty_scale(self, batch_size: int, num_items_in_batch: torch.Tensor | int | None) -> Any:
        """Factor that puts the per-batch mean penalty on the same footing as the classification loss.

        The Trainer divides the loss by the accumulation steps unless it counts it as already
        normalized over the whole accumulated batch by ``num_items_in_batch``; then the penalty
        is normalized the same way, so that it is a mean over the accumulated (global) batch.
        """
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
                self.compute_loss_func is not None
            )
        if not scaled:
            return 1.0
        if num_items_in_batch is None:
            return 1.0 / self.current_gradient_accumulation_steps
        scale = batch_size / num_items_in_batch
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            scale = scale * self.accelerator.num_processes  # the Trainer scales its loss the same way
        return scale

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the window averages of the MMR diagnostics to the training logs."""
        if "loss" in logs and self._capture is not None and self._stats_steps > 0:
            means = self._stats / self._stats_steps
            if self.args.world_size > 1:
                means = self.accelerator.reduce(means, reduction="mean")
            logs.update({name: round(float(value), 6) for name, value in zip(_STATS, means.tolist())})
            self._stats = None
            self._stats_steps = 0
        super().log(logs, start_time)


def _check_single_label(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    problem_type = getattr(config, "problem_type", None)
    if getattr(config, "num_labels", 2) == 1 or problem_type in ("regression", "multi_label_classification"):
        kind = problem_type or "regression"
        raise MMRConfigError(f"MMR needs single-label classification, but this model is set up for {kind}; "
                         "use --mmr_lambda 0")
