"""Checks of a setting's value, shared by the arguments and the selection modes: one line naming the flag."""

from __future__ import annotations

import math
import operator
from typing import Any

from .errors import MMRConfigError


def is_number(value: Any) -> bool:
    """An int or float, not a bool (``True`` is an int to Python, never a number to a user)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def check_number(
    args: object,
    name: str,
    *,
    integer: bool = False,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
    optional: bool = False,
) -> None:
    """One line naming the flag unless ``args.<name>`` is an integer (or a finite number) within the bounds given."""
    value = getattr(args, name)
    if optional and value is None:
        return
    fits = (isinstance(value, int) and not isinstance(value, bool)) if integer else is_finite_number(value)
    fits = fits and all(
        bound is None or compare(value, bound)
        for bound, compare in (
            (at_least, operator.ge),
            (above, operator.gt),
            (at_most, operator.le),
            (below, operator.lt),
        )
    )
    if fits:
        return
    low = f"[{at_least:g}" if at_least is not None else f"({above:g}" if above is not None else None
    high = f"{at_most:g}]" if at_most is not None else f"{below:g})" if below is not None else None
    kind = "an integer" if integer else "a finite number"
    if low and high:
        bounds = f"{kind} in {low}, {high}"
    else:
        bounds = f"{kind} " + (
            f">= {at_least:g}" if at_least is not None else f"> {above:g}" if above is not None else ""
        )
    raise MMRConfigError(f"--{name} must be {bounds.strip()}, got {value!r}")
