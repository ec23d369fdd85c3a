"""``mms_selection="cached"``: MMS remembered from the training forward pass, selective epochs of known length."""

from __future__ import annotations

from typing import Any

import torch

from ..collectives import gather_examples
from ..errors import MMRConfigError
from ..sampling import CachedMarginSampler, EpochPlan, MarginCache, plan_epochs
from .base import MicroBatch, SelectionMode


class CachedSelection(SelectionMode):
    """No extra forward pass, fewer steps: every example's latest MMS is kept (``MarginCache``), and each
    selective epoch trains on a pruned, up-weighted set (``sampling.prune_epoch``). Every epoch's length is
    planned before training (``sampling.plan_epochs``), so ``max_steps`` and the schedule count them, and a
    resumed run plans exactly as the uninterrupted one. Logs ``mms/kept_fraction`` and ``mms/steps_saved``."""

    name = "cached"
    uses_margins = True
    checkpoint_files = (MarginCache.FILE_NAME,)

    def __init__(self, trainer: Any):
        super().__init__(trainer)
        self.cache: MarginCache | None = None
        self.epoch_sampler: CachedMarginSampler | None = None
        self.epochs: EpochPlan | None = None  # the epochs of the current run

    def _cache_for_data(self) -> MarginCache:
        size = len(self.trainer.train_dataset)
        if self.cache is None or self.cache.scores.numel() != size:
            self.cache = MarginCache(size)
        return self.cache

    def sampler(self) -> CachedMarginSampler:
        args = self.trainer.args
        seed = args.data_seed if args.data_seed is not None else args.seed
        self.epoch_sampler = CachedMarginSampler(
            self._cache_for_data(), args.mms_keep_quantile, args.mms_keep_fraction, seed
        )
        return self.epoch_sampler

    def reset(self) -> None:
        self.cache = None

    def plan(self, values: tuple, dataloader: Any) -> tuple:
        """Plan every epoch's length first (the DataLoader's own count, sharding and drop_last included)."""
        sampler, args = self.epoch_sampler, self.trainer.args
        self.epochs = None
        if sampler is None:
            return values
        _, _, num_examples, _, total_batch_size, _, _ = values

        def batches_of(epoch: int, prunable: float) -> int:
            sampler.prunable = [0.0] * epoch + [prunable]
            sampler.set_epoch(epoch)
            return len(dataloader)

        plan = plan_epochs(
            args.num_train_epochs,
            args.max_steps,
            args.mms_warmup_steps,
            args.mms_anneal_epochs,
            args.gradient_accumulation_steps,
            batches_of,
        )
        sampler.prunable = plan.prunable
        sampler.set_epoch(0)
        self.epochs = plan
        num_train_samples = sum(plan.batches) * total_batch_size // args.gradient_accumulation_steps
        return (
            len(plan.steps),
            plan.steps[0],
            num_examples,
            num_train_samples,
            total_batch_size,
            plan.batches[0],
            (plan.max_steps),
        )

    def resume_position(self, epochs_trained: int, steps_trained: int) -> tuple[int, int]:
        """Counted in the run's own epochs (they differ in length); refuses a checkpoint planned otherwise."""
        step, args = self.trainer.state.global_step, self.trainer.args
        if self.epochs is None or step == 0:
            return epochs_trained, steps_trained
        epochs_trained, steps_done = self.epochs.epoch_at(step)
        steps_trained = 0 if args.ignore_data_skip else steps_done * args.gradient_accumulation_steps
        saved, planned = self.cache.plan_batches, self.epochs.batches[: epochs_trained + 1]
        if saved is not None and saved[: epochs_trained + 1] != planned:
            raise MMRConfigError(
                f"the checkpoint's cached-mode epochs had {saved[: epochs_trained + 1]} batches per process, this "
                f"run plans {planned}: resume with the same data, batch size, number of processes and mms_* settings"
            )
        return epochs_trained, steps_trained

    def epoch_arguments(self, epoch: int) -> dict[str, int]:
        if self.epochs is None:
            return {}
        return {"steps_in_epoch": self.epochs.batches[epoch], "num_update_steps_per_epoch": self.epochs.steps[epoch]}

    def weight_loss(self, loss: torch.Tensor, batch: MicroBatch) -> tuple[torch.Tensor, Any]:
        """Remember the batch's MMS; the loss becomes the epoch's weighted sum, normalized as the Trainer's."""
        if self.cache is None or batch.indices is None:
            return loss, None
        trainer = self.trainer
        self.cache.update(*gather_examples(trainer.accelerator, batch.indices, batch.mms))
        n = batch.labels.shape[0]
        scale = trainer.loss_scale.of_sum(n, batch.num_items_in_batch)
        smoothing = trainer.args.label_smoothing_factor
        weighted = self.cache.weighted_loss(batch.logits, batch.labels, batch.indices, smoothing)
        return weighted * scale, n * scale

    def log(self, logs: dict[str, float]) -> None:
        if self.epochs is not None:  # fixed for the whole epoch: read, not averaged
            logs["mms/kept_fraction"] = round(self.epoch_sampler.kept_fraction, 6)
            logs["mms/steps_saved"] = self.epochs.steps_saved(self.trainer.state.global_step - 1)

    def save(self, folder: str) -> None:
        if self.cache is not None:
            self.cache.save(folder, self.epochs.batches if self.epochs is not None else [])

    def load(self, folder: str) -> None:
        self._cache_for_data().load(folder)
