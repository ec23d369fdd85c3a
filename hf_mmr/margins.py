"""Margin math for a linear classification head: the MMR penalty and minimal margin scores.

Notation: ``h`` (N x d) are the inputs of the final linear layer, ``W`` (C x d) its weight,
``b`` its bias, ``z = h W^T + b`` the logits and ``y`` the labels.

* Radius of the bounding sphere of the features: ``R = max_i ||h_i||_2``.
* Multi-margin regularization, with ``J_i`` the ``top_k`` classes other than ``y_i`` that
  have the largest logits ``z_i``::

      MMR = mean_i  mean_{j in J_i}  R^2 * ||w_{y_i} - w_j||^2

  With ``top_k = 1`` this is ``mean_i (R * ||w_y - w_j||)^2``, ``j`` the strongest wrong class.
* Minimal margin score, with ``p_i = argmax z_i``::

      MMS_i = min_{j != p_i}  (z_{i,p_i} - z_{i,j}) / ||w_{p_i} - w_j||

  the Euclidean distance from ``h_i`` to the nearest decision boundary of the head.

Everything is computed in float32 (or float64 if the inputs are float64), outside any
autocast region, so that R^2 of large features cannot overflow in half precision.
This module is pure: tensors in, tensors out.
"""

from __future__ import annotations

import torch

# Smallest class-row distance used as a divisor in the MMS: two identical class rows
# (distance 0) give a large but finite score instead of inf or nan.
DISTANCE_EPS = 1e-8


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
) -> torch.Tensor:
    """Multi-margin regularization penalty (a scalar).

    ``MMR = mean_i mean_{j in J_i} R^2 * ||w_{y_i} - w_j||^2``, ``J_i`` the ``top_k`` wrong
    classes with the largest logits of example ``i``.

    Args:
        features: ``h``, shape (N, d): inputs of the final linear layer.
        weight: ``W``, shape (C, d): weight of that layer.
        labels: ``y``, shape (N,): integer class ids.
        logits: shape (N, C); only used to rank the wrong classes. Defaults to ``h W^T``;
            pass the model's logits when the head has a bias, since the bias changes the ranking.
        top_k: how many of the strongest wrong classes to penalize, ``1 <= top_k <= C - 1``.
        radius: ``R``; by default ``max_i ||h_i||`` over ``features``. Pass the global radius
            of a multi-process batch here, or a detached one to stop its gradient.
    """
    num_classes = weight.shape[0]
    if not 1 <= top_k <= num_classes - 1:
        raise ValueError(f"top_k must be between 1 and the number of classes - 1 ({num_classes - 1}), got {top_k}")
    with _no_autocast(features.device):
        features, weight = _full_precision(features, weight)
        if logits is None:
            logits = features @ weight.T
        ranking = logits.detach().float().clone()
        labels = labels.long()
        # The true class can never be one of the competitors.
        ranking.scatter_(1, labels[:, None], float("-inf"))
        competitors = ranking.topk(top_k, dim=1).indices  # (N, k)
        row_gaps = weight[labels][:, None, :] - weight[competitors]  # (N, k, d)
        mean_sq_gap = row_gaps.pow(2).sum(dim=-1).mean(dim=1)  # (N,)
        if radius is None:
            r2 = squared_radius(features)
        else:
            radius = torch.as_tensor(radius, dtype=features.dtype, device=features.device)
            r2 = radius.to(features.dtype).pow(2)
        return r2 * mean_sq_gap.mean()


def minimal_margin_scores(logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Minimal margin score of each example, shape (N,).

    ``MMS_i = min_{j != p_i} (z_{i,p_i} - z_{i,j}) / max(||w_{p_i} - w_j||, DISTANCE_EPS)``
    with ``p_i = argmax z_i``: how far ``h_i`` must move before the predicted class changes.
    It is non-negative, and zero exactly when the top two logits tie.
    """
    with _no_autocast(logits.device):
        logits, weight = _full_precision(logits, weight)
        predicted = logits.argmax(dim=1)  # (N,)
        margins = logits.gather(1, predicted[:, None]) - logits  # (N, C), >= 0
        distances = (weight[predicted][:, None, :] - weight[None, :, :]).norm(dim=-1)  # (N, C)
        scores = margins / distances.clamp_min(DISTANCE_EPS)
        # The predicted class is no boundary of its own.
        scores = scores.scatter(1, predicted[:, None], float("inf"))
        return scores.min(dim=1).values
