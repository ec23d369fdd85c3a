"""The noisy-label confirmation's analysis: the preregistered plan, its test, Holm's correction, the
per-run measures and the summary, on stand-in records (the study itself is bench/confirmation.py)."""

import argparse

import confirmation
import numpy as np
import pytest
from confirmation import (
    cross_fitted_calibration,
    fitted_shares,
    holm,
    open_values,
    paired_test,
    preregistered,
    summarize,
)
from scipy import stats

from hf_mmr.calibration import fit_temperature, softmax
from hf_mmr.metrics import expected_calibration_error


def test_the_committed_preregistration_is_complete_and_its_seeds_are_fresh():
    plan = preregistered()
    assert open_values(plan) == []
    regime_seeds = set(range(42, 47))  # the seeds that suggested the hypotheses
    for task, spec in plan.items():
        assert len(spec["seeds"]) == 10 and len(set(spec["seeds"])) == 10, task
        assert not set(spec["seeds"]) & regime_seeds, task
        assert spec["heldout_seed"] not in spec["seeds"], task
        assert set(spec["arms"]) == {"baseline", "baseline_short", "weights", "margin"}
        assert spec["arms"]["baseline"] == {"num_train_epochs": 3.0}
    assert plan["sst2"]["arms"]["weights"]["mmr_lambda"] == 0.1
    assert plan["sst2"]["arms"]["margin"]["mmr_lambda"] == 0.01


def test_open_values_names_every_null_and_a_plan_needs_one_json_block(tmp_path):
    plan = {"t": {"arms": {"a": {"mmr_lambda": None, "num_train_epochs": 3.0}, "b": {"num_train_epochs": None}}}}
    assert open_values(plan) == ["t/a/mmr_lambda", "t/b/num_train_epochs"]
    path = tmp_path / "plan.md"
    path.write_text("no block here\n")
    with pytest.raises(SystemExit, match="exactly one"):
        preregistered(str(path))


def test_paired_test_is_scipys_paired_t_test():
    treated = [0.78, 0.79, 0.77, 0.80, 0.76, 0.79, 0.81, 0.78, 0.77, 0.80]
    control = [0.76, 0.74, 0.77, 0.78, 0.75, 0.76, 0.80, 0.79, 0.74, 0.77]
    result = paired_test(treated, control)
    assert result["p"] == pytest.approx(stats.ttest_rel(treated, control).pvalue, rel=1e-9)
    assert result["mean"] == pytest.approx(np.mean(np.subtract(treated, control)))
    assert result["seeds_better"] == 8 and result["n"] == 10
    low, high = result["ci95"]
    assert low < result["mean"] < high


def test_holm_multiplies_the_ordered_p_values_and_keeps_them_monotone():
    assert holm({"a": 0.01, "b": 0.04}) == pytest.approx({"a": 0.02, "b": 0.04})
    assert holm({"a": 0.03, "b": 0.02}) == pytest.approx({"a": 0.04, "b": 0.04})  # never below an earlier one
    assert holm({"a": 0.6, "b": 0.7}) == pytest.approx({"a": 1.0, "b": 1.0})


def test_dev_calibration_fits_each_half_on_the_other():
    rng = np.random.default_rng(1)
    calibrated = np.stack([np.zeros(400), rng.normal(0, 1.5, 400)], axis=1)
    labels = (rng.random(400) < softmax(calibrated)[:, 1]).astype(int)  # drawn from the model's own probabilities
    logits = 4 * calibrated  # the same predictions, overconfident
    result = cross_fitted_calibration(logits, labels)
    order = np.random.default_rng(0).permutation(400)
    first, second = order[:200], order[200:]
    assert result["temperatures"] == [
        round(fit_temperature(logits[first], labels[first]), 5),
        round(fit_temperature(logits[second], labels[second]), 5),
    ]
    scaled = logits.copy()
    scaled[second] /= fit_temperature(logits[first], labels[first])
    scaled[first] /= fit_temperature(logits[second], labels[second])
    assert result["ece_temperature_scaled"] == pytest.approx(expected_calibration_error(softmax(scaled), labels))
    probs = softmax(logits)
    assert result["confidence_minus_accuracy"] > 0.05  # logits x 4: confidence above accuracy
    assert result["temperatures"][0] == pytest.approx(4, rel=0.5)
    assert result["ece_temperature_scaled"] < expected_calibration_error(probs, labels)


def test_fitted_shares_count_flipped_and_clean_examples_apart():
    shares = fitted_shares(predictions=[1, 1, 1, 1, 0], labels=[1, 1, 1, 0, 0], flipped=[1, 3])
    assert shares == {"fitted_flips": 0.5, "fitted_clean": 1.0}


def _record(accuracy: float) -> dict:
    final = {"eval_accuracy": accuracy, "eval_ece": 0.1, "eval_nll": 0.5}
    measures = ("confidence_minus_accuracy", "ece_temperature_scaled", "fitted_flips", "fitted_clean")
    return {"final": final, "train_seconds": 100.0, **dict.fromkeys(measures, 0.2)}


def test_summary_confirms_only_a_gain_that_survives_holm(monkeypatch):
    """weights beats the baseline on every seed, margin only by noise: one confirmed, one not."""
    spec = preregistered()["sst2"]
    rng = np.random.default_rng(0)
    base = {seed: 0.75 + 0.01 * rng.standard_normal() for seed in spec["seeds"]}
    noise = {seed: 0.01 * rng.standard_normal() for seed in spec["seeds"]}
    gains = {"baseline": 0.0, "baseline_short": 0.005, "weights": 0.02, "margin": 0.0}

    def fake_cell(options, task, seed, arm, setting, heldout):
        assert not heldout and setting == spec["arms"][arm]
        return _record(base[seed] + gains[arm] + (noise[seed] if arm == "margin" else 0.0))

    monkeypatch.setattr(confirmation, "cell", fake_cell)
    monkeypatch.setattr(confirmation, "majority_class_accuracy", lambda options, task: 0.5)
    result = summarize(argparse.Namespace(summary_only=True), "sst2", spec)
    tests = result["tests"]
    assert tests["weights_minus_baseline"]["confirmed"] is True
    assert tests["weights_minus_baseline"]["mean"] == pytest.approx(0.02)
    assert tests["margin_minus_baseline"]["confirmed"] is False
    for name in ("weights_minus_baseline", "margin_minus_baseline"):
        assert tests[name]["p_holm"] >= tests[name]["p"]
    assert "confirmed" not in tests["baseline_short_minus_baseline"]  # secondary, no claim
    # Against the short baseline (secondary) the same test says beyond noise or not, never confirmed.
    assert tests["weights_minus_baseline_short"]["beyond_noise"] is True
    assert "confirmed" not in tests["weights_minus_baseline_short"]
    mrpc = summarize(argparse.Namespace(summary_only=True), "mrpc", {**spec})
    assert all("confirmed" not in test for test in mrpc["tests"].values())  # MRPC is secondary throughout
    assert result["arms"]["weights"]["accuracy"]["values"] == [base[s] + 0.02 for s in spec["seeds"]]
    lines = confirmation.summary_lines({"sst2": result}, None)
    assert any(
        "| sst2 | weights_minus_baseline |" in line and line.endswith("| **confirmed** (primary) |") for line in lines
    )
    assert "sst2: always answering dev's most frequent class scores 0.5000." in lines

    monkeypatch.setattr(confirmation, "cell", lambda *args, **kwargs: None)  # a run still missing
    assert summarize(argparse.Namespace(summary_only=True), "sst2", spec) is None


def test_majority_class_accuracy_reads_the_dev_labels(glue_dir):
    options = argparse.Namespace(glue_dir=glue_dir, trec_dir=None)
    assert confirmation.majority_class_accuracy(options, "mrpc") == pytest.approx(279 / 408)  # MRPC dev: 279 of 408
