"""Which training examples a run flags as likely label errors: a ranking and a cutoff with nothing to tune.

* ``label_quality`` (lower = likelier a label error) is ``aum``, the mean signed geometric margin of the
  given label over training. It was chosen among ``aum``, ``aum`` without the first epoch and the mean of
  the ranks of ``aum`` and the loss, by the mean AUPRC against flipped labels on held-out settings
  (``bench/label_errors.py``, uniform 10 % noise, seeds 50 and 51, SST-2 and TREC-6).
* ``suspect`` flags the ``k`` examples with the lowest ``label_quality``, ``k`` the number of label errors
  that confident learning (Northcutt et al. 2021) estimates from the mean probability vectors:
  ``k = n - trace(C~)`` with ``C~`` the confident joint calibrated to the given labels' counts, so the
  cutoff follows the data's noise rate. It is cleanlab's
  ``cleanlab.count.num_label_issues(labels, probs, estimation_method="off_diagonal_calibrated")``, computed
  here so that training does not need cleanlab (a test holds the two equal). Chosen over ``aum < 0`` and
  over cleanlab's ``find_label_issues`` by the mean F1 on the same held-out settings.

The confident joint ``C`` (rows: given label, columns: guessed true label): a class ``j``'s threshold
``t_j`` is the mean ``p_j`` of the examples labelled ``j``; an example is counted at its given label and
the class it is confidently in (``p_j >= t_j``; of several, the likeliest), never when it is in none.
Pure numpy: arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

# cleanlab's constants: the lowest class threshold, the tolerance of ``p_j >= t_j``, and a class that no
# example is labelled with gets a threshold no probability reaches.
_LOWEST_THRESHOLD = 2e-6
_TOLERANCE = 1e-6
_ABSENT = 2.0


def normalized(probs: np.ndarray) -> np.ndarray:
    """Probability rows in float64 that sum to 1 (stored float32 rows are off 1 by their rounding)."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs / probs.sum(axis=1, keepdims=True)


def label_quality(aum: np.ndarray) -> np.ndarray:
    """The ranking of likely label errors, lower = likelier: ``aum`` itself (see the module docstring)."""
    return np.asarray(aum, dtype=np.float64)


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``C[i, j]``: the examples labelled ``i`` that are confidently in class ``j`` (diagonal at least 1)."""
    classes = probs.shape[1]
    thresholds = np.array(
        [probs[labels == k, k].mean() if np.any(labels == k) else _ABSENT for k in range(classes)]
    ).clip(min=_LOWEST_THRESHOLD)
    confident = probs >= thresholds - _TOLERANCE
    count = confident.sum(axis=1)
    guess = np.where(count > 1, probs.argmax(axis=1), confident.argmax(axis=1))
    counted = count > 0
    by_guess = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(by_guess, (guess[counted], labels[counted]), 1)
    joint = by_guess.T  # cleanlab's memory layout: its float sums, and so its roundings, are the same
    np.fill_diagonal(joint, joint.diagonal().clip(min=1))
    return joint


def _round_preserving_sum(values: np.ndarray) -> np.ndarray:
    """Round to integers whose sum is the rounded sum: the values furthest from their rounding move first."""
    ints = values.round()
    missing = int(round(values.sum()) - ints.sum())
    if missing:
        step = 1 if missing > 0 else -1
        ints[np.argsort(values - ints)[::-step][: abs(missing)]] += step
    return ints


def estimated_label_errors(labels: np.ndarray, probs: np.ndarray) -> int:
    """Confident learning's estimate of how many of ``labels`` are wrong, from the rows of ``probs``."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if not len(labels):
        return 0
    joint = confident_joint(labels, probs)
    counts = np.bincount(labels, minlength=probs.shape[1])
    # Rows scaled to the given labels' counts; written as cleanlab writes it, so that every rounding agrees.
    calibrated = (joint.T / joint.sum(axis=1) * counts).T
    calibrated = calibrated / calibrated.sum() * counts.sum()
    rounded = np.stack([_round_preserving_sum(row) for row in calibrated])
    return int(len(labels) - np.trace(rounded))


def suspects(quality: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The ``estimated_label_errors`` examples with the lowest ``quality`` (ties: the lower position), as a mask.

    ``probs``: the rows of ``normalized``. Rows whose ``quality`` is NaN (never trained on) are never flagged
    and are left out of the estimate.
    """
    quality = np.asarray(quality, dtype=np.float64)
    known = np.flatnonzero(~np.isnan(quality))
    count = estimated_label_errors(np.asarray(labels)[known], np.asarray(probs)[known])
    flagged = np.zeros(len(quality), dtype=bool)
    flagged[known[np.argsort(quality[known], kind="stable")[:count]]] = True
    return flagged
