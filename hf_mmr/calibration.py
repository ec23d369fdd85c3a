"""Temperature scaling (Guo et al. 2017): one scalar ``T > 0`` dividing the logits, fitted on held-out data.

The fitted ``T`` minimizes the mean negative log-likelihood of held-out logits ``z`` and labels ``y``:

    NLL(T) = mean_i [ logsumexp_j(z_ij / T) - z_{i,y_i} / T ]

As a function of ``beta = 1/T`` it is convex: its derivative ``mean_i (E_{p_beta}[z_i] - z_{i,y_i})``
grows with ``beta`` (its own derivative is a variance). So the minimizer is the root of that
derivative, found by bisection on ``log beta`` in float64: deterministic and exact to rounding.
Where the held-out set is separated perfectly the NLL keeps falling as ``T -> 0``, so ``T`` is
bounded to ``TEMPERATURE_RANGE``.

Dividing by ``T`` never changes a prediction (the argmax of ``z/T`` is the argmax of ``z``), and since
``z / T = (W / T) h + b / T`` it folds into the final linear layer: ``fold_temperature`` divides the
head's weight and bias, so the saved model is calibrated for every consumer.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .errors import MMRConfigError

# Fewer held-out examples than this fit T too loosely to be worth folding into a model.
MIN_CALIBRATION_EXAMPLES = 50
# T is searched in [0.01, 100]: beyond it the held-out set is separated (or uninformative) and the bound binds.
TEMPERATURE_RANGE = (1e-2, 1e2)
# Halvings of the log-beta interval: 2 * log(1e4) / 2**80 is far below float64's resolution of T.
_BISECTIONS = 80


def _as_arrays(logits: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if z.ndim != 2 or z.shape[1] < 2 or len(z) != len(y) or not len(y):
        raise MMRConfigError(f"temperature scaling needs logits of shape (N, C >= 2) and N labels, got {z.shape}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise MMRConfigError(f"temperature scaling got labels outside 0..{z.shape[1] - 1}")
    return z, y


def temperature_nll(logits: object, labels: object, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``, in float64."""
    z, y = _as_arrays(logits, labels)
    scaled = z / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled - top).sum(axis=1)) + top[:, 0]
    return float((log_norm - scaled[np.arange(len(y)), y]).mean())


def _slope(z: np.ndarray, y: np.ndarray, beta: float) -> float:
    """d NLL / d beta at ``beta = 1/T``: the mean over examples of E_p[z] - z_y."""
    p = softmax(beta * z)
    return float(((p * z).sum(axis=1) - z[np.arange(len(y)), y]).mean())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, shifted by each row's maximum to stay finite."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def fit_temperature(logits: object, labels: object) -> float:
    """The ``T`` in ``TEMPERATURE_RANGE`` that minimizes ``temperature_nll(logits, labels, T)``."""
    z, y = _as_arrays(logits, labels)
    low, high = math.log(1 / TEMPERATURE_RANGE[1]), math.log(1 / TEMPERATURE_RANGE[0])  # log beta
    if _slope(z, y, math.exp(low)) >= 0:
        return TEMPERATURE_RANGE[1]
    if _slope(z, y, math.exp(high)) <= 0:
        return TEMPERATURE_RANGE[0]
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        if _slope(z, y, math.exp(middle)) < 0:
            low = middle
        else:
            high = middle
    return float(1 / math.exp((low + high) / 2))


def fold_temperature(head: nn.Linear, temperature: float) -> None:
    """Divide ``head``'s weight and bias by ``temperature`` in place, so that its logits become ``z / T``."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise MMRConfigError(f"a temperature must be a finite number above 0, got {temperature}")
    with torch.no_grad():
        head.weight.div_(temperature)
        if head.bias is not None:
            head.bias.div_(temperature)


def stratified_split(labels: object, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out): ``round(fraction * n_c)`` of each class's positions held out, drawn with ``seed``.

    Both lists are in the original order, so the kept examples stay in file order.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        held.extend(rng.permutation(members)[: int(np.floor(fraction * len(members) + 0.5))].tolist())
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


def check_calibration_labels(labels: object, num_labels: int, source: str) -> None:
    """One line naming ``source`` unless it has ``MIN_CALIBRATION_EXAMPLES`` examples and every class."""
    labels = np.asarray(labels)
    if len(labels) < MIN_CALIBRATION_EXAMPLES:
        raise MMRConfigError(
            f"{source} has {len(labels)} examples; fitting a temperature needs at least {MIN_CALIBRATION_EXAMPLES}: "
            "raise --calibration_split or pass a larger calibration_dataset"
        )
    missing = sorted(set(range(num_labels)) - set(labels.astype(np.int64).tolist()))
    if missing:
        raise MMRConfigError(
            f"{source} has no example of class {missing[0]}; fitting a temperature needs every class: "
            "raise --calibration_split or pass a calibration_dataset with every class"
        )
