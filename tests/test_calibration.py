"""Expected calibration error and NLL: the formula against a loop over bins, and in every evaluation."""

import numpy as np
import pytest
import torch
from conftest import make_trainer, synthetic_dataset

from hf_mmr import expected_calibration_error
from hf_mmr.metrics import negative_log_likelihood


def ece_by_loop(probs, labels, n_bins=15):
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    total = 0.0
    for b in range(n_bins):
        low, high = b / n_bins, (b + 1) / n_bins
        members = [(c > low or (b == 0 and c == 0)) and c <= high for c in confidence]
        members = np.array(members)
        if members.any():
            accuracy = np.mean(predicted[members] == labels[members])
            total += members.sum() / len(labels) * abs(accuracy - confidence[members].mean())
    return total


@pytest.mark.parametrize("seed,classes,n_bins", [(0, 2, 15), (1, 6, 15), (2, 3, 10), (3, 4, 1)])
def test_ece_equals_the_loop_over_bins(seed, classes, n_bins):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3, size=(300, classes))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, classes, size=300)
    assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(ece_by_loop(probs, labels, n_bins))


def test_ece_of_one_hot_predictions():
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(probs, np.array([0, 1, 2, 1])) == 0.0
    assert expected_calibration_error(probs, np.array([1, 2, 0, 0])) == 1.0


def test_nll_is_the_mean_negative_log_probability_of_the_label():
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [1.0, 0.0]])
    assert negative_log_likelihood(probs, np.array([0, 0, 0])) == pytest.approx(
        -(np.log(0.7) + np.log(0.2) + np.log(1.0)) / 3
    )


def test_every_evaluation_reports_ece_and_nll_from_its_logits(tmp_path):
    trainer = make_trainer(tmp_path, per_device_train_batch_size=8, max_steps=3, per_device_eval_batch_size=5)
    trainer.train()
    eval_set = synthetic_dataset(n=13, seed=4)
    metrics = trainer.evaluate(eval_dataset=eval_set)
    output = trainer.predict(eval_set)
    probs = torch.tensor(output.predictions).softmax(dim=1).double().numpy()
    labels = np.array([int(e["labels"]) for e in eval_set])
    assert metrics["eval_ece"] == pytest.approx(expected_calibration_error(probs, labels), abs=1e-6)
    assert metrics["eval_nll"] == pytest.approx(negative_log_likelihood(probs, labels), rel=1e-5)
    assert output.metrics["test_ece"] == pytest.approx(metrics["eval_ece"], abs=1e-6)
    assert trainer.state.log_history[-1]["eval_ece"] == metrics["eval_ece"]  # reaches every logger


def test_no_ece_without_class_labels(tmp_path):
    trainer = make_trainer(tmp_path, per_device_train_batch_size=8, max_steps=1)
    trainer.train()
    unlabelled = [{k: v for k, v in e.items() if k != "labels"} for e in synthetic_dataset(n=6, seed=4)]
    metrics = trainer.predict(unlabelled).metrics
    assert "test_ece" not in metrics and "test_mms_median" in metrics
