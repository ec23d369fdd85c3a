"""``mms_selection="cached"``: MMS remembered from the training forward pass, selective epochs of known length."""

from __future__ import annotations

from typing import Any

import torch

from ..checks import check_number
from ..collectives import gather_examples
from ..compat import TrainingPlan
from ..context import TrainingContext
from ..errors import ResumeMismatchError
from ..sampling import CachedMarginSampler, EpochPlan, MarginCache, plan_epochs
from ..scaling import sum_scale
from ..state import load_state, save_state
from .base import MicroBatch, SelectionMode


class CachedSelection(SelectionMode):
    """No extra forward pass, fewer steps: every example's latest MMS is kept (``MarginCache``), and each
    selective epoch trains on a pruned, up-weighted set (``sampling.prune_epoch``). Every epoch's length is
    planned before training (``sampling.plan_epochs``), so ``max_steps`` and the schedule count them, and a
    resumed run plans exactly as the uninterrupted one. Logs ``mms/kept_fraction`` and ``mms/steps_saved``."""

    name = "cached"
    summary = (
        "MMS recorded from the training forward pass; each later epoch skips part of the large-MMS examples "
        "and up-weights the rest, so it has fewer steps"
    )
    uses_margins = True
    checkpoint_files = (MarginCache.FILE_NAME,)

    @classmethod
    def check(cls, args: Any) -> None:
        super().check(args)
        check_number(args, "mms_anneal_epochs", at_least=0)
        check_number(args, "mms_keep_quantile", above=0, below=1)
        check_number(args, "mms_keep_fraction", above=0, below=1)

    def __init__(self, context: TrainingContext):
        super().__init__(context)
        self.cache: MarginCache | None = None
        self.epoch_sampler: CachedMarginSampler | None = None
        self.epochs: EpochPlan | None = None  # the epochs of the current run

    def _cache_for_data(self) -> MarginCache:
        size = self.context.train_size
        if self.cache is None or self.cache.scores.numel() != size:
            self.cache = MarginCache(size)
        return self.cache

    def sampler(self) -> CachedMarginSampler:
        args = self.context.args
        seed = args.data_seed if args.data_seed is not None else args.seed
        self.epoch_sampler = CachedMarginSampler(
            self._cache_for_data(), args.mms_keep_quantile, args.mms_keep_fraction, seed
        )
        return self.epoch_sampler

    def reset(self) -> None:
        self.cache = None

    def plan(self, plan: TrainingPlan, dataloader: Any) -> TrainingPlan:
        """Plan every epoch's length first (the DataLoader's own count, sharding and drop_last included)."""
        sampler, args = self.epoch_sampler, self.context.args
        self.epochs = None
        if sampler is None:
            return plan

        def batches_of(epoch: int, prunable: float) -> int:
            sampler.prunable = [0.0] * epoch + [prunable]
            sampler.set_epoch(epoch)
            return len(dataloader)

        epochs = plan_epochs(
            args.num_train_epochs,
            args.max_steps,
            args.mms_warmup_steps,
            args.mms_anneal_epochs,
            args.gradient_accumulation_steps,
            batches_of,
        )
        sampler.prunable = epochs.prunable
        sampler.set_epoch(0)
        self.epochs = epochs
        return plan._replace(
            num_train_epochs=len(epochs.steps),
            num_update_steps_per_epoch=epochs.steps[0],
            num_train_samples=sum(epochs.batches) * plan.total_train_batch_size // args.gradient_accumulation_steps,
            steps_in_epoch=epochs.batches[0],
            max_steps=epochs.max_steps,
        )

    def resume_position(self, epochs_trained: int, steps_trained: int) -> tuple[int, int]:
        """Counted in the run's own epochs (they differ in length); refuses a checkpoint planned otherwise."""
        step, args = self.context.step, self.context.args
        if self.epochs is None or step == 0:
            return epochs_trained, steps_trained
        epochs_trained, steps_done = self.epochs.epoch_at(step)
        steps_trained = 0 if args.ignore_data_skip else steps_done * args.gradient_accumulation_steps
        saved, planned = self.cache.plan_batches, self.epochs.batches[: epochs_trained + 1]
        if saved is not None and saved[: epochs_trained + 1] != planned:
            raise ResumeMismatchError(
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
        context = self.context
        self.cache.update(*gather_examples(context.accelerator, batch.indices, batch.mms))
        n = batch.labels.shape[0]
        scale = sum_scale(context, n, batch.num_items_in_batch)
        smoothing = context.args.label_smoothing_factor
        weighted = self.cache.weighted_loss(batch.logits, batch.labels, batch.indices, smoothing)
        return weighted * scale, n * scale

    def log(self, logs: dict[str, float]) -> None:
        if self.epochs is not None:  # fixed for the whole epoch: read, not averaged
            logs["mms/kept_fraction"] = round(self.epoch_sampler.kept_fraction, 6)
            logs["mms/steps_saved"] = self.epochs.steps_saved(self.context.step - 1)

    def save(self, folder: str) -> None:
        if self.cache is not None:
            self.cache.plan_batches = self.epochs.batches if self.epochs is not None else []
            save_state(self.cache, folder)

    def load(self, folder: str) -> None:
        load_state(self._cache_for_data(), folder)
