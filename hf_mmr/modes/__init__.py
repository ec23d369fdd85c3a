"""Selection modes: one object per ``mms_selection``, chosen once by ``selection_mode``."""

from __future__ import annotations

from typing import Any

from .base import MicroBatch, SelectionMode
from .cached import CachedSelection
from .select import PoolSelection

MODES: dict[str, type[SelectionMode]] = {"none": SelectionMode, "select": PoolSelection, "cached": CachedSelection}


def selection_mode(trainer: Any) -> SelectionMode:
    """The mode that ``trainer.args.mms_selection`` names, serving ``trainer``."""
    return MODES[trainer.args.mms_selection](trainer)


__all__ = ["MODES", "CachedSelection", "MicroBatch", "PoolSelection", "SelectionMode", "selection_mode"]
