"""The data side of MMS selection: example indices in batches, pools, the MMS cache and the pruned epochs.

The modes that use them live in ``hf_mmr.modes`` (``select``: pools of ``r * b`` candidates, see
``pool_size_to_select``, ``lowest``, ``take_rows``; ``cached``: ``MarginCache``, ``prune_epoch``,
``plan_epochs``, ``CachedMarginSampler``). In the cached mode each selective epoch is one pass over
a pruned set: the low-MMS examples are all kept, a fixed share of the others is drawn at random and
up-weighted so that the expected loss of the epoch equals the full epoch's. How many examples each
epoch keeps depends only on counts, so every epoch's length, and with it the learning-rate schedule,
is known before training starts.

The example index travels with each batch under ``INDEX_KEY`` (added by ``IndexedDataset``,
collated by ``IndexCollator``) and is removed before the model's forward pass, so any
map-style dataset works, with or without an ``idx`` column.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

INDEX_KEY = "mmr_example_index"


class IndexedDataset(Dataset):
    """A map-style dataset whose items also carry their own index under ``INDEX_KEY``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], INDEX_KEY: index}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """Batched fetch (the DataLoader uses it): keeps ``datasets.Dataset``'s fast path."""
        getitems = getattr(self.dataset, "__getitems__", None)
        items = getitems(indices) if getitems is not None else [self.dataset[i] for i in indices]
        return [{**item, INDEX_KEY: index} for item, index in zip(items, indices)]


class IndexCollator:
    """Collates with the wrapped collator, keeping the example indices aside as a tensor."""

    def __init__(self, collator: Callable[[list[dict]], dict]):
        self.collator = collator

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        if not features or INDEX_KEY not in features[0]:
            return self.collator(features)
        indices = torch.tensor([feature[INDEX_KEY] for feature in features], dtype=torch.long)
        batch = self.collator([{k: v for k, v in feature.items() if k != INDEX_KEY} for feature in features])
        batch[INDEX_KEY] = indices
        return batch


def pruned_length(num_examples: int, quantile: float, fraction: float, prunable: float) -> int:
    """How many examples an epoch keeps: see ``prune_epoch``; it depends on the counts alone."""
    candidates = round(prunable * num_examples)
    low = math.floor(quantile * candidates)
    return num_examples - candidates + low + round(fraction * (candidates - low))


def prune_epoch(
    scores: torch.Tensor, quantile: float, fraction: float, prunable: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples one epoch trains on, in order, and the loss weight of every example.

    Rule, over a random permutation of the ``N`` examples:

    1. its first ``P = round(prunable * N)`` examples are candidates for pruning; the others
       (the annealed part of the epoch) are all kept with weight 1 and come at the end of the epoch;
    2. of the candidates, the ``floor(quantile * P)`` with the smallest cached MMS are kept with
       weight 1 (never-scored examples rank lowest, so they are kept first);
    3. of the remaining ``H`` candidates, exactly ``k = round(fraction * H)`` are drawn at random
       and kept with weight ``H / k`` (``1 / fraction`` up to the rounding of ``k``).

    So for any per-example losses ``l``, ``E[sum_kept w_i l_i] = sum_i l_i``: the expected loss
    (and gradient) of the epoch equals that of a full epoch, and the epoch has
    ``pruned_length(N, quantile, fraction, prunable)`` examples whatever the scores.
    Returns (the kept indices in training order, weights of shape (N,), 0 for pruned examples).
    """
    n = scores.numel()
    order = torch.randperm(n, generator=generator)
    candidates = order[: round(prunable * n)]
    weights = torch.zeros(n)
    weights[order[candidates.numel() :]] = 1.0
    ranked = scores[candidates].nan_to_num(nan=-math.inf)
    ranked = candidates[torch.sort(ranked, stable=True).indices]  # ties: the permutation's order
    low = math.floor(quantile * candidates.numel())
    weights[ranked[:low]] = 1.0
    high = ranked[low:]
    drawn = round(fraction * high.numel())
    if drawn:
        weights[high[torch.randperm(high.numel(), generator=generator)[:drawn]]] = high.numel() / drawn
    kept = candidates[weights[candidates] > 0]
    # The annealed part comes last: the end of the epoch trains on every example, as the anneal epochs do.
    return torch.cat([kept[torch.randperm(kept.numel(), generator=generator)], order[candidates.numel() :]]), weights


class MarginCache:
    """Everything cached mode keeps: the latest MMS of every example and the current epoch's plan.

    ``scores`` is NaN until an example is first trained on. ``epoch`` and ``epoch_scores``
    freeze the scores an epoch was planned from, so that a run resumed mid-epoch plans that
    epoch exactly as the uninterrupted run did; ``weights`` are the epoch's loss weights.
    """

    FILE_NAME = "mms_state.pt"

    def __init__(self, num_examples: int):
        self.scores = torch.full((num_examples,), float("nan"))
        self.epoch: int | None = None
        self.epoch_scores = self.scores.clone()
        self.weights = torch.ones(num_examples)
        self.plan_batches: list[int] | None = None  # the epoch lengths of the run that saves (or saved) this cache

    def update(self, indices: torch.Tensor, scores: torch.Tensor) -> None:
        self.scores[indices.cpu()] = scores.detach().float().cpu()

    def weighted_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        """``sum_i w_i * CE_i`` over the batch, with the epoch's weights (the caller normalizes the sum)."""
        weights = self.weights.to(logits.device)[indices.to(logits.device)]
        losses = torch.nn.functional.cross_entropy(
            logits.float(), labels, reduction="none", label_smoothing=label_smoothing
        )
        return (weights * losses).sum()

    @property
    def num_examples(self) -> int:
        return self.scores.numel()

    def state_dict(self) -> dict[str, Any]:
        state = {"scores": self.scores, "epoch": self.epoch, "epoch_scores": self.epoch_scores}
        return {**state, "plan_batches": self.plan_batches or []}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = state["scores"].clone()
        self.epoch = state["epoch"]
        self.epoch_scores = state["epoch_scores"]
        self.plan_batches = state.get("plan_batches")

    @staticmethod
    def examples_in(state: dict[str, Any]) -> int:
        return state["scores"].numel()


class CachedMarginSampler(Sampler[int]):
    """Sampler of the ``cached`` mode: each epoch, the examples ``prune_epoch`` keeps.

    ``prunable[e]`` is the share of epoch ``e`` that may be pruned (0: a full uniform epoch; the
    trainer sets it from ``plan_epochs``). ``len()`` is the current epoch's planned length, so
    the DataLoader's length follows the epoch. The loss weights of the epoch are left in
    ``cache.weights``.
    """

    def __init__(self, cache: MarginCache, quantile: float, fraction: float, seed: int):
        self.cache = cache
        self.quantile = quantile
        self.fraction = fraction
        self.seed = seed
        self.prunable: list[float] = []
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _prunable(self) -> float:
        return self.prunable[self.epoch] if self.epoch < len(self.prunable) else 0.0

    def __len__(self) -> int:
        return pruned_length(self.cache.scores.numel(), self.quantile, self.fraction, self._prunable())

    @property
    def kept_fraction(self) -> float:
        return len(self) / self.cache.scores.numel()

    def __iter__(self) -> Iterator[int]:
        cache = self.cache
        if cache.epoch != self.epoch:  # a new epoch; a resumed one keeps its frozen scores
            cache.epoch, cache.epoch_scores = self.epoch, cache.scores.clone()
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        kept, cache.weights = prune_epoch(cache.epoch_scores, self.quantile, self.fraction, self._prunable(), generator)
        yield from kept.tolist()


@dataclass
class EpochPlan:
    """The epochs of a cached-mode run: their prunable share, batches (per process) and optimizer steps."""

    prunable: list[float]
    batches: list[int]
    steps: list[int]
    full_epoch_steps: int
    max_steps: int

    def epoch_at(self, step: int) -> tuple[int, int]:
        """(epoch, optimizer steps already done in it) after ``step`` optimizer steps."""
        done = 0
        for epoch, steps in enumerate(self.steps):
            if step < done + steps:
                return epoch, step - done
            done += steps
        return len(self.steps), 0

    def steps_saved(self, step: int) -> int:
        """Optimizer steps saved so far against full epochs, counting each epoch once it has started."""
        epoch, _ = self.epoch_at(step)
        return sum(self.full_epoch_steps - steps for steps in self.steps[: epoch + 1])


def plan_epochs(
    num_train_epochs: float,
    max_steps: int,
    warmup_steps: int,
    anneal_epochs: float,
    gradient_accumulation_steps: int,
    batches_of: Callable[[int, float], int],
) -> EpochPlan:
    """Lay out a cached-mode run before it starts.

    ``batches_of(epoch, prunable)`` is the number of batches of that epoch (the DataLoader's
    length). An epoch is selective unless it is the first, starts before ``warmup_steps``, or
    lies in the anneal window, the last ``anneal_epochs`` epochs of training (a fraction of an
    epoch anneals that last part of it). With ``max_steps > 0`` the run has as many epochs as
    it needs to reach ``max_steps``, the anneal window at their end; otherwise
    ``num_train_epochs`` (a fraction of the last epoch if not whole) sets ``max_steps``.
    """

    def lay_out(total_epochs: float) -> tuple[list[float], list[int], list[int]]:
        prunable, batches, steps = [], [], []
        for epoch in range(math.ceil(total_epochs)):
            annealed = min(max(epoch + 1 - (total_epochs - anneal_epochs), 0.0), 1.0)
            selective = epoch > 0 and sum(steps) >= warmup_steps
            prunable.append(1.0 - annealed if selective else 0.0)
            batches.append(batches_of(epoch, prunable[-1]))
            steps.append(max(math.ceil(batches[-1] / gradient_accumulation_steps), 1))
        return prunable, batches, steps

    full_epoch_steps = max(math.ceil(batches_of(0, 0.0) / gradient_accumulation_steps), 1)
    if max_steps > 0:
        total_epochs = 1
        while sum(lay_out(total_epochs)[2]) < max_steps:
            total_epochs += 1
        prunable, batches, steps = lay_out(total_epochs)
    else:
        prunable, batches, steps = lay_out(num_train_epochs)
        whole = sum(steps[:-1])
        max_steps = whole + math.ceil((num_train_epochs - (len(steps) - 1)) * steps[-1])
    return EpochPlan(prunable, batches, steps, full_epoch_steps, max_steps)


def pool_size_to_select(pool_size: int, factor: int, world_size: int) -> int:
    """How many of a global pool of ``pool_size`` candidates one step trains on: ``pool / r``,
    rounded so that every process gets the same number (at least one)."""
    per_process = max(1, math.ceil(pool_size / factor) // world_size)
    return per_process * world_size


def lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` smallest scores, smallest first; ties go to the earlier position."""
    return torch.sort(scores, stable=True).indices[:k]


def take_rows(batch: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """The sub-batch at ``rows`` of a collated batch, without the padding columns no kept row uses."""
    num_rows = len(batch[INDEX_KEY])
    mask = batch.get("attention_mask")
    columns = None
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        columns = mask[rows].bool().any(dim=0)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != num_rows:
            out[key] = value
            continue
        value = value[rows]
        if columns is not None and value.dim() == 2 and value.shape[1] == columns.numel() and key != "labels":
            value = value[:, columns]
        out[key] = value
    return out
