"""The cross-process reductions MMR and the margin tables need (single process: the identity)."""

from __future__ import annotations

from typing import Any

import torch


def global_max(accelerator: Any, local_max: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """Max of a scalar over all processes; with ``differentiable`` the gradient reaches the process that holds it."""
    if accelerator.num_processes <= 1:
        return local_max
    if differentiable:
        import torch.distributed.nn.functional as dist_fn

        return torch.stack(dist_fn.all_gather(local_max)).max()
    return accelerator.gather(local_max.detach()[None]).max()


def sum_over_processes(accelerator: Any, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over all processes; differentiable when the tensor needs a gradient."""
    if tensor.requires_grad:
        import torch.distributed.nn.functional as dist_fn

        return dist_fn.all_reduce(tensor)
    return accelerator.reduce(tensor, reduction="sum")


def gather_examples(accelerator: Any, indices: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's example ``indices`` (shape (n,)) with their ``values`` (shape (..., n)), in process order.

    Micro-batches may differ in size across processes: they are padded for the gather, and the
    padding (index -1) is dropped again.
    """
    if accelerator.num_processes <= 1:
        return indices, values
    indices = accelerator.gather(accelerator.pad_across_processes(indices, pad_index=-1))
    values = accelerator.gather(accelerator.pad_across_processes(values, dim=values.dim() - 1).movedim(-1, 0))
    kept = indices >= 0
    return indices[kept], values.movedim(0, -1)[..., kept]
