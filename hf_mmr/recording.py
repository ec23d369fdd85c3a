"""Per-example training margins, recorded from the normal training forward pass (``record_margins``).

Each time an example is trained on, ``MarginRecorder.add`` adds to its running sums:

* ``m``: the signed geometric margin of its given label, ``min_{j != y} (z_y - z_j) / ||w_y - w_j||``;
* ``z_y - max_{j != y} z_j``: the logit margin of AUM (Pleiss et al. 2020);
* the cross-entropy of its given label, and ``p_y`` with ``p_y^2`` (for cartography's
  confidence and variability, Swayamdipta et al. 2020).

``table()`` turns the sums into one row per example (``TABLE_COLUMNS``): ``aum`` is the mean of
``m``, ``logit_aum`` AUM as Pleiss et al. define it, ``suspect`` the rule ``aum < 0`` (on average
the model preferred another class). Memory is O(N); the sums stay on the training device, so a
step costs no host sync, and they travel with every checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .margins import label_margins

# Written into output_dir by record_margins: one row per training example.
MARGINS_FILE = "train_margins.csv"
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

    def _to(self, device: torch.device) -> None:
        if self.sums.device != device:
            self.sums, self.seen = self.sums.to(device), self.seen.to(device)
            self.label, self.last_prediction = self.label.to(device), self.last_prediction.to(device)

    @staticmethod
    def values(logits: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """What one micro-batch adds, shape (len(SUMS) + 2, N) in float64: the ``SUMS`` terms, label, prediction."""
        with torch.no_grad():
            # float64: the variability is sqrt(E[p^2] - E[p]^2), which float32 rounding would swamp.
            logits, weight = logits.detach().double(), weight.detach().double()
            labels = labels.detach().long().to(logits.device)
            geometric, logit = label_margins(logits, weight, labels)
            log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
            p = log_p.exp()
            return torch.stack([geometric, logit, -log_p, p, p * p, labels.double(), logits.argmax(dim=1).double()])

    def add(self, indices: torch.Tensor, values: torch.Tensor) -> None:
        """Add ``values`` (from ``values``) of the examples at ``indices``; an example may come several times."""
        self._to(values.device)
        indices = indices.to(values.device)
        self.sums.index_add_(1, indices, values[: len(SUMS)])
        self.seen.index_add_(0, indices, torch.ones_like(indices))
        self.label[indices] = values[len(SUMS)].long()
        self.last_prediction[indices] = values[len(SUMS) + 1].long()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "sums": self.sums.cpu(),
            "seen": self.seen.cpu(),
            "label": self.label.cpu(),
            "last_prediction": self.last_prediction.cpu(),
        }

    def save(self, folder: str) -> None:
        torch.save(self.state_dict(), os.path.join(folder, self.FILE_NAME))

    def load(self, folder: str) -> bool:
        """Restore the sums saved in a checkpoint folder; False if it holds none."""
        from .errors import CheckpointError

        path = os.path.join(folder, self.FILE_NAME)
        if not os.path.isfile(path):
            return False
        state = torch.load(path, weights_only=True)
        if state["seen"].numel() != self.num_examples:
            raise CheckpointError(
                f"{path} records {state['seen'].numel()} examples but the training set has {self.num_examples}; "
                "resume with the same training data"
            )
        device = self.sums.device
        self.sums, self.seen = state["sums"].to(device), state["seen"].to(device)
        self.label, self.last_prediction = state["label"].to(device), state["last_prediction"].to(device)
        return True

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
        suspect = pd.array([bool(m < 0) if t else None for m, t in zip(margin, trained.tolist())], dtype="boolean")

        def as_ids(column: torch.Tensor) -> Any:  # -1 (never seen) becomes an empty cell
            return pd.array([int(v) if v >= 0 else None for v in column.tolist()], dtype="Int64")

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
                "suspect": suspect,
            },
            columns=list(TABLE_COLUMNS),
        )


def write_table(
    table: Any, output_dir: str, extra_columns: Mapping[str, Any] | None = None, label_names: Any = None
) -> str:
    """Write a ``MarginRecorder.table()`` to ``output_dir/train_margins.csv``; returns the path.

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
    return path
