#!/usr/bin/env python
"""Calibrated checkpoints: what temperature scaling buys, against label smoothing, with and without MMR.

Per task (MRPC, RTE, SST-2's 4,000-sentence subset, TREC-6), seeds 42-44, the form study's recipe (the
packaged MiniLM, 2 epochs, batch 32, lr 1e-4), arms:

* ``none``: all of train, no calibration (also the reference for what holding out the slice costs);
* ``temperature``: ``calibration="temperature"``: 10 % of train held out (stratified, seeded), T fitted on
  it after training and folded into the head;
* ``label_smoothing``: the Trainer's ``label_smoothing_factor`` 0.1, all of train;
* ``weights`` and ``weights_temperature``: MMR ``weights`` at the default config's λ (0.01), without and
  with calibration.

And on SST-2 with label noise: the regime study's noisy condition (30 % flipped, 3 epochs) and the
label-error study's cleaned payoff setting (20 % flipped, without the ``aum < 0`` suspects of the same
seed's noisy run in ``--label_errors_out``), ``none`` and ``temperature``.

Per run: dev (TREC: test) accuracy, ``eval_ece`` (of the calibrated model where calibrated),
``eval_ece_uncalibrated`` (the same pass, logits x T), ``eval_nll``, the fitted T. Accuracy cannot move with
T (the argmax is the same); what moves it is the held-out slice, measured against ``none`` of the same
seed. One JSON record per run under ``OUT/runs/<condition>/``, skipped on a rerun; ``OUT/summary.{json,md}``
and ``OUT/ece.png``.

    python bench/calibration.py --out docs/calibration
    python bench/calibration.py --out docs/calibration --arms none temperature label_smoothing  # the goal's arms first
    python bench/calibration.py --out docs/calibration --conditions sst2_noisy sst2_cleaned  # one part at a time
    python bench/calibration.py --out docs/calibration --summary_only
"""

from __future__ import annotations

import argparse
import json
import os

from common import (
    DEFAULT_GLUE_DIR,
    DEFAULT_TREC_DIR,
    METRIC,
    ROOT,
    fine_tune_once,
    mean_std,
    paired_difference,
    task_splits,
    write_summary,
)
from label_errors import aum_suspects

TASKS = {"mrpc": None, "rte": None, "sst2": 4000, "trec": None}
RECIPE = {"batch_size": 32, "learning_rate": 1e-4, "num_train_epochs": 2.0, "max_seq_length": 128}
DEFAULT_LAMBDA = 0.01  # configs/default.yaml
ARMS = {
    "none": {},
    "temperature": {"calibration": "temperature"},
    "label_smoothing": {"label_smoothing_factor": 0.1},
    "weights": {"mmr_form": "weights", "mmr_lambda": DEFAULT_LAMBDA},
    "weights_temperature": {"mmr_form": "weights", "mmr_lambda": DEFAULT_LAMBDA, "calibration": "temperature"},
}
# SST-2 with label noise: (noise, epochs, cleaned?) of the regime study's noisy condition and the payoff setting.
NOISY = {"sst2_noisy": (0.3, 3.0, False), "sst2_cleaned": (0.2, 3.0, True)}
NOISY_ARMS = ("none", "temperature")
CALIBRATED_PAIRS = (("temperature", "none"), ("weights_temperature", "weights"))


def condition_data(options: argparse.Namespace, condition: str) -> tuple | None:
    """(task, train, evaluation, epochs) of a condition; None where a cleaned set's noisy run is missing."""
    if condition in TASKS:
        train, evaluation = task_splits(condition, TASKS[condition], 0.0, options.glue_dir, options.trec_dir)
        return condition, train, evaluation, RECIPE["num_train_epochs"]
    noise, epochs, cleaned = NOISY[condition]
    train, evaluation = task_splits("sst2", 4000, 0.0, options.glue_dir, options.trec_dir, label_noise=noise)
    if cleaned:
        path = os.path.join(options.label_errors_out, "runs", "sst2", f"noise{noise:g}_seed{options.seed}.json")
        if not os.path.isfile(path):
            return None
        with open(path) as handle:
            removed = set(aum_suspects(json.load(handle)))
        train = train.select([i for i in range(len(train)) if i not in removed])
    return "sst2", train, evaluation, epochs


def cell(options: argparse.Namespace, condition: str, arm: str, seed: int) -> dict | None:
    """One run of ``arm`` in ``condition``, stored under ``OUT/runs/<condition>/``."""
    path = os.path.join(options.out, "runs", condition, f"{arm}_seed{seed}.json")
    if options.summary_only and not os.path.isfile(path):
        return None
    data = condition_data(argparse.Namespace(**{**vars(options), "seed": seed}), condition)
    if data is None:
        return None
    task, train, evaluation, epochs = data
    training = {"seed": seed, "eval_steps": 10**9, **RECIPE, "num_train_epochs": epochs, "mmr_lambda": 0.0}
    training.update(ARMS[arm])
    return fine_tune_once(path, task, train, evaluation, training, condition=condition, arm=arm)


def conditions_and_arms() -> list[tuple[str, tuple[str, ...]]]:
    return [(task, tuple(ARMS)) for task in TASKS] + [(condition, NOISY_ARMS) for condition in NOISY]


MEASURES = {
    "accuracy": lambda r: r["final"][METRIC],
    "ece": lambda r: r["final"]["eval_ece"],
    # A calibrated run's final evaluation must carry both (a record without it was evaluated before T).
    "ece_uncalibrated": lambda r: r["final"]["eval_ece_uncalibrated" if "calibration" in r else "eval_ece"],
    "nll": lambda r: r["final"]["eval_nll"],
    "temperature": lambda r: r.get("calibration", {}).get("calibration_temperature", 1.0),
}


def summarize(options: argparse.Namespace) -> dict:
    """Per condition and arm, every measure per seed; temperature against none (the slice's cost in accuracy, ECE)
    and against label smoothing (ECE), paired by seed; only arms whose every seed is stored, and only conditions
    with both ``none`` and ``temperature``."""
    result = {}
    for condition, arms in conditions_and_arms():
        records = {arm: [cell(options, condition, arm, seed) for seed in options.seeds] for arm in arms}
        records = {arm: runs for arm, runs in records.items() if None not in runs}
        if not {"none", "temperature"} <= set(records):
            continue
        values = {
            arm: {name: [get(r) for r in runs] for name, get in MEASURES.items()} for arm, runs in records.items()
        }
        entry: dict = {
            "arms": {arm: {n: {"values": v, "mean_sd": mean_std(v)} for n, v in m.items()} for arm, m in values.items()}
        }
        temperature = values["temperature"]
        # Calibrated arm minus the same recipe trained on all of train, paired by seed.
        entry["calibrated_minus_uncalibrated"] = {
            f"{calibrated} − {plain}": {
                **{
                    name: paired_difference(values[calibrated][name], values[plain][name])
                    for name in ("accuracy", "ece", "nll")
                },
                "ece_after_over_before": mean_std(
                    [a / b for a, b in zip(values[calibrated]["ece"], values[calibrated]["ece_uncalibrated"])]
                ),
            }
            for calibrated, plain in CALIBRATED_PAIRS
            if calibrated in values and plain in values
        }
        if "label_smoothing" in values:
            entry["ece_temperature_minus_label_smoothing"] = paired_difference(
                temperature["ece"], values["label_smoothing"]["ece"]
            )
        result[condition] = entry
    tasks = [task for task in TASKS if "ece_temperature_minus_label_smoothing" in result.get(task, {})]
    if len(tasks) == len(TASKS):  # the goal's averages over the four tasks
        after = [result[t]["arms"]["temperature"]["ece"]["mean_sd"][0] for t in tasks]
        before = [result[t]["arms"]["temperature"]["ece_uncalibrated"]["mean_sd"][0] for t in tasks]
        below_smoothing = sum(result[t]["ece_temperature_minus_label_smoothing"]["mean"] < 0 for t in tasks)
        result["over_tasks"] = {
            "mean_ece_after": sum(after) / len(after),
            "mean_ece_before": sum(before) / len(before),
            "tasks_below_label_smoothing": below_smoothing,
        }
    return result


def summary_lines(result: dict) -> list[str]:
    def cell_text(pair: tuple[float, float], digits: int = 4) -> str:
        return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"

    lines = [
        (
            "Made by `python bench/calibration.py --out docs/calibration` (one record per run under runs/, with its "
            "commit and settings); dev ECE (TREC-6: test), 15 bins, mean ± sd over the seeds."
        ),
        "",
        "| condition | arm | accuracy | ECE | ECE before T (same run) | NLL | T |",
        "|---|---|---|---|---|---|---|",
    ]
    for condition, entry in result.items():
        if condition == "over_tasks":
            continue
        for arm, measures in entry["arms"].items():
            cells = [cell_text(measures[name]["mean_sd"]) for name in ("accuracy", "ece", "ece_uncalibrated", "nll")]
            lines.append(
                f"| {condition} | {arm} | " + " | ".join(cells) + f" | {measures['temperature']['mean_sd'][0]:.3f} |"
            )

    def points(difference: dict) -> str:
        low, high = difference["ci95"]
        return f"{100 * difference['mean']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"

    lines += ["", "| condition | calibrated − uncalibrated | accuracy, points | ECE, points | ECE after / before T |"]
    lines += ["|---|---|---|---|---|"]
    for condition, entry in result.items():
        if condition == "over_tasks":
            continue
        for pair, difference in entry["calibrated_minus_uncalibrated"].items():
            lines.append(
                f"| {condition} | {pair} | {points(difference['accuracy'])} | {points(difference['ece'])} | "
                f"{cell_text(difference['ece_after_over_before'], 2)} |"
            )
    if "over_tasks" in result:
        lines += ["", f"Over the four tasks: {json.dumps(result['over_tasks'])}"]
    return lines


def plot(result: dict, path: str) -> None:
    import matplotlib.pyplot as plt

    conditions = [c for c in result if c != "over_tasks"]
    fig, ax = plt.subplots(figsize=(9, 4), constrained_layout=True)
    arms = list(ARMS)
    for offset, arm in enumerate(arms):
        for position, condition in enumerate(conditions):
            measures = result[condition]["arms"].get(arm)
            if measures is not None:
                x = position + (offset - len(arms) / 2) * 0.15
                ax.scatter(
                    [x] * len(measures["ece"]["values"]),
                    measures["ece"]["values"],
                    s=12,
                    label=arm if position == 0 else None,
                    color=f"C{offset}",
                )
    ax.set_xticks(range(len(conditions)), conditions, fontsize=8)
    ax.set_ylabel("ECE (15 bins), each seed")
    ax.set_title("calibration per arm: temperature scaling against label smoothing")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train(options: argparse.Namespace) -> None:
    """The runs of ``options.conditions`` x ``options.arms`` not stored yet, condition by condition and seed by seed,
    so that an interrupted study stays paired."""
    for condition, arms in conditions_and_arms():
        chosen = [arm for arm in arms if arm in options.arms] if condition in options.conditions else []
        for seed in options.seeds if chosen else []:
            for arm in chosen:
                cell(options, condition, arm, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the runs, the summary and the plot")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--summary_only", action="store_true", help="train nothing; summarize the stored runs")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="train only these arms")
    conditions = [condition for condition, _ in conditions_and_arms()]
    parser.add_argument(
        "--conditions", nargs="+", choices=conditions, default=conditions, help="train only these conditions"
    )
    parser.add_argument("--label_errors_out", default=os.path.join(ROOT, "docs", "label_errors"))
    parser.add_argument("--glue_dir", default=DEFAULT_GLUE_DIR)
    parser.add_argument("--trec_dir", default=DEFAULT_TREC_DIR)
    options = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    if not options.summary_only:
        train(options)
    options.summary_only = True
    result = summarize(options)
    if result:
        plot(result, os.path.join(options.out, "ece.png"))
        write_summary(options.out, result, summary_lines(result))


if __name__ == "__main__":
    main()
