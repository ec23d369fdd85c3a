"""Margin math for a linear classification head: the MMR penalty and minimal margin scores.

Notation: ``h`` (N x d) are the inputs of the final linear layer, ``W`` (C x d) its weight,
``b`` its bias, ``z = h W^T + b`` the logits and ``y`` the labels.

* Radius of the bounding sphere of the features: ``R = max_i ||h_i||_2``.
* Distance of ``h_i`` to the decision boundary between its predicted class ``p_i = argmax z_i``
  and another class ``j``: ``d_ij = (z_{i,p_i} - z_{i,j}) / ||w_{p_i} - w_j||``.
* Minimal margin score: ``MMS_i = min_{j != p_i} d_ij``, the Euclidean distance from ``h_i`` to
  the nearest decision boundary of the head (how far it must move before the prediction changes).
* Multi-margin regularization, in the two forms the paper's authors published:

  - ``form="weights"`` (their CNN code), with ``J_i`` the ``top_k`` classes other than ``y_i``
    that have the largest logits::

        MMR = mean_i  mean_{j in J_i}  R^2 * ||w_{y_i} - w_j||^2

  - ``form="margin"`` (their BERT code for GLUE), with ``m_i`` the mean of the ``top_k``
    smallest ``d_ij`` (``top_k = 1``: ``m_i = MMS_i``)::

        MMR = R / mean_i m_i

    the radius-to-margin ratio of margin bounds: invariant to the scale of the features and of
    the head, so it cannot be lowered by shrinking ``R`` alone.

* Margins of the given label ``y_i`` (negative when the example is misclassified), the signals
  of label-error detection:

  - geometric: ``min_{j != y_i} (z_{i,y_i} - z_{i,j}) / ||w_{y_i} - w_j||``, the signed distance of
    ``h_i`` to the nearest boundary of its label's region;
  - logit (the margin of AUM, Pleiss et al. 2020): ``z_{i,y_i} - max_{j != y_i} z_{i,j}``.

Everything is computed in float32 (or float64 if the inputs are float64), outside any
autocast region, so that R^2 of large features cannot overflow in half precision.
This module is pure: tensors in, tensors out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .errors import MMRConfigError

# Smallest class-row distance used as a divisor in the MMS: two identical class rows
# (distance 0) give a large but finite score instead of inf or nan.
DISTANCE_EPS = 1e-8
# Smallest mean margin the margin form divides by: a batch whose every example sits on a
# decision boundary gives a large but finite penalty instead of inf.
MARGIN_EPS = 1e-6
MMR_FORMS = ("weights", "margin")


def is_class_labels(labels: Any) -> bool:
    """Whether ``labels`` hold one integer class per example (single-label classification), which the
    margins of the given label and the class probabilities' scores need."""
    return isinstance(labels, torch.Tensor) and labels.dim() == 1 and not labels.is_floating_point()


def _full_precision(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Cast floating tensors to float32 unless they already are float32 or float64."""
    return [t if t.dtype in (torch.float32, torch.float64) else t.float() for t in tensors]


def _no_autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


def squared_radius(features: torch.Tensor) -> torch.Tensor:
    """``R^2 = max_i ||h_i||^2``: squared radius of the smallest origin-centred ball holding the batch.

    Squared norms avoid the sqrt, whose gradient is infinite at the origin: all-zero
    features give ``R^2 = 0`` and a zero gradient.
    """
    with _no_autocast(features.device):
        (features,) = _full_precision(features)
        return features.pow(2).sum(dim=-1).max()


def mmr_penalty(
    features: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    logits: torch.Tensor | None = None,
    top_k: int = 1,
    radius: torch.Tensor | float | None = None,
    form: str = "weights",
    sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Multi-margin regularization penalty (a scalar).

    ``form="weights"``: ``MMR = mean_i mean_{j in J_i} R^2 * ||w_{y_i} - w_j||^2``, ``J_i`` the
    ``top_k`` wrong classes with the largest logits of example ``i``.

    ``form="margin"``: ``MMR = R / max(mean_i m_i, MARGIN_EPS)``, ``m_i`` the mean of the ``top_k``
    smallest distances ``d_ij = (z_{i,p_i} - z_ij) / ||w_{p_i} - w_j||`` from ``h_i`` to the
    boundaries of its predicted class ``p_i``. This form does not use the labels, as in the
    authors' code: a margin measured from the true class would be negative on misclassified
    examples, so the mean could cross zero and the ratio jump from +inf to -inf.

    Args:
        features: ``h``, shape (N, d): inputs of the final linear layer.
        weight: ``W``, shape (C, d): weight of that layer.
        labels: ``y``, shape (N,): integer class ids (unused by ``form="margin"``).
        logits: shape (N, C). Defaults to ``h W^T``; pass the model's logits when the head has a
            bias. ``weights`` ranks the wrong classes by them; ``margin`` differentiates through them.
        top_k: how many of the strongest rival classes to count, ``1 <= top_k <= C - 1``.
        radius: ``R``; by default ``max_i ||h_i||`` over ``features``. Pass the global radius
            of a multi-process batch here, or a detached one to stop its gradient.
        form: ``"weights"`` or ``"margin"``.
        sum_over_processes: sums a tensor over the processes of a distributed batch
            (differentiably); the batch means are then means over the global batch.
    """
    num_classes = weight.shape[0]
    if not 1 <= top_k <= num_classes - 1:
        raise MMRConfigError(f"top_k must be between 1 and the number of classes - 1 ({num_classes - 1}), got {top_k}")
    if form not in MMR_FORMS:
        raise MMRConfigError(f"form must be one of {', '.join(MMR_FORMS)}, got {form!r}")
    with _no_autocast(features.device):
        features, weight = _full_precision(features, weight)
        if logits is None:
            logits = features @ weight.T
        if radius is None:
            radius = squared_radius(features).clamp_min(1e-24).sqrt()  # clamp: sqrt'(0) is infinite
        radius = torch.as_tensor(radius, device=features.device).to(features.dtype)
        if form == "margin":
            per_example = minimal_margin_scores(logits, weight, top_k)
        else:
            ranking = logits.detach().float().clone()
            labels = labels.long()
            # The true class can never be one of the competitors.
            ranking.scatter_(1, labels[:, None], float("-inf"))
            competitors = ranking.topk(top_k, dim=1).indices  # (N, k)
            row_gaps = weight[labels][:, None, :] - weight[competitors]  # (N, k, d)
            per_example = row_gaps.pow(2).sum(dim=-1).mean(dim=1)  # (N,)
        mean = _batch_mean(per_example, sum_over_processes)
        if form == "margin":
            return radius / mean.clamp_min(MARGIN_EPS)
        return radius.pow(2) * mean


def _batch_mean(
    values: torch.Tensor, sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None
) -> torch.Tensor:
    """Mean of ``values`` over the (global) batch: sum and count added up over the processes."""
    if sum_over_processes is None:
        return values.mean()
    totals = sum_over_processes(torch.stack([values.sum(), values.new_tensor(values.numel())]))
    return totals[0] / totals[1]


def minimal_margin_scores(logits: torch.Tensor, weight: torch.Tensor, top_k: int = 1) -> torch.Tensor:
    """Minimal margin score of each example, shape (N,).

    ``MMS_i = min_{j != p_i} (z_{i,p_i} - z_{i,j}) / max(||w_{p_i} - w_j||, DISTANCE_EPS)``
    with ``p_i = argmax z_i``: how far ``h_i`` must move before the predicted class changes.
    It is non-negative, and zero exactly when the top two logits tie. With ``top_k > 1``, the
    mean of the ``top_k`` smallest of these distances. Differentiable in ``logits`` and ``weight``.
    """
    with _no_autocast(logits.device):
        logits, weight = _full_precision(logits, weight)
        predicted = logits.detach().argmax(dim=1)  # (N,)
        margins = logits.gather(1, predicted[:, None]) - logits  # (N, C), >= 0
        row_gaps = weight[predicted][:, None, :] - weight[None, :, :]  # (N, C, d)
        # The norm of the zero gap to the predicted class itself would have a nan gradient: it is
        # replaced by 1 (its score is masked below anyway).
        own = torch.nn.functional.one_hot(predicted, weight.shape[0]).bool()
        squared = row_gaps.pow(2).sum(dim=-1).masked_fill(own, 1.0)
        distances = squared.clamp_min(DISTANCE_EPS**2).sqrt()
        scores = (margins / distances).masked_fill(own, float("inf"))  # no boundary of its own
        if top_k == 1:
            return scores.min(dim=1).values
        return scores.topk(top_k, dim=1, largest=False).values.mean(dim=1)


def label_margins(
    logits: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed margins of each example's given label, both of shape (N,): ``(geometric, logit)``.

    ``geometric_i = min_{j != y_i} (z_{i,y_i} - z_{i,j}) / max(||w_{y_i} - w_j||, DISTANCE_EPS)`` and
    ``logit_i = z_{i,y_i} - max_{j != y_i} z_{i,j}``; both are negative when another class wins.
    """
    with _no_autocast(logits.device):
        logits, weight = _full_precision(logits, weight)
        labels = labels.long()
        own = torch.nn.functional.one_hot(labels, weight.shape[0]).bool()
        gaps = logits.gather(1, labels[:, None]) - logits  # (N, C), 0 at the label itself
        squared = (weight[labels][:, None, :] - weight[None, :, :]).pow(2).sum(dim=-1)
        distances = squared.masked_fill(own, 1.0).clamp_min(DISTANCE_EPS**2).sqrt()
        geometric = (gaps / distances).masked_fill(own, float("inf")).min(dim=1).values
        logit = gaps.masked_fill(own, float("inf")).min(dim=1).values
        return geometric, logit


def margin_summary(scores: torch.Tensor, feature_norms: torch.Tensor) -> dict[str, float]:
    """Margins of a whole (evaluation) set: ``mms_median`` and ``relative_margin_median = median MMS / R``.

    ``scores`` are the examples' MMS, ``feature_norms`` their ``||h_i||``; ``R`` is the largest of
    these norms, the radius of the set's bounding sphere, so the relative margin is scale-free.
    """
    median = scores.double().median()
    radius = feature_norms.double().max()
    relative = median / radius if radius > 0 else torch.zeros_like(median)
    return {"mms_median": float(median), "relative_margin_median": float(relative)}
