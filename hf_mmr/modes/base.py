"""The interface of a selection mode, and the uniform default (``mms_selection="none"``).

A mode is the whole of one way of choosing training examples: its name and description (the
``--mms_selection`` choice and help), the checks of its settings, its sampler, its changes to the
epochs and the batches, its weighting of the loss, its logs and its state in checkpoints. It sees
the trainer through a ``TrainingContext``. ``MMRTrainer`` builds one mode in ``__init__``
(``hf_mmr.modes.selection_mode``) and calls these hooks from its own; the default does nothing at
any of them, so training is the Trainer's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..checks import check_number
from ..compat import TrainingPlan
from ..context import TrainingContext


@dataclass(frozen=True)
class MicroBatch:
    """A training micro-batch as the trainer saw it: what a mode may weight its loss by."""

    logits: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor | None  # the examples' positions in the train dataset (None when not collected)
    mms: torch.Tensor  # the examples' minimal margin scores
    num_items_in_batch: torch.Tensor | int | None


class SelectionMode:
    """Uniform sampling, the Trainer's own: every hook leaves what it is given as it is.

    A mode reads ``context.args`` at every call (a hyperparameter search replaces them).
    """

    name = "none"
    summary = "the Trainer's uniform sampler"  # the --mms_selection help's words for this mode
    uses_margins = False  # whether the mode needs the head's features and each batch's example indices
    checkpoint_files: tuple[str, ...] = ()  # what save() writes, which a checkpoint must hold to resume exactly

    def __init__(self, context: TrainingContext):
        self.context = context

    @classmethod
    def check(cls, args: Any) -> None:
        """Fail in one line naming the flag if one of this mode's settings (``args.mms_*``) cannot work.

        Here the warm-up every selective mode shares; a mode with settings of its own extends it.
        """
        check_number(args, "mms_warmup_steps", integer=True, at_least=0)

    @property
    def pool_factor(self) -> int:
        """How many training batches the DataLoader loads for one step."""
        return 1

    def sampler(self) -> torch.utils.data.Sampler | None:
        """The training sampler; None leaves the Trainer's own."""
        return None

    def reset(self) -> None:
        """A run starts from scratch (not resumed): forget what an earlier run learned."""

    def plan(self, plan: TrainingPlan, dataloader: Any) -> TrainingPlan:
        """The run's epochs, steps and lengths as the Trainer computed them, as the mode changes them."""
        return plan

    def resume_position(self, epochs_trained: int, steps_trained: int) -> tuple[int, int]:
        """Where a resumed run stands: (epochs done, micro-batches to skip in the current epoch)."""
        return epochs_trained, steps_trained

    def epoch_arguments(self, epoch: int) -> dict[str, int]:
        """Overrides of the epoch's ``steps_in_epoch`` and ``num_update_steps_per_epoch`` (``TrainerHooks.begin_epoch``)."""
        return {}

    def select(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        """The batch a training step trains on, from the one the DataLoader gave."""
        return inputs

    def items_in_batch(self, num_items: torch.Tensor | int | None, batch_samples: list) -> torch.Tensor | int | None:
        """``num_items_in_batch`` of an accumulated step, counted over the examples that will be trained on."""
        return num_items

    def weight_loss(self, loss: torch.Tensor, batch: MicroBatch) -> tuple[torch.Tensor, Any]:
        """The classification loss of a training micro-batch, and the factor that puts a batch mean on its footing.

        A factor of None leaves it to the trainer (the loss is the Trainer's own).
        """
        return loss, None

    def log(self, logs: dict[str, float]) -> None:
        """Add the mode's own entries to a training log."""

    def save(self, folder: str) -> None:
        """Write the mode's state into a checkpoint folder."""

    def load(self, folder: str) -> None:
        """Restore the mode's state from a checkpoint folder."""
