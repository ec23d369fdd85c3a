"""The MMR and MMS diagnostics of a logging window, averaged when the Trainer logs."""

from __future__ import annotations

from collections.abc import Callable

import torch


class DiagnosticWindow:
    """Sum and count of each named value since the last log; tensors stay on their device (no host sync per step)."""

    def __init__(self) -> None:
        self.entries: dict[str, list] = {}  # name -> [sum, count]

    def __bool__(self) -> bool:
        return bool(self.entries)

    def add(self, name: str, value: torch.Tensor | float) -> None:
        value = value.double() if isinstance(value, torch.Tensor) else float(value)
        entry = self.entries.get(name)
        if entry is None:
            self.entries[name] = [value, 1]
        else:
            entry[0] = entry[0] + value
            entry[1] += 1

    def pop_means(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """Each value's mean over the window (then over processes by ``reduce``), rounded; the window restarts."""
        names = sorted(self.entries)
        means = torch.stack(
            [torch.as_tensor(self.entries[n][0], dtype=torch.float64).cpu() / self.entries[n][1] for n in names]
        )
        if reduce is not None:
            means = reduce(means)
        self.entries = {}
        return {name: round(float(value), 6) for name, value in zip(names, means.tolist())}
