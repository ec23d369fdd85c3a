"""Per-example training margins, recorded from the normal training forward pass (``record_margins``).

Each time an example is trained on, ``MarginRecorder.add`` adds to its running sums:

* ``m``: the signed geometric margin of its given label, ``min_{j != y} (z_y - z_j) / ||w_y - w_j||``;
* ``z_y - max_{j != y} z_j``: the logit margin of AUM (Pleiss et al. 2020);
* the cross-entropy of its given label, and ``p_y`` with ``p_y^2`` (for cartography's
  confidence and variability, Swayamdipta et al. 2020).

It also adds the whole probability vector ``softmax(z)`` (for cleanlab, which ranks label issues from
predicted probabilities) and, per epoch, ``m`` and a count (so early-training averages can be read).

``table()`` turns the sums into one row per example (``TABLE_COLUMNS``, then ``aum_epoch_1``,
``aum_epoch_2``, ...: the mean of ``m`` within each epoch): ``aum`` is the mean of ``m``,
``logit_aum`` AUM as Pleiss et al. define it, ``label_quality`` and ``suspect`` the ranking and the cutoff
of ``suspects.py`` (the examples likeliest to be mislabelled, as many as the data's estimated noise rate
implies). ``probabilities()`` is the mean probability vector of every example (``train_probs.npy``).
Memory is O(N·C + N·E) for C classes and E epochs; the sums stay on the training device, so a step costs
no host sync, and they travel with every checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .margins import label_margins
from .suspects import label_quality, normalized, suspects

# Written into output_dir by record_margins: one row per training example.
MARGINS_FILE = "train_margins.csv"
# The mean probability vectors, float32, one row per training example (NaN: never trained on).
PROBS_FILE = "train_probs.npy"
# The per-epoch means of the signed margin follow TABLE_COLUMNS as aum_epoch_1, aum_epoch_2, ...
EPOCH_COLUMN = "aum_epoch_{}"
# The running sums kept per example, in this order.
SUMS = ("margin", "logit_margin", "loss", "p", "p_squared")
TABLE_COLUMNS = (
    "index",
    "label",
    "seen",
    "aum",
    "logit_aum",
    "mean_loss",
    "confidence",
    "variability",
    "last_prediction",
    "label_quality",
    "suspect",
)


class MarginRecorder:
    """Running per-example sums of the margins, loss and probability of the given label."""

    FILE_NAME = "margins_state.pt"

    def __init__(self, num_examples: int):
        self.num_examples = num_examples
        self.sums = torch.zeros(len(SUMS), num_examples, dtype=torch.float64)
        self.seen = torch.zeros(num_examples, dtype=torch.long)
        self.label = torch.full((num_examples,), -1, dtype=torch.long)
        self.last_prediction = torch.full((num_examples,), -1, dtype=torch.long)
        self.prob_sums = torch.zeros(0, num_examples, dtype=torch.float64)  # (C, N), sized at the first batch
        self.epoch_margins = torch.zeros(0, num_examples, dtype=torch.float64)  # (E, N), a row per epoch reached
        self.epoch_seen = torch.zeros(0, num_examples, dtype=torch.long)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {
            "sums": self.sums,
            "seen": self.seen,
            "label": self.label,
            "last_prediction": self.last_prediction,
            "prob_sums": self.prob_sums,
            "epoch_margins": self.epoch_margins,
            "epoch_seen": self.epoch_seen,
        }

    def _set(self, tensors: Mapping[str, torch.Tensor], device: torch.device) -> None:
        for name, tensor in tensors.items():
            setattr(self, name, tensor.to(device))

    @staticmethod
    def values(logits: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """What one micro-batch adds, shape (len(SUMS) + 2 + C, N) in float64: the ``SUMS`` terms, label,
        prediction, and the C class probabilities."""
        with torch.no_grad():
            # float64: the variability is sqrt(E[p^2] - E[p]^2), which float32 rounding would swamp.
            logits, weight = logits.detach().double(), weight.detach().double()
            labels = labels.detach().long().to(logits.device)
            geometric, logit = label_margins(logits, weight, labels)
            log_probs = F.log_softmax(logits, dim=1)  # once: the label's loss and p, and the whole vector
            log_p = log_probs.gather(1, labels[:, None]).squeeze(1)
            p = log_p.exp()
            per_example = [geometric, logit, -log_p, p, p * p, labels.double(), logits.argmax(dim=1).double()]
            return torch.cat([torch.stack(per_example), log_probs.exp().T])

    def add(self, indices: torch.Tensor, values: torch.Tensor, epoch: int = 0) -> None:
        """Add ``values`` (from ``values``) of the examples at ``indices``, trained on in ``epoch`` (from 0);
        an example may come several times."""
        if self.sums.device != values.device:
            self._set(self._tensors(), values.device)
        indices = indices.to(values.device)
        ones = torch.ones_like(indices)
        self.sums.index_add_(1, indices, values[: len(SUMS)])
        self.seen.index_add_(0, indices, ones)
        self.label[indices] = values[len(SUMS)].long()
        self.last_prediction[indices] = values[len(SUMS) + 1].long()
        probs = values[len(SUMS) + 2 :]
        if not len(self.prob_sums):
            self.prob_sums = self.prob_sums.new_zeros(len(probs), self.num_examples)
        self.prob_sums.index_add_(1, indices, probs)
        if epoch >= len(self.epoch_margins):  # a new epoch: a row of zeros for it (and any skipped)
            extra = epoch + 1 - len(self.epoch_margins)
            self.epoch_margins = torch.cat([self.epoch_margins, self.epoch_margins.new_zeros(extra, self.num_examples)])
            self.epoch_seen = torch.cat([self.epoch_seen, self.epoch_seen.new_zeros(extra, self.num_examples)])
        self.epoch_margins[epoch].index_add_(0, indices, values[0])
        self.epoch_seen[epoch].index_add_(0, indices, ones)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.cpu() for name, tensor in self._tensors().items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self._set({name: state[name] for name in self._tensors() if name in state}, self.sums.device)

    @staticmethod
    def examples_in(state: Mapping[str, torch.Tensor]) -> int:
        return state["seen"].numel()

    def probabilities(self) -> np.ndarray:
        """The mean probability vector of every example, (N, C) float32; NaN rows for examples never trained on."""
        seen = self.seen.cpu()
        means = (self.prob_sums.cpu() / seen.clamp_min(1).double()).T.float().numpy()
        means[~(seen > 0).numpy()] = np.nan
        return means

    def table(self):
        """One row per example, by index (``TABLE_COLUMNS``); examples never trained on have empty scores."""
        import pandas as pd

        state = self.state_dict()
        seen = state["seen"]
        trained = seen > 0
        means = state["sums"] / seen.clamp_min(1).double()
        means[:, ~trained] = float("nan")
        margin, logit_margin, loss, p, p_squared = means.numpy()
        variability = (p_squared - p * p).clip(min=0.0) ** 0.5
        quality = label_quality(margin)
        flags = suspects(quality, state["label"].numpy(), normalized(self.probabilities()))  # as train_probs.npy
        suspect = pd.array([bool(f) if t else None for f, t in zip(flags, trained.tolist())], dtype="boolean")

        def as_ids(column: torch.Tensor) -> Any:  # -1 (never seen) becomes an empty cell
            return pd.array([int(v) if v >= 0 else None for v in column.tolist()], dtype="Int64")

        epochs = state["epoch_margins"] / state["epoch_seen"].clamp_min(1).double()
        epochs[state["epoch_seen"] == 0] = float("nan")
        by_epoch = {EPOCH_COLUMN.format(e + 1): column for e, column in enumerate(epochs.numpy())}
        return pd.DataFrame(
            {
                "index": range(self.num_examples),
                "label": as_ids(state["label"]),
                "seen": seen.numpy(),
                "aum": margin,
                "logit_aum": logit_margin,
                "mean_loss": loss,
                "confidence": p,
                "variability": variability,
                "last_prediction": as_ids(state["last_prediction"]),
                "label_quality": quality,
                "suspect": suspect,
                **by_epoch,
            },
            columns=[*TABLE_COLUMNS, *by_epoch],
        )


def text_columns(table: Any) -> list[str]:
    """The columns of a written table that are neither scores nor ids: the texts the script adds."""
    return [
        column
        for column in table.columns
        if column not in TABLE_COLUMNS
        and column != "row"
        and not column.endswith("_name")
        and not column.startswith(EPOCH_COLUMN.format(""))
    ]


def write_table(
    table: Any,
    output_dir: str,
    extra_columns: Mapping[str, Any] | None = None,
    label_names: Any = None,
    probabilities: np.ndarray | None = None,
) -> str:
    """Write a ``MarginRecorder.table()`` to ``output_dir/train_margins.csv`` (and ``probabilities``, from
    ``MarginRecorder.probabilities()``, to ``output_dir/train_probs.npy``); returns the table's path.

    ``extra_columns`` (name -> one value per training example, such as the texts) are added after
    ``index``; with ``label_names`` the label and prediction columns gain their names.
    """
    table = table.copy()
    for position, (name, values) in enumerate((extra_columns or {}).items(), start=1):
        table.insert(position, name, list(values))
    if label_names is not None:
        names = dict(enumerate(label_names))
        for column in ("label", "last_prediction"):
            table.insert(table.columns.get_loc(column) + 1, f"{column}_name", table[column].map(names))
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, MARGINS_FILE)
    table.to_csv(path, index=False)
    if probabilities is not None:
        np.save(os.path.join(output_dir, PROBS_FILE), probabilities)
    return path
