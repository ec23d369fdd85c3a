#!/usr/bin/env python
"""Does MMR help under noisy labels? The preregistered confirmation of docs/regime_study/confirmation.md.

The preregistration fixes the hypotheses, the setting, the arms, the seeds and the test; this script
reads the arms and seeds from its JSON block and runs them. Two phases:

* ``heldout``: what the preregistration leaves to held-out data, each on the held-out fifth of the
  noisy train with the task's held-out seed: the epochs of ``baseline_short`` (1, 2 or 3; 0.5 too if
  1 wins) and, where the block leaves a λ open, the regime study's grid rule (``choose_on_grid``).
  It prints the choices to write into the block, and reruns one cell of the regime study's noisy
  SST-2 baseline (seed 42) on today's code, to show whether those numbers moved.
* ``confirm``: every arm × every seed on the clean dev set; refused while the block has an open value.

Per run: clean dev accuracy, ECE, NLL, mean confidence − accuracy (positive: overconfident), the dev
ECE after temperature scaling fitted on the other half of dev (``cross_fitted_calibration``), and the
final model's predictions on the training set, from which the fitted flips (flipped examples
predicted with their flipped label) and the fitted clean examples are counted; the dev logits stay
in the record. One JSON record per run under ``OUT/runs/<task>/``, skipped on a rerun;
``OUT/summary.{json,md}`` and ``OUT/<task>.png`` cover what is stored.

    python bench/confirmation.py --phase heldout --out docs/regime_study/confirmation
    python bench/confirmation.py --phase confirm --out docs/regime_study/confirmation
    python bench/confirmation.py --summary_only --out docs/regime_study/confirmation
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from functools import partial

import numpy as np
from common import (
    DEFAULT_GLUE_DIR,
    DEFAULT_TREC_DIR,
    METRIC,
    ROOT,
    fine_tune,
    flipped_indices,
    mean_std,
    paired_difference,
    run_once,
    task_splits,
    write_summary,
)
from label_errors import RECIPE, arm_name
from label_errors import run as label_errors_run
from regime_study import HELDOUT_FRACTION, choose_on_grid, plot

PREREGISTRATION = os.path.join(ROOT, "docs", "regime_study", "confirmation.md")
TRAIN_SIZES = {"sst2": 4000, "mrpc": None}
NOISE, NOISE_SEED = 0.3, 0
EPOCH_GRID = (1.0, 2.0, 3.0)
SHORTEST = 0.5  # tried only when 1 epoch wins
MMR_ARMS = ("weights", "margin")
# The preregistered hypotheses: each MMR arm against this reference on this task. Every other comparison is
# secondary: reported as beyond noise or not, never as confirmed.
PRIMARY = ("sst2", "baseline")


def preregistered(path: str = PREREGISTRATION) -> dict:
    """The JSON block of the preregistration: per task its held-out seed, seeds and arms."""
    with open(path) as handle:
        text = handle.read()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL)
    if len(blocks) != 1:
        raise SystemExit(f"{path} must hold exactly one ```json block, found {len(blocks)}")
    return json.loads(blocks[0])


def open_values(plan: dict) -> list[str]:
    """``task/arm/field`` of every value the preregistration leaves open (null)."""
    return [
        f"{task}/{arm}/{field}"
        for task, spec in plan.items()
        for arm, setting in spec["arms"].items()
        for field, value in setting.items()
        if value is None
    ]


def cross_fitted_calibration(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Mean confidence − accuracy, and the ECE after temperature scaling with T fitted on the other half.

    The set is split in two halves by a permutation with seed 0; T is fitted on each half and applied to
    the other, so no example is scored by a temperature fitted on it.
    """
    from hf_mmr.calibration import fit_temperature, softmax
    from hf_mmr.metrics import expected_calibration_error

    probs = softmax(logits)
    order = np.random.default_rng(0).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    scaled = np.empty_like(logits)
    temperatures = []
    for fit, apply in (halves, halves[::-1]):
        temperature = fit_temperature(logits[fit], labels[fit])
        scaled[apply] = logits[apply] / temperature
        temperatures.append(round(temperature, 5))
    return {
        "confidence_minus_accuracy": float(probs.max(axis=1).mean() - (probs.argmax(axis=1) == labels).mean()),
        "ece_temperature_scaled": expected_calibration_error(softmax(scaled), labels),
        "temperatures": temperatures,
    }


def fitted_shares(predictions: list[int], labels: list[int], flipped: list[int]) -> dict:
    """The shares of the flipped and of the clean training examples predicted with their given label."""
    agree = np.asarray(predictions) == np.asarray(labels)
    is_flipped = np.zeros(len(agree), dtype=bool)
    is_flipped[flipped] = True
    return {"fitted_flips": float(agree[is_flipped].mean()), "fitted_clean": float(agree[~is_flipped].mean())}


def cell(options: argparse.Namespace, task: str, seed: int, arm: str, setting: dict, heldout: bool) -> dict | None:
    """One run of ``arm`` (its ``setting``: epochs, MMR form and λ), stored under ``OUT/runs/<task>/``.

    The file name and settings hold the setting, not the arm's name: a ``baseline_short`` that chose 3 epochs
    is the ``baseline`` run.
    """
    epochs = setting["num_train_epochs"]
    name = f"{'heldout_' if heldout else ''}{arm_name(setting)}_epochs{epochs:g}_seed{seed}.json"
    path = os.path.join(options.out, "runs", task, name)
    if options.summary_only and not os.path.isfile(path):
        return None
    train, evaluation = task_splits(
        task,
        TRAIN_SIZES[task],
        HELDOUT_FRACTION if heldout else 0.0,
        options.glue_dir,
        options.trec_dir,
        label_noise=NOISE,
        noise_seed=NOISE_SEED,
    )
    training = {"seed": seed, "eval_steps": 10**9, **RECIPE, "mmr_lambda": 0.0, "mmr_form": "weights", **setting}
    settings = {
        "task": task,
        "label_noise": NOISE,
        "noise_seed": NOISE_SEED,
        "noise_kind": "uniform",
        "train_subset": TRAIN_SIZES[task],
        "heldout_fraction": HELDOUT_FRACTION if heldout else 0.0,
        "train_examples": len(train),
        "evaluation_examples": len(evaluation),
        **training,
    }

    def make() -> dict:
        if heldout:  # only the held-out accuracy decides a choice
            return {**fine_tune(task, train, evaluation, **training), "task": task}
        record = fine_tune(task, train, evaluation, predict={"train": train}, keep_dev_logits=True, **training)
        flipped = flipped_indices(train)
        record.update(task=task, flips=len(flipped))
        record.update(fitted_shares(record["predictions"]["train"], train["label"], flipped))
        labels = np.asarray(evaluation["label"])
        record.update(cross_fitted_calibration(np.asarray(record["dev_logits"]), labels))
        return record

    return run_once(path, settings, make)


def choose_epochs(options: argparse.Namespace, task: str, seed: int) -> tuple[float, dict[str, float]] | None:
    """``baseline_short``'s epochs: the best held-out accuracy in ``EPOCH_GRID`` (ties to fewer epochs), and
    ``SHORTEST`` if 1 epoch wins and it is strictly better; None while a run is missing."""
    scores: dict[float, float] = {}
    for epochs in EPOCH_GRID:
        record = cell(options, task, seed, "baseline_short", {"num_train_epochs": epochs}, heldout=True)
        if record is None:
            return None
        scores[epochs] = record["final"][METRIC]
    best = min(scores, key=lambda e: (-scores[e], e))
    if best == 1.0:
        record = cell(options, task, seed, "baseline_short", {"num_train_epochs": SHORTEST}, heldout=True)
        if record is None:
            return None
        scores[SHORTEST] = record["final"][METRIC]
        best = SHORTEST if scores[SHORTEST] > scores[1.0] else best
    return best, {f"{e:g}": round(v, 4) for e, v in sorted(scores.items())}


def heldout_at(options: argparse.Namespace, task: str, seed: int, arm: str, setting: dict, value: float) -> dict | None:
    """The held-out run of ``arm`` at λ = ``value``."""
    return cell(options, task, seed, arm, {**setting, "mmr_lambda": value}, heldout=True)


def heldout_phase(options: argparse.Namespace, plan: dict) -> dict:
    """Every open value's held-out choice, with the held-out accuracies it was chosen from."""
    choices: dict = {}
    for task in options.tasks:
        spec = plan[task]
        seed = spec["heldout_seed"]
        chosen = choose_epochs(options, task, seed)
        if chosen is not None:
            choices[f"{task}/baseline_short/num_train_epochs"] = chosen
        for arm in MMR_ARMS:
            setting = spec["arms"][arm]
            if setting["mmr_lambda"] is not None:
                continue
            chosen = choose_on_grid(arm, partial(heldout_at, options, task, seed, arm, setting))
            if chosen is not None:
                choices[f"{task}/{arm}/mmr_lambda"] = chosen
    if "sst2" in options.tasks:  # the regime study's noisy baseline, seed 42, rerun on today's code
        rerun = argparse.Namespace(**{**vars(options), "out": os.path.join(options.out, "rerun")})
        label_errors_run(rerun, "sst2", NOISE, 42)
    for key, (value, scores) in choices.items():
        print(f"{key}: {value:g}   (held-out accuracy {json.dumps(scores)})")
    return choices


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p values of a family of tests."""
    adjusted, running = {}, 0.0
    ordered = sorted(p_values, key=p_values.get)
    for rank, name in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - rank) * p_values[name]))
        adjusted[name] = running
    return adjusted


def paired_test(treated: list[float], control: list[float]) -> dict:
    """``paired_difference`` with the two-sided paired t test's p value and the seeds better."""
    from scipy import stats

    difference = paired_difference(treated, control)
    d = np.asarray(treated) - np.asarray(control)
    sd = d.std(ddof=1) if len(d) > 1 else 0.0
    if len(d) < 2:
        p = math.nan
    elif sd == 0:
        p = 1.0 if d.mean() == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(d.mean() / (sd / math.sqrt(len(d)))), len(d) - 1))
    return {**difference, "p": p, "seeds_better": int((d > 0).sum())}


MEASURES = {
    "accuracy": lambda r: r["final"][METRIC],
    "ece": lambda r: r["final"]["eval_ece"],
    "nll": lambda r: r["final"]["eval_nll"],
    "confidence_minus_accuracy": lambda r: r["confidence_minus_accuracy"],
    "ece_temperature_scaled": lambda r: r["ece_temperature_scaled"],
    "fitted_flips": lambda r: r["fitted_flips"],
    "fitted_clean": lambda r: r["fitted_clean"],
    "train_seconds": lambda r: r["train_seconds"],
}


def majority_class_accuracy(options: argparse.Namespace, task: str) -> float:
    """What always answering the dev set's most frequent class scores: the floor a noisy arm can fall to."""
    labels = np.asarray(task_splits(task, glue_dir=options.glue_dir, trec_dir=options.trec_dir)[1]["label"])
    return float(np.bincount(labels).max() / len(labels))


def summarize(options: argparse.Namespace, task: str, spec: dict) -> dict | None:
    """Per arm every measure per seed; the preregistered tests; None while a confirmation run is missing."""
    records: dict[str, list[dict]] = {}
    for arm, setting in spec["arms"].items():
        runs = [cell(options, task, seed, arm, setting, heldout=False) for seed in spec["seeds"]]
        if None in runs:
            return None
        records[arm] = runs
    majority = majority_class_accuracy(options, task)
    result: dict = {"seeds": spec["seeds"], "majority_class_accuracy": majority, "arms": {}, "tests": {}}
    for arm, runs in records.items():
        entry: dict = {"setting": spec["arms"][arm]}
        for name, get in MEASURES.items():
            values = [get(r) for r in runs]
            entry[name] = {"values": values, "mean_sd": mean_std(values)}
        result["arms"][arm] = entry
    accuracy = {arm: entry["accuracy"]["values"] for arm, entry in result["arms"].items()}
    for reference in ("baseline", "baseline_short"):
        tests = {arm: paired_test(accuracy[arm], accuracy[reference]) for arm in MMR_ARMS}
        adjusted = holm({arm: test["p"] for arm, test in tests.items()})
        for arm, test in tests.items():
            test["p_holm"] = adjusted[arm]
            holds = bool(test["p_holm"] < 0.05 and test["mean"] > 0)
            test["confirmed" if (task, reference) == PRIMARY else "beyond_noise"] = holds
            result["tests"][f"{arm}_minus_{reference}"] = test
    result["tests"]["baseline_short_minus_baseline"] = paired_test(accuracy["baseline_short"], accuracy["baseline"])
    return result


def summary_lines(results: dict[str, dict], rerun: dict | None) -> list[str]:
    def points(test: dict) -> str:
        low, high = test["ci95"]
        return f"{100 * test['mean']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] ({test['seeds_better']}/{test['n']})"

    lines = [
        (
            "| task | arm | setting | dev accuracy | dev ECE | ECE after T (other half of dev) | confidence − accuracy | "
            "dev NLL | fitted flips | fitted clean |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, result in results.items():
        for arm, entry in result["arms"].items():
            setting = ", ".join(
                f"{k.replace('num_train_', '').replace('mmr_', '')} {v}" for k, v in entry["setting"].items()
            )
            cells = [
                f"{entry[name]['mean_sd'][0]:.4f} ± {entry[name]['mean_sd'][1]:.4f}" for name in list(MEASURES)[:7]
            ]
            lines.append(
                f"| {task} | {arm} | {setting} | "
                + " | ".join(cells[:2] + [cells[4], cells[3], cells[2]] + cells[5:])
                + " |"
            )
    lines += [
        "",
        "| task | comparison | accuracy difference, points, 95 % CI (seeds better) | p | p (Holm) | result |",
        "|---|---|---|---|---|---|",
    ]
    for task, result in results.items():
        for name, test in result["tests"].items():
            holm_p = f"{test['p_holm']:.4f}" if "p_holm" in test else ""
            if "confirmed" in test:
                verdict = "**confirmed** (primary)" if test["confirmed"] else "not confirmed (primary)"
            elif "beyond_noise" in test:
                verdict = "beyond noise (secondary)" if test["beyond_noise"] else "within noise (secondary)"
            else:
                verdict = "secondary"
            lines.append(f"| {task} | {name} | {points(test)} | {test['p']:.4f} | {holm_p} | {verdict} |")
    lines.append("")
    for task, result in results.items():
        lines.append(
            f"{task}: always answering dev's most frequent class scores {result['majority_class_accuracy']:.4f}."
        )
    if rerun is not None:
        lines += [
            "",
            f"Rerun of the regime study's noisy SST-2 baseline, seed 42, on today's code: {json.dumps(rerun)}",
        ]
    return lines


def rerun_comparison(options: argparse.Namespace) -> dict | None:
    """The rerun baseline cell against the stored one: dev accuracy, ECE and fitted flips, old and new."""
    path = os.path.join("runs", "sst2", "noise0.3_seed42.json")
    new_path = os.path.join(options.out, "rerun", path)
    old_path = os.path.join(options.label_errors_out, path)
    if not (os.path.isfile(new_path) and os.path.isfile(old_path)):
        return None
    pair = []
    for p in (old_path, new_path):
        with open(p) as handle:
            record = json.load(handle)
        pair.append(
            {
                "commit": record["provenance"]["commit"][:7],
                "accuracy": record["final"][METRIC],
                "ece": record["final"]["eval_ece"],
                "memorized": record["probe_accuracy"],
            }
        )
    return {"stored": pair[0], "today": pair[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the runs, the summary and the plots")
    parser.add_argument("--phase", choices=("heldout", "confirm"), help="what to run (nothing with --summary_only)")
    parser.add_argument("--tasks", nargs="+", default=list(TRAIN_SIZES), choices=list(TRAIN_SIZES))
    parser.add_argument("--summary_only", action="store_true", help="train nothing; summarize the stored runs")
    parser.add_argument("--label_errors_out", default=os.path.join(ROOT, "docs", "label_errors"))
    parser.add_argument("--glue_dir", default=DEFAULT_GLUE_DIR)
    parser.add_argument("--trec_dir", default=DEFAULT_TREC_DIR)
    options = parser.parse_args()
    if not options.summary_only and options.phase is None:
        parser.error("give --phase heldout or --phase confirm, or --summary_only")
    import matplotlib

    matplotlib.use("Agg")
    plan = preregistered()
    if options.phase == "heldout" and not options.summary_only:
        heldout_phase(options, plan)
        return
    if options.phase == "confirm" and not options.summary_only:
        missing = [key for key in open_values(plan) if key.split("/")[0] in options.tasks]
        if missing:
            raise SystemExit(
                f"{PREREGISTRATION} leaves {', '.join(missing)} open: run --phase heldout and fill them in"
            )
        for task in options.tasks:  # seed by seed, so that an interrupted study stays paired
            for seed in plan[task]["seeds"]:
                for arm, setting in plan[task]["arms"].items():
                    cell(options, task, seed, arm, setting, heldout=False)
    options.summary_only = True
    results = {}
    for task, spec in plan.items():
        if any(f.startswith(f"{task}/") for f in open_values(plan)):
            continue
        result = summarize(options, task, spec)
        if result is not None:
            results[task] = result
            plot(task, result, os.path.join(options.out, f"{task}.png"))
    if results:
        summary = {"noise": NOISE, "noise_seed": NOISE_SEED, "recipe": RECIPE, "results": results}
        rerun = rerun_comparison(options)
        summary["rerun"] = rerun
        write_summary(options.out, summary, summary_lines(results, rerun))


if __name__ == "__main__":
    main()
