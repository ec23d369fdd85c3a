"""``TrainingContext``: what a selection mode and the loss scaling may see of the trainer that runs them.

A part gets this narrow view instead of the trainer, so what it depends on is written down here: the
current arguments and step, the training set's size, the process group, the head's feature capture, and
three services (a diagnostic to log, a batch moved to the device, the forward pass's autocast context).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .arguments import MMRTrainingArguments
    from .head import FeatureCapture
    from .trainer import MMRTrainer


class TrainingContext:
    """A read-mostly view of one ``MMRTrainer``; every property reads the trainer's current value (a
    hyperparameter search replaces ``args``, ``model_init`` the feature capture)."""

    def __init__(self, trainer: MMRTrainer):
        self._trainer = trainer

    @property
    def args(self) -> MMRTrainingArguments:
        return self._trainer.args

    @property
    def step(self) -> int:
        """Optimizer steps done so far in this run."""
        return self._trainer.state.global_step

    @property
    def train_size(self) -> int:
        """Examples in the training set (after a calibration slice is held out)."""
        return len(self._trainer.train_dataset)

    @property
    def accelerator(self) -> Accelerator:
        return self._trainer.accelerator

    @property
    def feature_capture(self) -> FeatureCapture | None:
        return self._trainer.feature_capture

    @property
    def label_names(self) -> list[str]:
        """The batch keys that hold labels (never passed to a scoring forward)."""
        return list(self._trainer.label_names)

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches of the current optimizer step (the last step of an epoch may have fewer)."""
        return self._trainer.current_gradient_accumulation_steps

    def loss_is_scaled_for_accumulation(self, num_items_in_batch: torch.Tensor | int | None) -> bool:
        """Whether the Trainer counts this step's loss as normalized over the accumulated batch already."""
        return self._trainer.loss_is_scaled(num_items_in_batch)

    def add_diagnostic(self, name: str, value: torch.Tensor | float) -> None:
        """Average ``value`` into the logging window's ``name`` (``mms/*``, ``mmr/*``)."""
        self._trainer.add_diagnostic(name, value)

    def prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A batch moved to the device as ``training_step`` moves it."""
        return self._trainer.prepare_inputs(inputs)

    def forward_context(self) -> AbstractContextManager:
        """The autocast context of the training forward pass (for an extra forward, such as scoring)."""
        return self._trainer.compute_loss_context_manager()
