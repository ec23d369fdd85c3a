"""Selection modes: one object per ``mms_selection``, chosen once by ``selection_mode``.

``MODES`` is the only list of mode names: ``--mms_selection``'s choices and help, the check of a
config file's value and the trainer's choice all come from it. Adding a mode is one file (a
``SelectionMode`` subclass) and one ``register_mode`` call.
"""

from __future__ import annotations

from typing import Any

from ..context import TrainingContext
from ..errors import MMRConfigError
from .base import MicroBatch, SelectionMode
from .cached import CachedSelection
from .select import PoolSelection

MODES: dict[str, type[SelectionMode]] = {}


def register_mode(mode: type[SelectionMode]) -> type[SelectionMode]:
    """Make ``mode`` the one ``--mms_selection <mode.name>`` chooses (usable as a class decorator)."""
    MODES[mode.name] = mode
    return mode


for _mode in (SelectionMode, PoolSelection, CachedSelection):
    register_mode(_mode)


def mode_class(name: Any) -> type[SelectionMode]:
    """The registered mode called ``name``, or one line listing the registered names."""
    if name not in MODES:
        raise MMRConfigError(f"--mms_selection must be one of {', '.join(MODES)}, got {name!r}")
    return MODES[name]


def check_selection(args: Any) -> None:
    """The mode ``args.mms_selection`` names exists, and every mode's settings in ``args`` can work (a bad
    ``--mms_*`` value is refused whichever mode is chosen, as the Trainer's own flags are)."""
    mode_class(args.mms_selection)
    for mode in MODES.values():
        mode.check(args)


def selection_help() -> str:
    """``--mms_selection``'s help: every registered mode and what it does."""
    modes = ", ".join(f"'{name}' ({mode.summary})" for name, mode in MODES.items())
    return f"How training examples are chosen by minimal margin score (MMS): {modes}."


def selection_mode(context: TrainingContext) -> SelectionMode:
    """The mode that ``context.args.mms_selection`` names, its settings checked, serving ``context``."""
    check_selection(context.args)
    return mode_class(context.args.mms_selection)(context)


__all__ = [
    "MODES",
    "CachedSelection",
    "MicroBatch",
    "PoolSelection",
    "SelectionMode",
    "check_selection",
    "mode_class",
    "register_mode",
    "selection_help",
    "selection_mode",
]
