"""The benchmarks' own arithmetic: data splits, confidence intervals, grid entries and time-to-target."""

import argparse
import math

import pytest
from common import bounded, glue_splits, paired_difference, run_once
from conftest import GLUE_DIR
from glue_table import candidate_arguments
from time_to_accuracy import summarize


def test_paired_difference_is_the_t_interval_of_the_seedwise_differences():
    result = paired_difference([0.80, 0.83, 0.85], [0.79, 0.81, 0.82])  # differences 0.01, 0.02, 0.03
    assert result["mean"] == pytest.approx(0.02)
    half = 4.303 * 0.01 / math.sqrt(3)  # t(0.975, 2 df) * std / sqrt(n)
    assert result["ci95"] == pytest.approx([0.02 - half, 0.02 + half])
    assert math.isnan(paired_difference([0.8], [0.7])["ci95"][0])


def test_grid_entries_are_a_constant_lambda_or_the_papers_ramp():
    assert candidate_arguments("0.01") == {"mmr_lambda": 0.01}
    assert candidate_arguments("0.1:ramp") == {
        "mmr_lambda": 0.1,
        "mmr_lambda_start": 1e-4,
        "mmr_lambda_warmup_ratio": 1.0,
    }
    for bad in ("0.1:cosine", "abc", "-0.1"):
        with pytest.raises(SystemExit, match="LAMBDA or LAMBDA:ramp"):
            candidate_arguments(bad)


def test_bounded_numbers_name_the_bound():
    assert bounded(int, 0)("3") == 3 and bounded(float, 0, inclusive=True)("0") == 0.0
    assert bounded(float, 0, below=1)("0.2") == 0.2
    for parse, text, message in [
        (bounded(int, 0), "0", "0 must be above 0"),
        (bounded(float, 0, inclusive=True), "-1", "-1 must be at least 0"),
        (bounded(float, 0, below=1), "1", "1 must be above 0 and below 1"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)
    with pytest.raises(ValueError):
        bounded(int, 0)("x")  # argparse reports it as "invalid int value"
    assert bounded(int, 0).__name__ == "int"


def test_subset_and_heldout_slice_are_fixed_and_disjoint():
    train, heldout = glue_splits(GLUE_DIR, "sst2", train_size=500, heldout_fraction=0.2)
    again, _ = glue_splits(GLUE_DIR, "sst2", train_size=500, heldout_fraction=0.2)
    assert (len(train), len(heldout)) == (400, 100)
    assert train["sentence"] == again["sentence"]  # the same examples whatever the caller's seed
    assert not set(train["sentence"]) & set(heldout["sentence"])
    full_train, dev = glue_splits(GLUE_DIR, "sst2", train_size=500)
    assert len(full_train) == 500 and len(dev) == 872  # the whole dev set


def test_a_stored_run_is_reused_only_with_the_settings_it_was_made_with(tmp_path):
    path = str(tmp_path / "runs" / "uniform_seed1.json")
    made = []

    def make_record():
        made.append(1)
        return {"final": {"eval_accuracy": 0.5}}

    settings = {"seed": 1, "learning_rate": 1e-4, "mmr_lambda": 0.0}
    first = run_once(path, settings, make_record)
    assert run_once(path, dict(settings), make_record) == first and len(made) == 1
    with pytest.raises(SystemExit, match=r"other settings \(mmr_lambda\): pass another --out"):
        run_once(path, {**settings, "mmr_lambda": 0.01}, make_record)
    with pytest.raises(SystemExit, match=r"other settings \(max_steps\)"):
        run_once(path, {**settings, "max_steps": 10}, make_record)
    assert len(made) == 1  # the stored run was neither remade nor overwritten


def curve(points):
    return [{"step": s, "train_seconds": t, "eval_accuracy": a} for s, t, a in points]


def test_time_to_target_compares_first_arrivals_with_uniforms_own():
    runs = {
        "uniform": {1: {"final": {"eval_accuracy": 0.8}, "curve": curve([(10, 10, 0.7), (20, 20, 0.8)])}},
        "cached": {1: {"final": {"eval_accuracy": 0.81}, "curve": curve([(10, 12, 0.8), (20, 24, 0.81)])}},
        "select": {1: {"final": {"eval_accuracy": 0.75}, "curve": curve([(10, 30, 0.7), (15, 45, 0.75)])}},
    }
    for by_seed in runs.values():
        by_seed[1].update(train_seconds=by_seed[1]["curve"][-1]["train_seconds"], steps=by_seed[1]["curve"][-1]["step"])
    result = summarize(runs, [1])
    assert result["uniform"]["median_steps_ratio"] == 1.0
    assert result["cached"]["median_steps_ratio"] == 0.5
    assert result["cached"]["median_seconds_ratio"] == 0.6
    assert result["cached"]["seconds_per_step_ratio"] == pytest.approx(1.2)
    assert result["select"]["reached"] == "0/1" and result["select"]["median_steps_ratio"] is None
    assert result["select"]["seconds_per_step_ratio"] == pytest.approx(3.0)
