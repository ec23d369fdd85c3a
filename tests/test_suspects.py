"""The suspect cutoff: confident learning's estimated number of label errors (cleanlab's own count, computed
without cleanlab) and the examples of lowest label_quality it flags."""

import numpy as np
import pytest
from cleanlab.count import compute_confident_joint, num_label_issues

from hf_mmr.suspects import confident_joint, estimated_label_errors, label_quality, normalized, suspects


def noisy_problem(rng, classes: int, n: int, noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities of a model, the true classes drawn from them, and labels with ``noise`` of them flipped."""
    probs = rng.dirichlet(np.full(classes, 0.3), n)
    truth = np.array([rng.choice(classes, p=row) for row in probs])
    labels = truth.copy()
    flipped = rng.choice(n, round(noise * n), replace=False)
    labels[flipped] = (truth[flipped] + rng.integers(1, classes, len(flipped))) % classes
    return probs, labels, flipped


@pytest.mark.parametrize("seed", range(4))
def test_the_estimate_is_cleanlabs_calibrated_count(seed):
    rng = np.random.default_rng(seed)
    for _ in range(150):
        classes, n = int(rng.integers(2, 7)), int(rng.integers(5, 300))
        probs = rng.dirichlet(np.full(classes, rng.uniform(0.1, 3)), n)
        labels = np.where(rng.random(n) < rng.uniform(0, 0.5), rng.integers(0, classes, n), probs.argmax(axis=1))
        if classes > 2 and rng.random() < 0.2:
            labels[labels == classes - 1] = 0  # a class that no example is labelled with
        if len(np.unique(labels)) < 2:  # cleanlab refuses a single class
            continue
        assert (confident_joint(labels, probs) == compute_confident_joint(labels, probs, calibrate=False)).all()
        expected = num_label_issues(labels, probs, estimation_method="off_diagonal_calibrated")
        assert estimated_label_errors(labels, probs) == expected


def test_the_estimate_follows_the_noise_rate():
    rng = np.random.default_rng(0)
    estimates = {}
    for noise in (0.0, 0.1, 0.3):
        probs, labels, _ = noisy_problem(rng, 3, 3000, noise)
        estimates[noise] = estimated_label_errors(labels, probs) / 3000
    assert estimates[0.0] < estimates[0.1] < estimates[0.3]
    assert estimates[0.3] - estimates[0.0] == pytest.approx(0.3, abs=0.08)


def test_suspects_are_the_lowest_quality_as_many_as_estimated():
    rng = np.random.default_rng(1)
    probs, labels, flipped = noisy_problem(rng, 4, 400, 0.2)
    quality = probs[np.arange(400), labels] + 0.01 * rng.standard_normal(400)  # low where the label is unlikely
    flags = suspects(quality, labels, probs)
    k = estimated_label_errors(labels, probs)
    assert flags.sum() == k > 0
    assert quality[flags].max() < quality[~flags].min()
    assert np.isin(flipped, np.flatnonzero(flags)).mean() > 0.6  # it finds flips


def test_ties_go_to_the_lower_position_and_untrained_rows_are_never_flagged():
    labels = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    probs = np.tile([[0.9, 0.1], [0.1, 0.9]], (4, 1))[[0, 0, 1, 1, 1, 0, 0, 1]]  # rows 4 and 5 disagree
    assert estimated_label_errors(labels, probs) == 2
    assert np.flatnonzero(suspects(np.zeros(8), labels, probs)).tolist() == [0, 1]  # all tied: the first two
    quality = np.array([0.5, 0.5, 0.5, 0.5, np.nan, -1.0, 0.5, 0.5])
    flags = suspects(quality, labels, probs)
    assert not flags[4]  # never trained on: no score, left out of the estimate too
    assert flags.sum() == estimated_label_errors(np.delete(labels, 4), np.delete(probs, 4, axis=0))
    assert flags[5]
    assert not suspects(np.full(3, np.nan), labels[:3], probs[:3]).any()


def test_label_quality_is_aum_and_rows_are_normalized():
    aum = np.array([0.3, -0.2, np.nan])
    np.testing.assert_array_equal(label_quality(aum), aum)
    rows = normalized(np.array([[0.2, 0.3], [1.0, 3.0]], dtype=np.float32))
    assert rows.dtype == np.float64 and np.allclose(rows.sum(axis=1), 1.0) and rows[1, 1] == 0.75
