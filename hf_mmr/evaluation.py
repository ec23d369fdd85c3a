"""Margins and calibration of an evaluation set, from the head's features in the normal evaluation forward pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .head import HeadCall
from .margins import is_class_labels, margin_summary, minimal_margin_scores
from .metrics import expected_calibration_error, negative_log_likelihood


class EvalMargins:
    """Collects each evaluated example's MMS and feature norm, and for single-label classification its class
    probabilities; ``summary`` turns them into the evaluation's metrics.

    ``temperature``: the one a calibrated head was divided by; the probabilities of the head before it
    (logits x T, from the same pass) then give ``ece_uncalibrated`` too.
    """

    def __init__(self, temperature: float | None = None) -> None:
        self.parts: list[dict[str, torch.Tensor]] = []
        self.temperature = temperature

    def add(self, call: HeadCall, labels: Any, gather: Callable[[Any], Any]) -> None:
        """One evaluation batch; ``gather`` is ``accelerator.gather_for_metrics`` (drops the padding of the last)."""
        if call.features.dim() != 2:
            return
        with torch.no_grad():
            h, weight = call.features.detach().float(), call.weight.detach().float()
            logits = F.linear(h, weight, None if call.bias is None else call.bias.float())
            parts = {"mms": minimal_margin_scores(logits, weight), "norm": h.norm(dim=1)}
            if is_class_labels(labels) and logits.shape[1] > 1:
                parts.update(probs=logits.softmax(dim=1), labels=labels.to(logits.device))
                if self.temperature is not None:
                    parts["probs_uncalibrated"] = (logits * self.temperature).softmax(dim=1)
            self.parts.append({name: value.cpu() for name, value in gather(parts).items()})

    def summary(self) -> tuple[dict[str, float], dict[str, Any]] | None:
        """(metrics without prefix: ``mms_median``, ``relative_margin_median``, ``ece``, ``nll`` and, for a
        calibrated head, ``ece_uncalibrated``; the per-example
        MMS with the set's radius R), or None when nothing was collected."""
        if not self.parts:
            return None
        columns = {name: torch.cat([part[name] for part in self.parts]) for name in self.parts[0]}
        scores, norms = columns["mms"], columns["norm"]
        metrics = margin_summary(scores, norms)
        if "probs" in columns:
            probs, labels = columns["probs"].double().numpy(), columns["labels"].numpy()
            metrics.update(ece=expected_calibration_error(probs, labels), nll=negative_log_likelihood(probs, labels))
            if "probs_uncalibrated" in columns:
                metrics["ece_uncalibrated"] = expected_calibration_error(
                    columns["probs_uncalibrated"].double().numpy(), labels
                )
        return metrics, {"mms": scores.numpy(), "radius": float(norms.max())}
