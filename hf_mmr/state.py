"""State that checkpoints carry beyond the Trainer's own: one protocol for every piece of it.

A piece (the cached mode's ``MarginCache``, the ``MarginRecorder``) declares its ``FILE_NAME``, what it
saves (``state_dict``), how it restores (``load_state_dict``) and how many training examples a saved
state describes (``examples_in``). ``save_state`` and ``load_state`` are the only code that writes and
reads these files, so every piece refuses a checkpoint of other training data the same way, with
``ResumeMismatchError``. The soundness of the files (checksums) is ``recovery.checkpoint_problem``'s.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Protocol

import torch

from .errors import ResumeMismatchError


class CheckpointState(Protocol):
    """A piece of training state saved in every checkpoint, one row per training example."""

    FILE_NAME: ClassVar[str]
    num_examples: int

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @staticmethod
    def examples_in(state: dict[str, Any]) -> int: ...


def save_state(part: CheckpointState, folder: str) -> None:
    """Write ``part`` into a checkpoint folder."""
    torch.save(part.state_dict(), os.path.join(folder, part.FILE_NAME))


def load_state(part: CheckpointState, folder: str) -> bool:
    """Restore ``part`` from a checkpoint folder; False if the folder holds none of it.

    Refuses, naming the file, a state of another number of training examples: resuming with other
    training data would attach every example's history to another example.
    """
    path = os.path.join(folder, part.FILE_NAME)
    if not os.path.isfile(path):
        return False
    state = torch.load(path, weights_only=True)
    saved = part.examples_in(state)
    if saved != part.num_examples:
        raise ResumeMismatchError(
            f"{path} records {saved} training examples but the training set has {part.num_examples}; resume with "
            "the same training data"
        )
    part.load_state_dict(state)
    return True
