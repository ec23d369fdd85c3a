#!/usr/bin/env python
"""Where margins are said to matter: MMR against label smoothing under noisy labels and on small training sets.

Conditions, per task (SST-2 and TREC-6):

* ``noisy``: SST-2's 4,000-example subset or TREC's whole train, 30 % of the labels flipped
  (``flip_labels``, noise seed 0; dev clean), 3 epochs;
* ``small``: a fixed seeded subset of 500 clean training examples, 10 epochs (few-sample
  fine-tuning needs longer training: Zhang et al. 2021).

Arms: ``baseline``; ``label_smoothing`` (the Trainer's ``label_smoothing_factor``); the ``weights``
and ``margin`` forms of MMR. Each arm's setting is chosen per task and condition on a held-out
fifth of the (noisy) train with the first seed: the best held-out accuracy, ties to the smaller
value. A choice at the edge of its grid extends the grid one step beyond it (up to
``MAX_EXTENSIONS`` times), so that "the best value lay outside the grid" cannot explain a "no".
Then 5 seeds per arm on dev; within a task and condition every run is identical except the arm's
own setting (the noisy condition records margins in every arm, and its baseline runs are the label-
error study's, ``bench/label_errors.py``, read from ``--label_errors_out``).

Per run: clean dev accuracy, dev ECE and NLL (``MMRTrainer``'s ``eval_ece`` and ``eval_nll``), and
in the noisy condition the final model's accuracy on the flipped training examples against their
noisy labels (how much noise it memorized). ``OUT/summary.{json,md}``: per task and condition, mean ±
sd of accuracy and ECE, the paired difference to the baseline and to label smoothing with 95 %
t intervals and the seeds better (of memorization too, in the noisy condition);
``OUT/<task>_<condition>.png`` plots accuracy and ECE per arm.

    python bench/regime_study.py --out docs/regime_study --conditions noisy
    python bench/regime_study.py --out docs/regime_study --summary_only
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

from common import DEFAULT_GLUE_DIR, DEFAULT_TREC_DIR, METRIC, mean_std, paired_difference, write_summary
from label_errors import run

TASKS = ("sst2", "trec")
CONDITIONS = {
    "noisy": {"noise": 0.3, "train_size": "recipe", "epochs": 3.0},
    "small": {"noise": 0.0, "train_size": 500, "epochs": 10.0},
}
GRIDS = {
    "label_smoothing": ("label_smoothing_factor", (0.05, 0.1, 0.2)),
    "weights": ("mmr_lambda", (0.001, 0.01, 0.1)),
    "margin": ("mmr_lambda", (0.001, 0.003, 0.01)),
}
MAX_EXTENSIONS = 2
HELDOUT_FRACTION = 0.2


def arm_setting(arm: str, value: float) -> dict:
    """The training settings of ``arm`` at grid ``value``."""
    if arm == "label_smoothing":
        return {"label_smoothing_factor": value}
    return {"mmr_form": arm, "mmr_lambda": value}


def extend(arm: str, values: list[float], side: str) -> float | None:
    """The next value beyond the grid's ``side`` (``low``/``high``), by its own geometric step, or None
    where it would leave the field's range (a label smoothing factor must stay below 1)."""
    if side == "low":
        value = values[0] * values[0] / values[1]
    else:
        value = values[-1] * values[-1] / values[-2]
    value = float(f"{value:.1g}")
    return None if arm == "label_smoothing" and value >= 1 else value


def choose_on_grid(arm: str, heldout_run: Callable[[float], dict | None]) -> tuple[float, dict[str, float]] | None:
    """The best of ``arm``'s grid by held-out accuracy (ties to the smaller value), extending the grid at the edge
    that wins (``MAX_EXTENSIONS`` times per side), with every value's held-out accuracy; None if a run is missing.

    ``heldout_run(value)`` is the record of the held-out run at ``value`` (None when it is not stored).
    """
    values = list(GRIDS[arm][1])
    scores: dict[float, float] = {}
    extensions = {"low": 0, "high": 0}
    while True:
        for value in values:
            if value not in scores:
                record = heldout_run(value)
                if record is None:
                    return None
                scores[value] = record["final"][METRIC]
        best = min(values, key=lambda v: (-scores[v], v))
        side = "low" if best == values[0] else "high" if best == values[-1] else None
        if side is None or extensions[side] >= MAX_EXTENSIONS:
            return best, {f"{v:g}": round(scores[v], 4) for v in values}
        beyond = extend(arm, values, side)
        if beyond is None:
            return best, {f"{v:g}": round(scores[v], 4) for v in values}
        extensions[side] += 1
        values = [beyond, *values] if side == "low" else [*values, beyond]


class Study:
    """The runs of one task and condition: held-out choices, then every arm on dev."""

    def __init__(self, options: argparse.Namespace, task: str, condition: str):
        self.options, self.task, self.condition = options, task, condition
        self.spec = CONDITIONS[condition]

    def cell(self, seed: int, arm: str, value: float | None, heldout: bool) -> dict | None:
        setting = arm_setting(arm, value) if arm != "baseline" else None
        shared = self.condition == "noisy" and arm == "baseline" and not heldout
        return run(
            self.options,
            self.task,
            self.spec["noise"],
            seed,
            variant="noisy" if self.condition == "noisy" else "small",
            arm=setting,
            heldout_fraction=HELDOUT_FRACTION if heldout else 0.0,
            out=self.options.label_errors_out if shared else os.path.join(self.options.out, self.condition),
            train_size=self.spec["train_size"],
            epochs=self.spec["epochs"],
        )

    def choose(self, arm: str) -> tuple[float, dict[str, float]] | None:
        """The arm's held-out choice and every grid value's held-out accuracy; None if a run is missing."""
        seed = self.options.seeds[0]
        return choose_on_grid(arm, lambda value: self.cell(seed, arm, value, heldout=True))

    def run(self) -> dict | None:
        baseline_heldout = self.cell(self.options.seeds[0], "baseline", None, heldout=True)
        choices = {arm: self.choose(arm) for arm in GRIDS}
        if baseline_heldout is None or None in choices.values():
            return None
        arms = {"baseline": None, **{arm: choice[0] for arm, choice in choices.items()}}
        records: dict[str, list[dict]] = {arm: [] for arm in arms}
        for seed in self.options.seeds:  # seed by seed, so that an interrupted study stays paired
            for arm, value in arms.items():
                record = self.cell(seed, arm, value, heldout=False)
                if record is None:
                    return None
                records[arm].append(record)
        grid = {"baseline": round(baseline_heldout["final"][METRIC], 4)}
        grid.update({arm: scores for arm, (_, scores) in choices.items()})
        return summarize(arms, records, grid)


def summarize(arms: dict[str, float | None], records: dict[str, list[dict]], grid: dict) -> dict:
    """Per arm: accuracy, ECE, NLL and memorization per seed; paired differences to baseline and smoothing."""
    metric = {
        "accuracy": lambda r: r["final"][METRIC],
        "ece": lambda r: r["final"]["eval_ece"],
        "nll": lambda r: r["final"]["eval_nll"],
    }
    if all("probe_accuracy" in r for rs in records.values() for r in rs):  # the noisy condition
        metric["memorized"] = lambda r: r["probe_accuracy"]  # accuracy on the flipped labels: lower is better
    values = {arm: {name: [get(r) for r in rs] for name, get in metric.items()} for arm, rs in records.items()}
    result: dict = {"heldout_grid": grid, "arms": {}}
    for arm, rs in records.items():
        entry: dict = {"setting": arms[arm], "seeds": [r["settings"]["seed"] for r in rs]}
        for name in metric:
            entry[name] = {"values": values[arm][name], "mean_sd": mean_std(values[arm][name])}
        for reference in ("baseline", "label_smoothing"):
            if arm == reference or (reference == "label_smoothing" and arm == "baseline"):
                continue
            for name in (key for key in metric if key != "nll"):
                difference = paired_difference(values[arm][name], values[reference][name])
                better = sum(
                    (a > b) if name == "accuracy" else (a < b)
                    for a, b in zip(values[arm][name], values[reference][name])
                )
                entry[f"{name}_minus_{reference}"] = {**difference, "seeds_better": better}
        entry["compute_seconds"] = round(sum(r["wall_seconds"] for r in rs), 1)
        result["arms"][arm] = entry
    return result


def summary_lines(results: dict[str, dict]) -> list[str]:
    def interval(entry: dict, scale: float = 100) -> str:
        low, high = entry["ci95"]
        return f"{scale * entry['mean']:+.2f} [{scale * low:+.2f}, {scale * high:+.2f}] ({entry['seeds_better']}/{entry['n']})"

    lines = [
        (
            "| task | condition | arm | setting | dev accuracy | dev ECE | dev NLL | acc. − baseline, points | "
            "acc. − label smoothing, points | ECE − baseline, points | ECE − label smoothing, points | "
            "flipped memorized | memorized − baseline, points |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, result in results.items():
        task, condition = key.split("/")
        for arm, entry in result["arms"].items():
            acc, ece, nll = (entry[name]["mean_sd"] for name in ("accuracy", "ece", "nll"))
            cells = [
                interval(entry[name]) if name in entry else ""
                for name in (
                    "accuracy_minus_baseline",
                    "accuracy_minus_label_smoothing",
                    "ece_minus_baseline",
                    "ece_minus_label_smoothing",
                    "memorized_minus_baseline",
                )
            ]
            setting = "" if entry["setting"] is None else f"{entry['setting']:g}"
            memorized = f"{entry['memorized']['mean_sd'][0]:.3f}" if "memorized" in entry else ""
            lines.append(
                f"| {task} | {condition} | {arm} | {setting} | {acc[0]:.4f} ± {acc[1]:.4f} | "
                f"{ece[0]:.4f} ± {ece[1]:.4f} | {nll[0]:.3f} | " + " | ".join(cells[:4] + [memorized, cells[4]]) + " |"
            )
    lines += ["", "| task | condition | held-out accuracy of every grid value (first seed) |", "|---|---|---|"]
    for key, result in results.items():
        task, condition = key.split("/")
        lines.append(f"| {task} | {condition} | {json.dumps(result['heldout_grid'])} |")
    return lines


def plot(key: str, result: dict, path: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, name, label in ((axes[0], "accuracy", "clean dev accuracy"), (axes[1], "ece", "dev ECE (15 bins)")):
        for position, (arm, entry) in enumerate(result["arms"].items()):
            values = entry[name]["values"]
            ax.scatter([position] * len(values), values, s=14, alpha=0.6)
            ax.hlines(entry[name]["mean_sd"][0], position - 0.25, position + 0.25)
        if name == "accuracy" and "majority_class_accuracy" in result:
            ax.axhline(
                result["majority_class_accuracy"],
                linestyle="--",
                color="gray",
                linewidth=0.8,
                label="always the majority class",
            )
            ax.legend(fontsize=7, loc="best")
        ax.set_xticks(range(len(result["arms"])), list(result["arms"]), fontsize=8)
        ax.set_ylabel(label)
        ax.set_title(f"{key}: {label} per seed")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the runs, the summary and the plots")
    parser.add_argument("--label_errors_out", default=None, help="the label-error study's directory (shared runs)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44, 45, 46])
    parser.add_argument("--summary_only", action="store_true", help="train nothing; summarize the stored runs")
    parser.add_argument("--glue_dir", default=DEFAULT_GLUE_DIR)
    parser.add_argument("--trec_dir", default=DEFAULT_TREC_DIR)
    options = parser.parse_args()
    options.label_errors_out = options.label_errors_out or os.path.join(os.path.dirname(options.out), "label_errors")
    import matplotlib

    matplotlib.use("Agg")
    if not options.summary_only:
        for condition in options.conditions:
            for task in options.tasks:
                Study(options, task, condition).run()
    options.summary_only = True
    results = {}
    for condition in CONDITIONS:
        for task in TASKS:
            result = Study(options, task, condition).run()
            if result is not None:
                results[f"{task}/{condition}"] = result
                plot(f"{task}/{condition}", result, os.path.join(options.out, f"{task}_{condition}.png"))
    if not results:
        return
    summary = {"conditions": CONDITIONS, "grids": GRIDS, "seeds": options.seeds, "results": results}
    write_summary(options.out, summary, summary_lines(results))


if __name__ == "__main__":
    main()
