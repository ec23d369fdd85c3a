"""How the Trainer normalizes a step's classification loss, so that the MMR term and a weighted loss follow it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .margins import is_class_labels

if TYPE_CHECKING:
    from .context import TrainingContext


def sum_scale(context: TrainingContext, batch_size: int, num_items_in_batch: torch.Tensor | int | None) -> Any:
    """Factor that turns a sum over this micro-batch into a mean over the accumulated (global) batch.

    The Trainer divides the loss by the accumulation steps unless it counts it as already
    normalized over the whole accumulated batch by ``num_items_in_batch``; in that case the
    sum is normalized by ``num_items_in_batch`` too.
    """
    if not context.loss_is_scaled_for_accumulation(num_items_in_batch):
        return 1.0 / batch_size
    if num_items_in_batch is None:
        return 1.0 / (batch_size * context.accumulation_steps)
    scale = 1.0 / num_items_in_batch
    if context.args.average_tokens_across_devices and context.args.world_size > 1:
        scale = scale * context.accelerator.num_processes  # the Trainer scales its loss the same way
    return scale


class LossScale:
    """The factor that puts a micro-batch's mean on the footing of the Trainer's loss (``of_mean``)."""

    def __init__(self, context: TrainingContext):
        self.context = context
        self._loss_is_batch_mean: bool | None = None  # the model's loss convention does not change: checked once

    def of_mean(
        self, loss: torch.Tensor, outputs: Any, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: Any
    ) -> Any:
        """Factor that puts a per-batch mean on the footing of this step's classification loss ``loss``.

        Most classification heads return the batch-mean cross-entropy and ignore
        ``num_items_in_batch``, while the Trainer may still scale their loss (by the number of
        processes when averaging tokens across devices). Then the mean is scaled by the same
        factor, so ``mmr_lambda`` weighs the penalty against the cross-entropy the same way in
        every setup. Otherwise (the loss is normalized by ``num_items_in_batch``, or comes from
        a label smoother or ``compute_loss_func``) the mean is normalized the same way.
        """
        raw = outputs.get("loss") if isinstance(outputs, Mapping) else None
        if raw is None or not is_class_labels(labels):
            return labels.shape[0] * sum_scale(self.context, labels.shape[0], num_items_in_batch)
        if self._loss_is_batch_mean is None:
            with torch.no_grad():
                batch_mean = F.cross_entropy(logits.detach().float(), labels)
                self._loss_is_batch_mean = bool(torch.isclose(raw.detach().float(), batch_mean, rtol=1e-3))
        if self._loss_is_batch_mean:  # the Trainer's own factor, without a host sync
            raw, loss = raw.detach(), loss.detach()
            return torch.where(raw != 0, loss / raw, torch.ones_like(loss))
        return labels.shape[0] * sum_scale(self.context, labels.shape[0], num_items_in_batch)
