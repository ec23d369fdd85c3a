"""The benchmarks' own arithmetic: data splits, confidence intervals, grid entries and time-to-target."""

import argparse
import math
import os
import sys

import form_study
import pytest
import time_to_accuracy
from common import bounded, paired_difference, run_once, task_splits
from conftest import GLUE_DIR
from form_study import pick, setting_name
from time_to_accuracy import CACHED_GRID, cached_name, choose_cached, summarize


def test_paired_difference_is_the_t_interval_of_the_seedwise_differences():
    result = paired_difference([0.80, 0.83, 0.85], [0.79, 0.81, 0.82])  # differences 0.01, 0.02, 0.03
    assert result["mean"] == pytest.approx(0.02)
    half = 4.303 * 0.01 / math.sqrt(3)  # t(0.975, 2 df) * std / sqrt(n)
    assert result["ci95"] == pytest.approx([0.02 - half, 0.02 + half])
    assert math.isnan(paired_difference([0.8], [0.7])["ci95"][0])


def test_settings_are_named_and_picked_by_heldout_score_then_simplicity():
    assert setting_name({"mmr_lambda": 0.0}) == "baseline"
    assert setting_name({"mmr_form": "margin", "mmr_lambda": 0.003}) == "margin_0.003"
    assert setting_name({"mmr_form": "weights", "mmr_lambda": 0.01, "mmr_detach_radius": True}) == "weights_0.01_detach"
    assert setting_name({"mmr_form": "margin", "mmr_lambda": 0.1, "mmr_top_k": 2}) == "margin_0.1_k2"
    grid = form_study.grid("weights")
    scores = {setting_name(a): 0.8 for a in grid}
    assert pick(grid, scores) == {"mmr_form": "weights", "mmr_lambda": 0.001, "mmr_detach_radius": False}
    scores["weights_0.01_detach"] = 0.81
    assert setting_name(pick(grid, scores)) == "weights_0.01_detach"


def test_study_runs_every_cell_once_chooses_on_heldout_and_summarizes(tmp_path, monkeypatch):
    """The whole study's bookkeeping on a stand-in for fine-tuning: which runs, on which split, which pick."""
    calls = []

    def fake_fine_tune_once(path, task, train, evaluation, training, **labels):
        calls.append((os.path.basename(path), labels["evaluated_on"], training["seed"]))
        # Held-out: margin 0.03 and its top_k 2 variant are best; dev: margin beats the baseline on every seed.
        name = os.path.basename(path)
        accuracy = 0.70 + 0.05 * ("margin_0.03" in name) + 0.01 * ("margin_0.03_k2" in name)
        if labels["evaluated_on"] == "dev":
            accuracy = 0.80 + 0.01 * name.startswith("margin") + 0.001 * training["seed"] % 3
        final = {"eval_accuracy": accuracy, "eval_relative_margin_median": 0.5, "eval_mms_median": 1.0}
        return {"final": final, "wall_seconds": 10.0}

    monkeypatch.setattr(form_study, "fine_tune_once", fake_fine_tune_once)
    monkeypatch.setattr(form_study, "task_splits", lambda *args: ([0] * 10, [0] * 4))
    options = argparse.Namespace(
        out=str(tmp_path),
        seeds=[42, 43],
        heldout_fraction=0.2,
        batch_size=32,
        learning_rate=1e-4,
        glue_dir="",
        trec_dir="",
    )
    result = form_study.Study(options, "trec", train=True).run()
    heldout = [name for name, split, _ in calls if split != "dev"]
    assert heldout[0] == "grid_baseline_seed42.json" and len(heldout) == 1 + 4 + 1 + 4 + 1  # + top_k 2 per form
    assert all(seed == 42 for name, split, seed in calls if split != "dev")
    assert result["arms"]["margin"]["setting"] == "margin_0.03_k2"
    assert result["arms"]["weights"]["setting"] == "weights_0.001"  # all tied: the smallest, simplest
    assert [name for name, split, _ in calls if split == "dev"][:3] == [
        "baseline_seed42.json",
        "margin_0.03_k2_seed42.json",
        "weights_0.001_seed42.json",
    ]
    assert result["arms"]["margin"]["seeds_improved"] == 2
    assert result["arms"]["margin"]["difference"]["mean"] == pytest.approx(0.01)
    assert result["arms"]["weights"]["seeds_improved"] == 0
    # A binary task tries no top_k 2, and a lookup-only pass trains nothing and reports a missing task as None.
    calls.clear()
    form_study.Study(options, "mrpc", train=True).run()
    assert not any("k2" in name for name, _, _ in calls)
    assert form_study.Study(options, "rte", train=False).run() is None


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
    train, heldout = task_splits("sst2", train_size=500, heldout_fraction=0.2, glue_dir=GLUE_DIR)
    again, _ = task_splits("sst2", train_size=500, heldout_fraction=0.2, glue_dir=GLUE_DIR)
    assert (len(train), len(heldout)) == (400, 100)
    assert train["sentence"] == again["sentence"]  # the same examples whatever the caller's seed
    assert not set(train["sentence"]) & set(heldout["sentence"])
    full_train, dev = task_splits("sst2", train_size=500, glue_dir=GLUE_DIR)
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
    assert result["cached"]["total_seconds_ratio"]["median"] == pytest.approx(1.2)
    assert result["cached"]["difference"]["mean"] == pytest.approx(0.01)
    assert "minus_uniform_short" not in result["cached"]


def test_cached_is_compared_with_the_uniform_run_of_its_own_length_seed_by_seed():
    finals = {"uniform": (0.80, 0.82), "cached": (0.78, 0.81), "uniform_short": (0.79, 0.79)}
    runs = {
        arm: {
            seed: {
                "final": {"eval_accuracy": value},
                "curve": curve([(10, 10, value)]),
                "steps": 10,
                "train_seconds": 10,
            }
            for seed, value in zip((1, 2), values)
        }
        for arm, values in finals.items()
    }
    result = summarize(runs, [1, 2])
    versus = result["cached"]["minus_uniform_short"]  # -0.01 and +0.02
    assert versus["mean"] == pytest.approx(0.005) and versus["n"] == 2
    summary = {"train_examples": 8, "uniform_steps": 10, "eval_every": 5, "cached_setting": {}, "arms": result}
    text = "\n".join(time_to_accuracy.table("sst2", summary, [1, 2]))
    assert "Cached − uniform_short, seed by seed (same steps, examples chosen by MMS or uniformly): +0.0050" in text


def test_cached_setting_is_the_fastest_one_that_matches_uniform_on_heldout():
    uniform = {"final": {"eval_accuracy": 0.90}, "steps": 300}
    grid = {cached_name(s): {"final": {"eval_accuracy": 0.85}, "steps": 150} for s in CACHED_GRID}
    slow, fast = cached_name(CACHED_GRID[-1]), cached_name(CACHED_GRID[1])
    grid[slow] = {"final": {"eval_accuracy": 0.899}, "steps": 250}
    grid[fast] = {"final": {"eval_accuracy": 0.898}, "steps": 200}
    assert choose_cached(grid, uniform) == CACHED_GRID[1]  # both within 0.3 points: the fewer steps
    grid[fast]["final"]["eval_accuracy"] = 0.89
    assert choose_cached(grid, uniform) == CACHED_GRID[-1]
    grid[slow]["final"]["eval_accuracy"] = 0.80
    best = choose_cached(grid, uniform)  # none matches: the most accurate
    assert grid[cached_name(best)]["final"]["eval_accuracy"] == 0.89


def test_selection_study_runs_heldout_grid_then_interleaved_arms(tmp_path, monkeypatch):
    calls = []

    def fake(path, task, train, evaluation, training, **labels):
        calls.append((os.path.basename(path), training))
        steps = training.get("max_steps", 7 if training["mms_selection"] == "cached" else 10)
        curve = [{"step": steps, "train_seconds": float(steps), "eval_accuracy": 0.8}]
        return {"final": curve[-1], "curve": curve, "steps": steps, "train_seconds": float(steps)}

    monkeypatch.setattr(time_to_accuracy, "fine_tune_once", fake)
    monkeypatch.setattr(time_to_accuracy, "task_splits", lambda *args, **kwargs: ([0] * 64, [0] * 8))
    options = argparse.Namespace(
        out=str(tmp_path),
        seeds=[42, 43],
        select_seeds=[42],
        select_tasks=["sst2"],
        heldout_fraction=0.2,
        batch_size=32,
        learning_rate=1e-4,
        glue_dir="",
        evaluations=3,
        arms=["select_r10", "uniform_short", "select_r2", "cached"],  # uniform is implied, the order canonical
    )
    summary = time_to_accuracy.run_task(options, "sst2")
    names = [name for name, _ in calls]
    assert names[0] == "heldout_uniform_seed42.json" and len(names) == 1 + len(CACHED_GRID) + 5 + 3
    assert all(training["eval_steps"] == 10**9 for name, training in calls if name.startswith("heldout"))
    chosen = cached_name(summary["cached_setting"])
    assert names[1 + len(CACHED_GRID) :] == [
        "uniform_seed42.json",
        f"{chosen}_seed42.json",
        "uniform_short_seed42.json",
        "select_r2_seed42.json",
        "select_r10_seed42.json",
        "uniform_seed43.json",
        f"{chosen}_seed43.json",
        "uniform_short_seed43.json",
    ]
    select = dict(calls)["select_r10_seed42.json"]
    assert select["max_steps"] == 6 and select["mms_pool_factor"] == 10 and select["eval_steps"] == 2
    short = dict(calls)["uniform_short_seed43.json"]  # cached's steps, uniform sampling
    assert short["max_steps"] == 7 and short["mms_selection"] == "none" and "num_train_epochs" not in short
    assert list(summary["arms"]) == ["uniform", "cached", "uniform_short", "select_r2", "select_r10"]
    assert summary["arms"]["uniform_short"]["total_steps_ratio"] == 0.7


def test_the_short_uniform_control_needs_the_cached_arm(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        sys, "argv", ["time_to_accuracy.py", "--out", str(tmp_path), "--arms", "uniform", "uniform_short"]
    )
    with pytest.raises(SystemExit) as stop:
        time_to_accuracy.main()
    assert stop.value.code == 2 and "--arms uniform_short needs cached too" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_flip_labels_flips_exactly_the_requested_share_to_other_classes():
    from common import flip_labels, flipped_indices
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["a", "b", "c"])})
    data = Dataset.from_dict({"text": [str(i) for i in range(200)], "label": [i % 3 for i in range(200)]}, features)
    noisy = flip_labels(data, 0.3, 3, seed=0)
    flipped = flipped_indices(noisy)
    assert len(flipped) == 60 and noisy.features["label"] == features["label"]
    assert all(noisy["label"][i] != noisy["clean_label"][i] for i in flipped)
    assert noisy["clean_label"] == data["label"]
    assert flipped_indices(flip_labels(data, 0.3, 3, seed=0)) == flipped  # seeded
    assert sorted({noisy["label"][i] for i in flipped}) == [0, 1, 2]  # every other class is drawn


def test_detection_scores_against_the_true_flips():
    import numpy as np
    from label_errors import average_precision, detection, precision_at

    positives, scores = np.array([True, False, True, False]), np.array([0.9, 0.8, 0.7, 0.1])
    assert average_precision(scores, positives) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert precision_at(scores, positives, 2) == 0.5
    table = {
        "aum": [-1.0, 0.5, -0.2, 1.0, None],  # the last example was never trained on
        "logit_aum": [-2.0, 1.0, -0.1, 2.0, None],
        "mean_loss": [2.0, 0.1, 0.9, 0.05, None],
        "confidence": [0.1, 0.9, 0.4, 0.95, None],
    }
    result = detection(table, flipped=[0, 2])
    for name in ("aum", "logit_aum", "loss", "confidence"):
        assert result[f"auprc_{name}"] == 1.0 and result[f"precision_at_k_{name}"] == 1.0
    assert result["rule_suspects"] == 2 and result["rule_precision"] == 1.0 and result["rule_recall"] == 1.0


def test_regime_grid_extends_past_an_edge_choice_and_stops_inside(monkeypatch):
    import regime_study

    held_out = {0.001: 0.80, 0.01: 0.79, 0.1: 0.70, 0.0001: 0.82, 0.00001: 0.81}
    asked = []

    def fake_run(options, task, noise, seed, variant, arm, heldout_fraction, out, train_size, epochs):
        value = arm.get("mmr_lambda", arm.get("label_smoothing_factor"))
        asked.append(value)
        return {"final": {"eval_accuracy": held_out.get(value, 0.5)}}

    monkeypatch.setattr(regime_study, "run", fake_run)
    options = argparse.Namespace(seeds=[42], out="", label_errors_out="")
    study = regime_study.Study(options, "sst2", "small")
    best, _ = study.choose("weights")
    assert best == 0.0001 and asked == [0.001, 0.01, 0.1, 0.0001, 0.00001]  # one step past the edge, then inside
    assert regime_study.extend("label_smoothing", [0.05, 0.1, 0.2], "high") == 0.4
    assert regime_study.extend("label_smoothing", [0.2, 0.4, 0.8], "high") is None  # a factor must stay below 1


def test_regime_summary_pairs_memorization_by_seed_and_counts_lower_as_better():
    import regime_study

    def record(seed, accuracy, memorized):
        final = {"eval_accuracy": accuracy, "eval_ece": 0.1, "eval_nll": 0.5}
        return {"settings": {"seed": seed}, "final": final, "probe_accuracy": memorized, "wall_seconds": 1.0}

    records = {
        "baseline": [record(42, 0.80, 0.50), record(43, 0.70, 0.60)],
        "label_smoothing": [record(42, 0.80, 0.50), record(43, 0.70, 0.60)],
        "weights": [record(42, 0.81, 0.30), record(43, 0.72, 0.55)],
    }
    result = regime_study.summarize({"baseline": None, "label_smoothing": 0.1, "weights": 0.1}, records, {})
    memorized = result["arms"]["weights"]["memorized_minus_baseline"]
    assert memorized["mean"] == pytest.approx(-0.125) and memorized["seeds_better"] == 2 and memorized["n"] == 2
    assert result["arms"]["weights"]["accuracy_minus_baseline"]["seeds_better"] == 2
    line = regime_study.summary_lines({"sst2/noisy": result})[4]
    assert line.endswith("| 0.425 | -12.50 [-107.80, +82.80] (2/2) |")  # t(1) = 12.71
    del records["weights"][0]["probe_accuracy"]  # the small condition has no flipped labels to memorize
    small = regime_study.summarize({"baseline": None, "label_smoothing": 0.1, "weights": 0.1}, records, {})
    assert "memorized" not in small["arms"]["weights"] and "memorized_minus_baseline" not in small["arms"]["weights"]


def test_label_error_summary_pairs_the_payoff_by_seed(monkeypatch):
    import label_errors

    final = {  # (variant, seed) -> accuracy, ECE, NLL of the run
        ("noisy", 42): (0.90, 0.20, 0.40),
        ("noisy", 43): (0.92, 0.22, 0.42),
        ("cleaned", 42): (0.91, 0.05, 0.30),
        ("cleaned", 43): (0.94, 0.03, 0.28),
        ("oracle", 42): (0.93, 0.02, 0.25),
        ("oracle", 43): (0.93, 0.02, 0.27),
    }

    def fake_run(options, task, noise, seed, variant="noisy"):
        if noise != label_errors.PAYOFF_NOISE and variant == "noisy":
            return None  # only the payoff level was run
        accuracy, ece, nll = final[variant, seed]
        record = {"final": {"eval_accuracy": accuracy, "eval_ece": ece, "eval_nll": nll}, "removed": [1] * 7}
        detection = {"auprc_aum": 0.9, "rule_precision": 0.8, "rule_recall": 0.7}
        return {**record, "settings": {"seed": seed}, "flipped": [1, 2], "detection": detection, "probe_accuracy": 0.1}

    monkeypatch.setattr(label_errors, "run", fake_run)
    options = argparse.Namespace(seeds=[42, 43])
    payoff = label_errors.summarize(options, "trec")["payoff"]
    assert payoff["dev_accuracy"]["cleaned"] == [0.91, 0.94]
    assert payoff["cleaned_minus_noisy"]["mean"] == pytest.approx(0.015) and payoff["cleaned_minus_noisy"]["n"] == 2
    assert payoff["ece_cleaned_minus_noisy"]["mean"] == pytest.approx(-0.17)
    assert payoff["nll_oracle_minus_noisy"]["mean"] == pytest.approx(-0.15)
    assert payoff["ece_oracle_minus_cleaned"]["mean"] == pytest.approx(-0.02)


def test_confusable_flips_go_to_the_likeliest_other_class():
    import numpy as np
    from label_errors import confusable_rows

    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.3, 0.1, 0.6], [0.1, 0.5, 0.4], [0.34, 0.33, 0.33]])
    labels = np.array([0, 1, 2, 1, 0])
    rows, new = confusable_rows(probs, labels, 2)
    # The likeliest other class: 0.05, 0.2, 0.3, 0.4, 0.33 -> rows 3 (to class 2) and 4 (to class 1).
    assert rows.tolist() == [3, 4] and new.tolist() == [2, 1]
    assert all(new != labels[rows])


def test_folds_are_disjoint_cover_every_row_and_keep_the_classes_balanced():
    import numpy as np
    from label_errors import stratified_folds

    labels = np.array([0] * 50 + [1] * 25 + [2] * 10)
    folds = stratified_folds(labels, 5, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(85))
    for fold in folds:
        assert np.bincount(labels[fold], minlength=3).tolist() == [10, 5, 2]
    assert [f.tolist() for f in stratified_folds(labels, 5, seed=3)] == [f.tolist() for f in folds]


def synthetic_run(n=200, flips=40, seed=0):
    """A noisy run's record whose scores separate most flips, with cleanlab-ready probabilities."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    flipped = sorted(rng.choice(n, size=flips, replace=False).tolist())
    is_flip = np.zeros(n, dtype=bool)
    is_flip[flipped] = True
    aum = np.where(is_flip, rng.normal(-0.5, 0.6, n), rng.normal(1.0, 0.6, n))
    p_given = 1 / (1 + np.exp(-3 * aum))
    probs = np.where(labels[:, None] == np.arange(2), p_given[:, None], 1 - p_given[:, None])
    epochs = {f"aum_epoch_{e}": (aum + rng.normal(0, 0.3, n)).tolist() for e in (1, 2, 3)}
    margins = {"aum": aum.tolist(), "logit_aum": (2 * aum).tolist(), "mean_loss": (-np.log(p_given)).tolist()}
    margins.update(confidence=p_given.tolist(), **epochs)
    record = {"train_margins": margins, "train_probs": probs.tolist(), "labels": labels.tolist(), "flipped": flipped}
    return record, labels, probs


def test_rankings_cutoffs_and_their_scores():
    import numpy as np
    from label_errors import cutoffs, rankings, scored

    record, labels, probs = synthetic_run()
    ranked = rankings(record, labels, cv_probs=probs)
    assert set(ranked) >= {"aum", "aum_after_epoch_1", "aum_loss_ranks", "cleanlab_one_run", "cleanlab_cv"}
    epochs = np.array([record["train_margins"][f"aum_epoch_{e}"] for e in (2, 3)])
    np.testing.assert_allclose(ranked["aum_after_epoch_1"], -epochs.mean(axis=0))
    flagged = cutoffs(record, labels, ranked["aum"], cv_probs=probs)
    assert flagged["top_k_label_quality"].sum() == flagged["cleanlab_one_run"].sum()
    np.testing.assert_array_equal(flagged["aum_negative"], np.array(record["train_margins"]["aum"]) < 0)
    result = scored(record["flipped"], ranked, flagged)
    positives = np.isin(np.arange(200), record["flipped"])
    mask = flagged["aum_negative"]
    hits = (mask & positives).sum()
    assert result["precision_aum_negative"] == pytest.approx(hits / mask.sum(), abs=1e-5)
    assert result["f1_aum_negative"] == pytest.approx(2 * hits / (mask.sum() + 40), abs=1e-5)
    assert result["auprc_aum"] > 0.8  # far above the noise rate (0.2), which a random ranking scores
    assert result["auprc_cleanlab_one_run"] == result["auprc_cleanlab_cv"]  # the same probabilities


def test_label_quality_and_the_cutoff_are_chosen_on_the_choice_runs_only(monkeypatch):
    import label_errors

    asked = []

    def fake_noisy_run(options, task, kind, noise, seed):
        asked.append((task, kind, noise, seed))
        return synthetic_run(seed=seed)[0]

    monkeypatch.setattr(label_errors, "noisy_run", fake_noisy_run)
    choice = label_errors.choose_label_quality(argparse.Namespace(), ["sst2", "trec"])
    assert asked == [(t, "uniform", 0.1, s) for t in ("sst2", "trec") for s in label_errors.CHOICE_SEEDS]
    assert choice["label_quality"] in label_errors.LABEL_QUALITY_CANDIDATES
    assert choice["suspect"] == max(choice["f1"], key=choice["f1"].get)
    assert choice["auprc"][choice["label_quality"]] == max(choice["auprc"].values())


def test_cross_validation_gives_every_row_its_held_out_folds_probabilities(monkeypatch, tmp_path):
    import datasets
    import label_errors
    import numpy as np

    train = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(30)], "label": [i % 2 for i in range(30)]})
    monkeypatch.setattr(label_errors, "noisy_splits", lambda *a, **k: (train, train))
    fitted = []

    def fake_fine_tune(task, fit, held, probabilities, **training):
        fitted.append(len(fit))
        rows = [int(t[1:]) for t in probabilities["held_out"]["text"]]  # the row, as a probability
        return {"probabilities": {"held_out": [[r / 100, 1 - r / 100] for r in rows]}, "steps": 3, "final": {}}

    monkeypatch.setattr(label_errors, "fine_tune", fake_fine_tune)
    monkeypatch.setattr(label_errors, "run_once", lambda path, settings, make: {**make(), "wall_seconds": 1.0})
    options = argparse.Namespace(out=str(tmp_path), summary_only=False, glue_dir="", trec_dir="")
    cv = label_errors.cross_validated(options, "sst2", "uniform", 0.2, seed=42)
    assert fitted == [24] * 5 and cv["train_steps"] == 15
    np.testing.assert_allclose(cv["probs"][:, 0], np.arange(30) / 100)  # each row from the fold that held it out


def test_cleanlab_summary_pairs_by_seed_and_tables_every_seed(monkeypatch, tmp_path):
    import label_errors
    import numpy as np

    def fake_noisy_run(options, task, kind, noise, seed):
        return {**synthetic_run(seed=seed)[0], "steps": 10, "wall_seconds": 2.0}

    def fake_cross_validated(options, task, kind, noise, seed):
        probs = synthetic_run(seed=seed)[2]
        noisier = np.clip(probs + np.random.default_rng(seed).normal(0, 0.2, probs.shape), 0.01, 0.99)
        return {"probs": noisier, "train_steps": 40, "wall_seconds": 7.0}

    def fake_payoff_runs(options, task, seed, choice):
        accuracy = {"noisy": 0.80, "cleaned_hf_mmr": 0.82, "cleaned_cleanlab_cv": 0.81, "oracle": 0.84}
        return {
            arm: {"removed": [0] * (arm != "noisy"), "final": {label_errors.METRIC: a + seed / 1e4, "eval_ece": 0.05}}
            for arm, a in accuracy.items()
        }

    monkeypatch.setattr(label_errors, "noisy_run", fake_noisy_run)
    monkeypatch.setattr(label_errors, "cross_validated", fake_cross_validated)
    monkeypatch.setattr(label_errors, "payoff_runs", fake_payoff_runs)
    monkeypatch.setattr(label_errors, "CLEANLAB_CONDITIONS", {("uniform", 0.2): (42, 43, 44)})
    result = label_errors.summarize_cleanlab(argparse.Namespace(), ["trec"])
    entry = result["conditions"]["trec/uniform0.2"]
    per_seed = [r["detection"] for r in entry["runs"]]
    differences = [d["auprc_label_quality"] - d["auprc_cleanlab_cv"] for d in per_seed]
    assert entry["auprc_label_quality_minus_auprc_cleanlab_cv"]["mean"] == pytest.approx(np.mean(differences))
    assert entry["train_steps_cleanlab_cv"][0] == 40 and entry["wall_seconds_hf_mmr"][0] == 2.0
    payoff = result["payoff"]["trec"]
    assert payoff["share_of_oracle_gain_cleaned_hf_mmr"] == pytest.approx(0.5)
    lines = label_errors.cleanlab_lines(result)
    seed_rows = [line for line in lines if line.startswith("| trec/uniform0.2 | 4")]
    assert [row.split(" | ")[1] for row in seed_rows] == ["42", "43", "44"]
    assert f"{per_seed[1]['auprc_label_quality']:.3f}" in seed_rows[1]
    assert all(line.count("|") == lines[2].count("|") for line in lines[2:5])  # header, rule, row agree
    label_errors.plot_compute(result, str(tmp_path))
    assert (tmp_path / "auprc_vs_compute.png").stat().st_size > 0


def test_calibration_summary_pairs_by_seed_and_states_the_goals_averages(monkeypatch):
    import calibration

    def fake_cell(options, condition, arm, seed):
        calibrated = "temperature" in arm
        final = {"eval_accuracy": 0.8 + 0.01 * (seed - 42) - (0.005 if calibrated else 0.0), "eval_nll": 0.4}
        final["eval_ece"] = 0.02 if calibrated else 0.10 if arm != "label_smoothing" else 0.05
        if calibrated:
            final["eval_ece_uncalibrated"] = 0.10
        record = {"final": final}
        if calibrated:
            record["calibration"] = {"calibration_temperature": 1.5}
        return record

    monkeypatch.setattr(calibration, "cell", fake_cell)
    result = calibration.summarize(argparse.Namespace(seeds=[42, 43, 44]))
    assert set(result) == set(calibration.TASKS) | set(calibration.NOISY) | {"over_tasks"}
    mrpc = result["mrpc"]
    for pair in ("temperature − none", "weights_temperature − weights"):
        difference = mrpc["calibrated_minus_uncalibrated"][pair]
        assert difference["accuracy"]["mean"] == pytest.approx(-0.005)  # the held-out slice's cost
        assert difference["ece"]["mean"] == pytest.approx(-0.08)
        assert difference["ece_after_over_before"][0] == pytest.approx(0.2)
    assert set(result["sst2_noisy"]["calibrated_minus_uncalibrated"]) == {"temperature − none"}
    assert mrpc["ece_temperature_minus_label_smoothing"]["mean"] == pytest.approx(-0.03)
    assert result["over_tasks"] == pytest.approx(
        {"mean_ece_after": 0.02, "mean_ece_before": 0.10, "tasks_below_label_smoothing": 4}
    )
    assert set(result["sst2_noisy"]["arms"]) == {"none", "temperature"}
    lines = calibration.summary_lines(result)
    assert any(line.startswith("| mrpc | temperature | 0.8") for line in lines)
    assert any(line.startswith("| mrpc | weights_temperature − weights | -0.50 [") for line in lines)

    # A study run with --arms: an arm missing a seed is left out, the goal's arms still summarize.
    monkeypatch.setattr(
        calibration,
        "cell",
        lambda o, c, arm, seed: None if "weights" in arm and seed == 44 else fake_cell(o, c, arm, seed),
    )
    partial = calibration.summarize(argparse.Namespace(seeds=[42, 43, 44]))
    assert set(partial["mrpc"]["arms"]) == {"none", "temperature", "label_smoothing"}
    assert set(partial["mrpc"]["calibrated_minus_uncalibrated"]) == {"temperature − none"}
    assert partial["over_tasks"] == result["over_tasks"]


def test_calibration_study_trains_the_chosen_conditions_and_arms_seed_by_seed(monkeypatch):
    import calibration

    calls = []
    monkeypatch.setattr(calibration, "cell", lambda options, condition, arm, seed: calls.append((condition, seed, arm)))
    options = argparse.Namespace(seeds=[42, 43], conditions=["sst2_cleaned", "mrpc"], arms=["none", "weights"])
    calibration.train(options)
    assert calls == [
        ("mrpc", 42, "none"),
        ("mrpc", 42, "weights"),
        ("mrpc", 43, "none"),
        ("mrpc", 43, "weights"),
        ("sst2_cleaned", 42, "none"),  # the noisy conditions have no weights arm
        ("sst2_cleaned", 43, "none"),
    ]


@pytest.mark.e2e
def test_a_calibrated_runs_final_point_is_the_calibrated_model(tmp_path, monkeypatch):
    """The last step's evaluation precedes the fitted temperature; the record's final metrics come after it."""
    from common import fine_tune

    monkeypatch.chdir(tmp_path)
    train, evaluation = task_splits("mrpc", 120, 0.0, GLUE_DIR)
    record = fine_tune(
        "mrpc",
        train,
        evaluation.select(range(48)),
        seed=0,
        eval_steps=2,  # an evaluation at the last step, before calibration
        batch_size=8,
        max_steps=2,
        max_seq_length=64,
        calibration="temperature",
        calibration_split=0.5,
    )
    final, temperature = record["final"], record["calibration"]["calibration_temperature"]
    assert temperature != 1.0 and final["step"] == 2
    assert final["eval_ece"] != final["eval_ece_uncalibrated"]  # the calibrated model, the uncalibrated beside it
    assert [point["step"] for point in record["curve"]] == [2]  # the uncalibrated point at step 2 is replaced
