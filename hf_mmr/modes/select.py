"""``mms_selection="select"``: each step scores a pool of ``r * b`` candidates and trains on the ``b`` lowest-MMS."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..checks import check_number
from ..context import TrainingContext
from ..head import logits_of
from ..margins import minimal_margin_scores
from ..sampling import INDEX_KEY, lowest, pool_size_to_select, take_rows
from .base import SelectionMode


class PoolSelection(SelectionMode):
    """The paper's scheme: the DataLoader loads pools of ``mms_pool_factor`` batches; the current model scores
    each pool in eval mode without a gradient, and the step trains on the candidates with the smallest MMS
    (across all processes). Logs ``mms/pool_mean``, ``mms/selected_mean``, ``mms/misclassified_selected`` and
    ``mms/scoring_time_share`` (the share of the step's wall time spent scoring)."""

    name = "select"
    summary = (
        "each step trains on the batch with the smallest MMS among mms_pool_factor times as many candidates, "
        "scored by an extra forward pass"
    )
    uses_margins = True

    @classmethod
    def check(cls, args: Any) -> None:
        super().check(args)
        check_number(args, "mms_pool_factor", integer=True, at_least=1)
        check_number(args, "mms_scoring_batch_size", integer=True, at_least=1, optional=True)

    def __init__(self, context: TrainingContext):
        super().__init__(context)
        self._step_started: float | None = None
        self._seconds = {"scoring": 0.0, "step": 0.0}  # over the current logging window

    @property
    def pool_factor(self) -> int:
        return self.context.args.mms_pool_factor

    def select(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        now = time.perf_counter()
        if self._step_started is not None:
            self._seconds["step"] += now - self._step_started
        self._step_started = now
        return self.select_from_pool(model, self.context.prepare_inputs(inputs))

    def select_from_pool(self, model: nn.Module, pool: dict[str, Any]) -> dict[str, Any]:
        """The candidates of the pool with the smallest MMS (across all processes), this process's share."""
        context, args = self.context, self.context.args
        world = args.world_size
        local_size = len(pool[INDEX_KEY])
        per_process = pool_size_to_select(local_size * world, args.mms_pool_factor, world) // world
        if context.step < args.mms_warmup_steps:
            return take_rows(pool, torch.arange(min(per_process, local_size), device=pool[INDEX_KEY].device))
        start = time.perf_counter()
        scores, predicted = self.score_pool(model, pool)
        if world > 1:
            pool, scores, predicted = self.gather_pool(pool, scores, predicted)
        chosen = lowest(scores, per_process * world)
        mine = chosen[args.process_index :: world]
        context.add_diagnostic("mms/pool_mean", scores.mean())
        context.add_diagnostic("mms/selected_mean", scores[chosen].mean())
        if "labels" in pool:
            wrong = predicted[chosen] != pool["labels"][chosen].to(predicted.device)
            context.add_diagnostic("mms/misclassified_selected", wrong.float().mean())
        self._seconds["scoring"] += time.perf_counter() - start
        return take_rows(pool, mine)

    def score_pool(self, model: nn.Module, pool: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """MMS and predicted class of every candidate: eval mode, no gradient, length-sorted chunks."""
        context = self.context
        net = context.accelerator.unwrap_model(model)
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
        chunk = context.args.mms_scoring_batch_size or context.args.per_device_train_batch_size
        drop = {INDEX_KEY, "labels", *context.label_names}
        capture = context.feature_capture
        try:
            # no_grad, not inference_mode: FSDP2 would keep the weights it gathers here as inference tensors,
            # which the next training forward cannot use.
            with torch.no_grad(), context.forward_context():
                for first in range(0, size, chunk):
                    rows = order[first : first + chunk].to(scores.device)
                    batch = take_rows(pool, rows)
                    logits = logits_of(net(**{k: v for k, v in batch.items() if k not in drop}))
                    scores[rows] = minimal_margin_scores(logits, capture.pop(logits).weight)
                    predicted[rows] = logits.argmax(dim=1)
        finally:
            capture.discard()
            net.train(was_training)
        return scores, predicted

    def gather_pool(
        self, pool: dict[str, Any], scores: torch.Tensor, predicted: torch.Tensor
    ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        """Every process's pool and scores, in process order (each candidate was scored by its own process)."""
        accelerator = self.context.accelerator
        gathered = {}
        for key, value in pool.items():
            if isinstance(value, torch.Tensor) and value.dim() >= 1:
                padded = accelerator.pad_across_processes(value, dim=value.dim() - 1) if value.dim() == 2 else value
                gathered[key] = accelerator.gather(padded)
            else:
                gathered[key] = value
        return gathered, accelerator.gather(scores), accelerator.gather(predicted)

    def items_in_batch(self, num_items: torch.Tensor | int | None, batch_samples: list) -> torch.Tensor | int | None:
        """Count the labels of the examples that will be trained on, not of the whole pools."""
        if num_items is None or not batch_samples or not all(INDEX_KEY in batch for batch in batch_samples):
            return num_items  # evaluation batches are no pools
        args = self.context.args
        pool = sum(len(batch[INDEX_KEY]) for batch in batch_samples)
        chosen = sum(
            pool_size_to_select(len(batch[INDEX_KEY]) * args.world_size, args.mms_pool_factor, args.world_size)
            // args.world_size
            for batch in batch_samples
        )
        return num_items * chosen / pool

    def log(self, logs: dict[str, float]) -> None:
        if self._seconds["step"] > 0 and self._seconds["scoring"] > 0:
            logs["mms/scoring_time_share"] = round(self._seconds["scoring"] / self._seconds["step"], 4)
        self._seconds = {"scoring": 0.0, "step": 0.0}
