"""Interruption and recovery: complete-checkpoint markers, checks of every file resuming reads, save-on-signal."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import struct
import threading
import time
import zipfile
from typing import Any

import torch
from transformers import TrainerCallback, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .checks import is_number
from .errors import CheckpointError

logger = logging.getLogger(__name__)

# Written last into a checkpoint folder: a folder without it was interrupted while saving.
COMPLETE_MARKER = "checkpoint_complete"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def mark_complete(checkpoint_dir: str) -> None:
    with open(os.path.join(checkpoint_dir, COMPLETE_MARKER), "w") as handle:
        handle.write("ok\n")


def _safetensors_problem(path: str) -> str | None:
    """What is wrong with a safetensors file's header or size; None if it is whole."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"is {size} bytes long, too short for a safetensors header"
        length = struct.unpack("<Q", prefix)[0]
        if length > size - 8:
            return f"is cut short: its header alone needs {length + 8} bytes, the file has {size}"
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "has a damaged header (not valid JSON)"
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return f"is {size} bytes long but its header describes {expected}: it was cut short or damaged"
    return None


def _torch_file_problem(path: str) -> str | None:
    """What is wrong with a file written by ``torch.save`` (a zip archive); None if every member's CRC holds."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"cannot be read ({error}): it was cut short or damaged"
    return f"is damaged (its member {damaged} fails its checksum)" if damaged else None


def _read_json(path: str) -> tuple[Any, str | None]:
    """A JSON file's value, or None and what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle), None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, f"is not valid JSON ({error})"


def _json_problem(path: str, required: tuple[str, ...] = ()) -> str | None:
    value, problem = _read_json(path)
    missing = [key for key in required if not isinstance(value, dict) or key not in value]
    return problem or (f"lacks the field {missing[0]!r}" if missing else None)


def _trainer_state_problem(path: str) -> str | None:
    """What ``TrainerState.load_from_json`` and the resume arithmetic would trip on; None if it loads."""
    state, problem = _read_json(path)
    if problem:
        return problem
    if not isinstance(state, dict) or "global_step" not in state:
        return "lacks the field 'global_step'"
    kinds = {field.name: field.type for field in dataclasses.fields(TrainerState)}
    unknown = [key for key in state if key not in kinds]
    if unknown:
        return f"has the field {unknown[0]!r}, which TrainerState does not know"
    step = state["global_step"]
    if not (isinstance(step, int) and is_number(step) and step >= 0):
        return f"has global_step = {step!r}, not a whole number >= 0"
    optional = {name for name, kind in kinds.items() if kind in (int | None, float | None)}
    counts = optional | {name for name, kind in kinds.items() if kind in (int, float)}
    for key, value in state.items():  # the counts the resume computes with must be numbers
        if key in counts and not (is_number(value) or (value is None and key in optional)):
            return f"has {key} = {value!r}, not a number"
    if not isinstance(state.get("log_history", []), list):
        return "has a log_history that is not a list"
    return None


# The files of a checkpoint that resuming reads, and how each is checked.
_WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
# Every torch file of a checkpoint is read on resume: the Trainer's (optimizer.pt, scheduler.pt, scaler.pt, the
# rng_state*.pth) and hf-mmr's state pieces (hf_mmr.state), whatever their names.
_TORCH_SUFFIXES = (".pt", ".pth")
# Folders found sound, by their files' names, sizes and modification times: a run checks each folder's
# checksums once, however many times it asks (the script before loading the model, the trainer on resume).
_sound: set[tuple] = set()
_AT_REST_NS = 2_000_000_000


def checkpoint_problem(folder: str, required: tuple[str, ...] = ()) -> str | None:
    """Why a checkpoint folder cannot be resumed, naming the file; None if it is sound (``_checkpoint_problem``),
    remembered for a folder found sound until one of its files changes."""
    key = _fingerprint(folder, required)
    if key is not None and key in _sound:
        return None
    problem = _checkpoint_problem(folder, required)
    if problem is None and key is not None:
        _sound.add(key)
    return problem


def _fingerprint(folder: str, required: tuple[str, ...]) -> tuple | None:
    """The folder's files with their sizes and modification times; None if it cannot be listed or a file
    changed within the last seconds (a change within one tick of the file system's clock would keep the
    time, so only a folder at rest is remembered, as git does with racily clean files)."""
    try:
        entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder))
    except OSError:
        return None
    if any(time.time_ns() - mtime < _AT_REST_NS for _, _, mtime in entries):
        return None
    return (os.path.abspath(folder), tuple(required), tuple(entries))


def _checkpoint_problem(folder: str, required: tuple[str, ...] = ()) -> str | None:
    """Why a checkpoint folder cannot be resumed, naming the file; None if it is sound.

    Checked: the completion marker; ``trainer_state.json`` (valid JSON that ``TrainerState`` loads: known
    fields, ``global_step`` a whole number >= 0, the other counts numbers) and
    ``config.json``; the weights (a safetensors file's header against its size, its shards too; a
    torch file's checksums); ``optimizer.pt``, ``scheduler.pt``, the RNG states and the MMS or margin
    state where present; and each file named in ``required`` (such as ``mms_state.pt``) must exist.
    """
    if not os.path.isdir(folder):
        return f"{folder} is not a folder"
    names = set(os.listdir(folder))
    if COMPLETE_MARKER not in names:
        return f"{folder} did not finish saving (it has no {COMPLETE_MARKER} marker)"
    for name in ("trainer_state.json", *required):
        if name not in names:
            return f"{os.path.join(folder, name)} is missing"
    for name, check in (("trainer_state.json", _trainer_state_problem), ("config.json", _json_problem)):
        if name in names and (problem := check(os.path.join(folder, name))):
            return f"{os.path.join(folder, name)} {problem}"
    weights = [name for name in _WEIGHT_FILES if name in names]
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index in names:
            path = os.path.join(folder, index)
            if problem := _json_problem(path, ("weight_map",)):
                return f"{path} {problem}"
            with open(path, encoding="utf-8") as handle:
                weights += sorted(set(json.load(handle)["weight_map"].values()))
    sharded_elsewhere = any(name.startswith(("pytorch_model_fsdp", "global_step")) for name in names)
    if not weights and not sharded_elsewhere:
        return f"{folder} holds no model weights (no {' or '.join(_WEIGHT_FILES[:3])})"
    torch_files = [name for name in names if name.endswith(_TORCH_SUFFIXES)]
    for name in [*weights, *sorted(torch_files)]:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{path} is missing"
        problem = _safetensors_problem(path) if name.endswith(".safetensors") else _torch_file_problem(path)
        if problem:
            return f"{path} {problem}"
    return None


def checkpoints(output_dir: str) -> list[str]:
    """The checkpoint folders of ``output_dir``, the highest step first."""
    if not os.path.isdir(output_dir):
        return []
    steps = sorted(
        (int(m.group(1)) for name in os.listdir(output_dir) if (m := _CHECKPOINT_RE.match(name))), reverse=True
    )
    return [os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}") for step in steps]


def last_complete_checkpoint(output_dir: str, required: tuple[str, ...] = (), warn: bool = False) -> str | None:
    """The checkpoint with the highest step that passes ``checkpoint_problem``, or None.

    With ``warn``, each newer checkpoint passed over is named in a warning with what is wrong with
    it. Nothing is deleted.
    """
    for folder in checkpoints(output_dir):
        problem = checkpoint_problem(folder, required)
        if problem is None:
            return folder
        if warn:
            logger.warning("Skipping %s: %s", os.path.basename(folder), problem)
    return None


def check_resumable(folder: str, required: tuple[str, ...] = ()) -> None:
    """Raise ``CheckpointError`` naming what is wrong with ``folder`` and the checkpoint to resume from instead."""
    problem = checkpoint_problem(folder, required)
    if problem is None:
        return
    parent = os.path.dirname(os.path.abspath(folder))
    sound = [c for c in checkpoints(parent) if os.path.abspath(c) != os.path.abspath(folder)]
    instead = next((c for c in sound if checkpoint_problem(c, required) is None), None)
    advice = f"resume from {instead} instead" if instead else "no other checkpoint beside it is sound; start afresh"
    raise CheckpointError(f"cannot resume: {problem}; {advice}")


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


# What a checkpoint's config.json must share with the model being loaded for its weights to fit.
MODEL_SHAPE = ("model_type", "hidden_size", "num_hidden_layers")


def _model_shape(config: dict) -> dict[str, Any]:
    shape = {key: config[key] for key in MODEL_SHAPE if key in config}
    labels = len(config["id2label"]) if "id2label" in config else config.get("num_labels")
    if labels is not None:
        shape["labels"] = labels
    return shape


def model_mismatch(checkpoint: str, config: dict) -> str | None:
    """Why ``checkpoint`` cannot be resumed into a model of ``config`` (a ``config.to_dict()``), or None.

    Compared: the model type, hidden size, layer count and number of labels that the checkpoint's
    ``config.json`` states; a checkpoint of another model would end in a size-mismatch traceback.
    """
    path = os.path.join(checkpoint, "config.json")
    if not os.path.isfile(path):
        return None
    saved, problem = _read_json(path)
    if problem is not None or not isinstance(saved, dict):
        return None  # checkpoint_problem names a damaged config.json
    theirs, ours = _model_shape(saved), _model_shape(config)
    if all(ours.get(key) == value for key, value in theirs.items()):
        return None

    def words(shape: dict) -> str:
        parts = [str(shape.get("model_type", "?"))]
        parts += [f"{key.replace('_', ' ')} {shape[key]}" for key in MODEL_SHAPE[1:] if key in shape]
        return ", ".join(parts + ([f"{shape['labels']} labels"] if "labels" in shape else []))

    return f"was trained from another model ({words(theirs)}) than the one loaded now ({words(ours)})"
