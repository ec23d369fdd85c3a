"""The official GLUE metrics and calibration, computed with numpy alone, and their ``evaluate`` wrapper.

accuracy for every classification task; F1 of the positive class (id 1) for MRPC and QQP;
Matthews correlation for CoLA; Pearson and Spearman correlation for STS-B; the mean squared
error of a custom regression task (``mse``); the expected
calibration error and the negative log-likelihood of a classifier's probabilities.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .errors import MMRConfigError

METRIC_DIR = os.path.join(os.path.dirname(__file__), "glue_metric")


def accuracy(predictions: np.ndarray, references: np.ndarray) -> float:
    return float(np.mean(predictions == references))


def f1_positive(predictions: np.ndarray, references: np.ndarray) -> float:
    """F1 of class 1: 2 TP / (2 TP + FP + FN); 0 when there is no positive at all."""
    tp = np.sum((predictions == 1) & (references == 1))
    fp = np.sum((predictions == 1) & (references != 1))
    fn = np.sum((predictions != 1) & (references == 1))
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


def matthews_correlation(predictions: np.ndarray, references: np.ndarray) -> float:
    """(TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)); 0 when a margin is empty (as sklearn)."""
    p, r = predictions == 1, references == 1
    tp, tn, fp, fn = (float(np.sum(x)) for x in (p & r, ~p & ~r, p & ~r, ~p & r))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denominator) if denominator else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denominator) if denominator else 0.0


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(_average_ranks(x), _average_ranks(y))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017) of class probabilities ``probs`` (N x C).

    The confidence of an example is its largest probability; bin ``b`` holds the confidences in
    ``(b / n_bins, (b + 1) / n_bins]`` (a confidence of 0 joins the first bin), and
    ``ECE = sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|``.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.ndim != 2 or len(probs) != len(labels) or not len(labels):
        raise MMRConfigError(f"need probs of shape (N, C) and N labels, got {probs.shape} and {labels.shape}")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    gaps = np.bincount(bins, weights=correct - confidence, minlength=n_bins)
    # |sum of (correct - confidence)| over a bin = |B_b| * |accuracy(B_b) - mean confidence(B_b)|
    return float(np.abs(gaps[counts > 0]).sum() / len(labels))


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean ``-log p_{y_i}`` of class probabilities ``probs`` (N x C), floored at 1e-12 to stay finite."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    return float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)).mean())


def glue_scores(task: str | None, predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """The GLUE metrics of ``task`` (None: accuracy, for a custom classification task; ``mse``: the mean squared
    error, for a custom regression task)."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    if task == "mse":
        return {"mse": float(np.mean((predictions.astype(np.float64) - references.astype(np.float64)) ** 2))}
    if task == "stsb":
        x, y = predictions.astype(np.float64), references.astype(np.float64)
        return {"pearson": pearson(x, y), "spearmanr": spearman(x, y)}
    if task == "cola":
        return {"matthews_correlation": matthews_correlation(predictions, references)}
    scores = {"accuracy": accuracy(predictions, references)}
    if task in ("mrpc", "qqp"):
        scores["f1"] = f1_positive(predictions, references)
    return scores


def load_glue_metric(task: str | None):
    """The GLUE metric of ``task`` as an ``evaluate`` module, loaded from this package (no Hub access)."""
    import evaluate

    return evaluate.load(METRIC_DIR, task or "accuracy")


def glue_compute_metrics(task: str | None, is_regression: bool) -> Callable:
    """A ``compute_metrics`` for the Trainer: argmax (or squeeze, for regression) then the GLUE metric."""
    metric = load_glue_metric(task if task is not None or not is_regression else "mse")

    def compute_metrics(prediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted = np.squeeze(logits) if is_regression else np.argmax(logits, axis=1)
        result = metric.compute(predictions=predicted, references=prediction.label_ids)
        if len(result) > 1:
            result["combined_score"] = float(np.mean(list(result.values())))
        return result

    return compute_metrics


def main_metric(task: str | None) -> str:
    """The metric a task is ranked by: Matthews correlation for CoLA, accuracy for the other classification tasks."""
    return "matthews_correlation" if task == "cola" else "accuracy"
