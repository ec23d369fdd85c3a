"""Choosing training examples by minimal margin score (MMS).

Two modes (``mms_selection``):

* ``select`` (the paper's scheme): the Trainer's own sampler draws a pool of ``r * b``
  candidates per step from a seeded per-epoch permutation (its batch size is multiplied by
  ``r = mms_pool_factor``); the current model scores the pool in eval mode and the step
  trains on the ``b`` candidates with the smallest MMS. An epoch is one pass over the
  permutation, so it has about ``N / (r * b)`` steps.
* ``cached`` (no extra forward pass): the MMS of every example trained on is recorded from
  the training forward pass. At the start of each epoch, ``CachedMarginSampler`` plans the
  epoch from these scores with the keep rule of ``keep_rule`` below; kept examples of large
  MMS carry the loss weight ``1 / p`` so that the expected gradient equals that of uniform
  sampling. An epoch still draws ``N`` examples (passes over the kept set, each with fresh
  random draws), so epochs, ``max_steps``, the learning-rate schedule and resuming keep
  their meaning; the last ``mms_anneal_epochs`` epochs are uniform.

The example index travels with each batch under ``INDEX_KEY`` (added by ``IndexedDataset``,
collated by ``IndexCollator``) and is removed before the model's forward pass, so any
map-style dataset works, with or without an ``idx`` column.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
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


def keep_rule(
    scores: torch.Tensor, quantile: float, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which examples one pass keeps, and their loss weights.

    Rule: an example never scored (NaN) or with MMS below the ``quantile`` of the scored
    examples is always kept with weight 1; any other example is kept with probability
    ``fraction`` and then weighted ``1 / fraction``. So for any per-example losses ``l``,
    ``E[sum_kept w_i l_i] = sum_all l_i``: the expected loss (and gradient) of a pass equals
    that of a full pass.
    """
    scored = ~torch.isnan(scores)
    if scored.any():
        threshold = torch.quantile(scores[scored], quantile)
        always = ~scored | (scores < threshold)
    else:
        always = torch.ones_like(scored)
    lucky = torch.rand(scores.shape, generator=generator) < fraction
    keep = always | lucky
    weights = torch.where(always, 1.0, 1.0 / fraction)
    return keep, weights


class MarginCache:
    """The latest MMS of every training example (NaN until first trained on) and the current epoch's plan.

    ``epoch`` and ``epoch_scores`` freeze the scores an epoch was planned from, so that a run
    resumed mid-epoch plans that epoch exactly as the uninterrupted run did.
    """

    def __init__(self, num_examples: int):
        self.scores = torch.full((num_examples,), float("nan"))
        self.epoch: int | None = None
        self.epoch_scores: torch.Tensor | None = None  # None: the epoch is uniform
        self.weights = torch.ones(num_examples)

    def update(self, indices: torch.Tensor, scores: torch.Tensor) -> None:
        self.scores[indices.cpu()] = scores.detach().float().cpu()

    def state_dict(self) -> dict[str, Any]:
        return {"scores": self.scores, "epoch": self.epoch, "epoch_scores": self.epoch_scores}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["scores"].shape != self.scores.shape:
            raise ValueError(
                f"the checkpoint's MMS cache has {state['scores'].numel()} examples but the training set has "
                f"{self.scores.numel()}; resume with the same training data"
            )
        self.scores = state["scores"].clone()
        self.epoch = state["epoch"]
        self.epoch_scores = state["epoch_scores"]


class CachedMarginSampler(Sampler[int]):
    """Sampler of the ``cached`` mode: ``N`` indices per epoch, drawn by ``keep_rule`` from the cached MMS.

    ``selecting(epoch)`` says whether an epoch is selective (after the warm-up steps, before the
    anneal epochs). The plan of each selective epoch is a sequence of passes, each a fresh
    ``keep_rule`` draw over the scores frozen at the epoch's start, shuffled, until ``N``
    indices are drawn. The loss weights of the epoch are left in ``cache.weights``.
    """

    def __init__(
        self, cache: MarginCache, quantile: float, fraction: float, seed: int, selecting: Callable[[int], bool]
    ):
        self.cache = cache
        self.quantile = quantile
        self.fraction = fraction
        self.seed = seed
        self.selecting = selecting
        self.epoch = 0
        self.kept_fraction = 1.0  # of the current epoch's passes, on average
        self.skipped = 0  # examples left out of the current epoch's first pass

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.cache.scores.numel()

    def __iter__(self) -> Iterator[int]:
        cache, n = self.cache, len(self)
        if cache.epoch != self.epoch:  # a new epoch; a resumed one keeps its frozen plan
            cache.epoch = self.epoch
            cache.epoch_scores = cache.scores.clone() if self.selecting(self.epoch) else None
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if cache.epoch_scores is None:
            cache.weights = torch.ones(n)
            self.kept_fraction, self.skipped = 1.0, 0
            yield from torch.randperm(n, generator=generator).tolist()
            return
        drawn: list[int] = []
        kept_counts = []
        while len(drawn) < n:
            keep, weights = keep_rule(cache.epoch_scores, self.quantile, self.fraction, generator)
            kept = keep.nonzero().squeeze(1)
            kept_counts.append(kept.numel())
            drawn += kept[torch.randperm(kept.numel(), generator=generator)].tolist()
        cache.weights = weights  # the same every pass: it depends only on the frozen scores
        self.kept_fraction = sum(kept_counts) / (len(kept_counts) * n)
        self.skipped = n - kept_counts[0]
        yield from drawn[:n]


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
