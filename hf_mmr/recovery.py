"""Interruption and recovery: complete-checkpoint markers, save-on-signal, and the non-finite-loss stop."""

from __future__ import annotations

import os
import re
import signal
import threading
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

# Written last into a checkpoint folder: a folder without it was interrupted while saving.
COMPLETE_MARKER = "checkpoint_complete"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def mark_complete(checkpoint_dir: str) -> None:
    with open(os.path.join(checkpoint_dir, COMPLETE_MARKER), "w") as handle:
        handle.write("ok\n")


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The checkpoint with the highest step whose saving finished (it holds the marker), or None."""
    if not os.path.isdir(output_dir):
        return None
    steps = [
        int(match.group(1))
        for name in os.listdir(output_dir)
        if (match := _CHECKPOINT_RE.match(name)) and os.path.isfile(os.path.join(output_dir, name, COMPLETE_MARKER))
    ]
    return os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{max(steps)}") if steps else None


class SaveOnSignal(TrainerCallback):
    """On SIGTERM or SIGINT, finish the current optimizer step, save a checkpoint and stop training.

    A second signal stops at once. With several processes the stop is agreed on by all of them
    at the same step (checkpoint saving is collective).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # second signal: give up on saving
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.received = signum

    def on_train_begin(self, args, state, control, **kwargs):
        self.received = None
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.received is not None
        if args.world_size > 1:
            flag = torch.tensor([float(stop)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            self.received = self.received or signal.SIGTERM
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
