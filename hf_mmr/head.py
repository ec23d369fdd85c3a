"""Find the final linear layer of a classifier and capture its input during the forward pass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import HeadNotFoundError


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits of a model output: a ``ModelOutput``/dict, a ``(loss, logits, ...)`` tuple or a tensor."""
    if isinstance(outputs, Mapping):
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)):
        return outputs[1] if len(outputs) > 1 else outputs[0]
    return outputs


def _num_labels(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "num_labels", None)


def find_classifier_head(model: nn.Module, head_path: str | None = None) -> tuple[str, nn.Linear]:
    """Return ``(path, module)`` of the ``nn.Linear`` that produces the logits.

    With ``head_path`` (the ``mmr_head`` setting) that module is used. Otherwise the last
    registered ``nn.Linear`` whose ``out_features`` equals ``config.num_labels`` is taken:
    heads are registered after the encoder, and wrappers that keep a frozen copy of the head
    (PEFT's ``modules_to_save``) register the trained copy last. LoRA adapter matrices are
    never heads. A model without ``config.num_labels`` falls back to its last ``nn.Linear``.
    """
    if head_path:
        try:
            module = model.get_submodule(head_path)
        except AttributeError:
            raise HeadNotFoundError(f"mmr_head={head_path!r} names no module of {type(model).__name__}") from None
        if not isinstance(module, nn.Linear):
            raise HeadNotFoundError(
                f"mmr_head={head_path!r} is a {type(module).__name__}, not an nn.Linear; name the final linear layer"
            )
        return head_path, module

    num_labels = _num_labels(model)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and "lora_" not in name
        and (num_labels is None or module.out_features == num_labels)
    ]
    if not candidates:
        raise HeadNotFoundError(
            f"found no nn.Linear with {num_labels} outputs in {type(model).__name__}; "
            "set mmr_head to the module path of the layer that produces the logits"
        )
    return candidates[-1]


@dataclass
class HeadCall:
    """What one forward pass of the head saw: its input and a copy of its full weight and bias.

    ``weight`` is a differentiable copy taken inside the head's forward, the only moment when
    FSDP and DeepSpeed ZeRO-3 hold the full weight (afterwards only a shard remains). The penalty's
    gradient reaches the real weight through the copy, by the normal autograd path, and is summed
    with the head's own gradient before the weight's gradient is reduced.
    """

    features: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None


class FeatureCapture:
    """Forward hook that keeps the latest ``HeadCall`` of the head, so no second forward pass is needed.

    The hook runs first among the head's forward hooks, before a sharding framework frees the
    gathered weight. Use as a context manager or call ``remove()``.
    """

    def __init__(self, head: nn.Linear, head_path: str):
        self.head = head
        self.head_path = head_path
        self.call: HeadCall | None = None
        self._handle = head.register_forward_hook(self._hook, prepend=True)

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        bias = None if module.bias is None else module.bias.detach().clone()
        self.call = HeadCall(args[0], module.weight.clone(), bias)

    def discard(self) -> HeadCall | None:
        """Return the last call (None if there was none) and forget it."""
        call, self.call = self.call, None
        return call

    def pop(self, logits: torch.Tensor) -> HeadCall:
        """The call of the forward pass that produced ``logits``, checked against their shape, and forget it."""
        call = self.discard()
        if call is None:
            raise HeadNotFoundError(
                f"the head {self.head_path!r} was not called in the forward pass; set mmr_head to the layer that "
                "produces the logits"
            )
        features = call.features
        if (
            features.dim() != 2
            or logits.dim() != 2
            or features.shape[0] != logits.shape[0]
            or self.head.out_features != logits.shape[1]
        ):
            raise HeadNotFoundError(
                f"the head {self.head_path!r} got input of shape {tuple(features.shape)} for logits of shape "
                f"{tuple(logits.shape)}; MMR needs the final nn.Linear that maps (N, d) features to the (N, C) "
                "logits: set mmr_head to it"
            )
        return call

    def check_reproduces(self, call: HeadCall, logits: torch.Tensor, precision: torch.dtype | None = None) -> None:
        """Fail clearly unless ``W h + b`` equals the logits (the head is really the last layer).

        The tolerance is the rounding bound of a dot product computed in ``precision`` (default:
        the logits' dtype; pass the autocast dtype under mixed precision): a few ulps of
        ``|h| . |w|``, so that bf16/fp16 autocast passes and a real mismatch fails.
        """
        with torch.no_grad():
            h, weight = call.features.float(), call.weight.float()
            recomputed = nn.functional.linear(h, weight, None if call.bias is None else call.bias.float())
            scale = h.abs() @ weight.abs().T + 1.0
            tolerance = 8 * torch.finfo(precision or logits.dtype).eps * scale + 1e-5
            mismatch = (recomputed - logits.float()).abs() > tolerance
            if (mismatch & torch.isfinite(logits)).any():  # non-finite logits are the loss check's business
                raise HeadNotFoundError(
                    f"the logits are not W h + b of {self.head_path!r}: something runs after it; set mmr_head to the "
                    "final nn.Linear that produces the logits"
                )

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> FeatureCapture:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
