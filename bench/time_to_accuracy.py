#!/usr/bin/env python
"""Does MMS selection reach the uniform sampler's accuracy sooner? Dev metric against steps and seconds.

Arms, all ``MMRTrainer`` with the same model, data, seed, batch size and learning rate:

* ``uniform``: the Trainer's own shuffled sampler (``mms_selection none``);
* ``cached``: ``mms_selection cached`` (the first epoch is uniform and records every example's
  MMS; later epochs keep the low-MMS examples and a weighted random share of the others);
* ``select``: ``mms_selection select`` (each step trains on the lowest-MMS batch of a pool of
  10 batches scored by an extra forward pass). It runs ``--select_steps`` times uniform's steps;
* ``uniform_short``: uniform sampling for as many steps as select, with the learning rate decaying
  over them as select's does: what select must beat to show that the selection, not the shorter
  schedule, makes it reach the target sooner.

``--mmr_lambda`` turns MMR on in every arm. Arms are interleaved seed by seed (uniform, cached,
select, next seed ...) so that machine drift falls on all of them alike. The dev set is scored
every ``--eval_every`` steps; training seconds exclude evaluation and include MMS scoring.

For each seed the target is the uniform run's final dev accuracy; each arm reports the first
step, examples and seconds at which it reaches it (or "not reached"), and its ratio to uniform's
own first step and seconds at the target. Every (task, arm, seed) run is kept as JSON under
``OUT/runs/`` and skipped on a rerun with the same settings. Results per task:
``OUT/<task>_time_to_accuracy.json`` and ``.md``, and ``OUT/<task>_curves.png`` (dev accuracy against
steps and against seconds, per arm and seed).

    python bench/time_to_accuracy.py --out docs/time_to_accuracy
    python bench/time_to_accuracy.py --out out --tasks mrpc --arms uniform cached --seeds 42 43 44
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics

from common import DEFAULT_GLUE_DIR, METRIC, bounded, fine_tune_once, task_splits

ARMS = {
    "uniform": {"mms_selection": "none"},
    # Two epochs: the first records the scores, the second samples by them (no uniform anneal epoch).
    "cached": {"mms_selection": "cached", "mms_anneal_epochs": 0},
    "select": {"mms_selection": "select"},
    # The control for select: uniform sampling with select's shorter run (and so its faster LR decay).
    "uniform_short": {"mms_selection": "none"},
}
# Training set (None: all of train), epochs of the uniform run, dev evaluations per run.
RECIPES = {
    "sst2": {"train_size": 2000, "epochs": 2},
    "mrpc": {"train_size": None, "epochs": 2},
}


def arm_training(options: argparse.Namespace, epochs: int, steps: int, arm: str, seed: int, eval_every: int) -> dict:
    """``fine_tune``'s arguments for one arm's run, dev scored every ``eval_every`` steps."""
    length = {"num_train_epochs": epochs}
    if arm in ("select", "uniform_short"):
        length = {"max_steps": round(options.select_steps * steps)}
    return {
        "seed": seed,
        "eval_steps": eval_every,
        "batch_size": options.batch_size,
        "learning_rate": options.learning_rate,
        "mmr_lambda": options.mmr_lambda,
        **length,
        **ARMS[arm],
    }


def first_reach(curve: list[dict], target: float) -> dict | None:
    """The first evaluation point at or above ``target``."""
    return next((point for point in curve if point[METRIC] >= target - 1e-9), None)


def ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else round(value / reference, 3)


def seconds_per_step(record: dict) -> float:
    return record["train_seconds"] / record["steps"]


def summarize(runs: dict[str, dict[int, dict]], seeds: list[int]) -> dict:
    """Per arm and seed: the point where uniform's final accuracy is first reached, and the ratios to uniform."""
    result: dict = {}
    for arm, by_seed in runs.items():
        rows = []
        for seed in seeds:
            target = runs["uniform"][seed]["final"][METRIC]
            reference = first_reach(runs["uniform"][seed]["curve"], target)
            point = first_reach(by_seed[seed]["curve"], target)
            rows.append(
                {
                    "seed": seed,
                    "target": target,
                    "final": by_seed[seed]["final"][METRIC],
                    "reached": point is not None,
                    "step": point and point["step"],
                    "train_seconds": point and point["train_seconds"],
                    "steps_ratio": ratio(point and point["step"], reference["step"]),
                    "seconds_ratio": ratio(point and point["train_seconds"], reference["train_seconds"]),
                    "seconds_per_step": seconds_per_step(by_seed[seed]),
                }
            )
        reached = [row for row in rows if row["reached"]]
        result[arm] = {
            "seeds": rows,
            "reached": f"{len(reached)}/{len(rows)}",
            "final_mean": statistics.fmean(row["final"] for row in rows),
            "median_steps_ratio": statistics.median(r["steps_ratio"] for r in reached) if reached else None,
            "median_seconds_ratio": statistics.median(r["seconds_ratio"] for r in reached) if reached else None,
            "seconds_per_step_ratio": statistics.median(
                row["seconds_per_step"] / seconds_per_step(runs["uniform"][row["seed"]]) for row in rows
            ),
        }
    return result


def plot(task: str, runs: dict[str, dict[int, dict]], path: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    colors = dict(zip(runs, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for arm, by_seed in runs.items():
        for index, record in enumerate(by_seed.values()):
            for ax, x in zip(axes, ("step", "train_seconds")):
                ax.plot(
                    [p[x] for p in record["curve"]],
                    [p[METRIC] for p in record["curve"]],
                    color=colors[arm],
                    alpha=0.8,
                    marker=".",
                    label=arm if index == 0 else None,
                )
    for ax, label in zip(axes, ("optimizer steps", "training seconds (evaluation excluded, scoring included)")):
        ax.set_xlabel(label)
        ax.set_ylabel("dev accuracy")
        ax.set_title(f"{task.upper()}: one line per seed")
        ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the runs, the summary and the plots")
    parser.add_argument("--tasks", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--arms", nargs="+", default=["uniform", "cached", "select"], choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--evaluations", type=bounded(int, 0), default=8, help="dev evaluations over the uniform run")
    parser.add_argument(
        "--select_steps",
        type=bounded(float, 0),
        default=1.0,
        help="select and uniform_short run this fraction of uniform's steps (0.75 tests the 0.75x goal)",
    )
    parser.add_argument(
        "--mmr_lambda", type=bounded(float, 0, inclusive=True), default=0.0, help="MMR's lambda, in every arm"
    )
    parser.add_argument("--batch_size", type=bounded(int, 0), default=32)
    parser.add_argument("--learning_rate", type=bounded(float, 0), default=1e-4)
    parser.add_argument(
        "--train_size", type=bounded(int, 0), help="train on this fixed random subset instead of the recipe's"
    )
    parser.add_argument("--epochs", type=bounded(int, 0), help="epochs of the uniform run instead of the recipe's")
    parser.add_argument("--glue_dir", default=DEFAULT_GLUE_DIR)
    options = parser.parse_args()
    arms = ["uniform"] + [arm for arm in options.arms if arm != "uniform"]
    import matplotlib

    matplotlib.use("Agg")
    for task in options.tasks:
        recipe = {
            "train_size": options.train_size or RECIPES[task]["train_size"],
            "epochs": options.epochs or RECIPES[task]["epochs"],
        }
        train, dev = task_splits(task, recipe["train_size"], glue_dir=options.glue_dir)
        steps = math.ceil(len(train) / options.batch_size) * recipe["epochs"]
        eval_every = max(1, steps // options.evaluations)
        runs: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
        for seed in options.seeds:
            for arm in arms:
                training = arm_training(options, recipe["epochs"], steps, arm, seed, eval_every)
                path = os.path.join(options.out, "runs", task, f"{arm}_seed{seed}.json")
                runs[arm][seed] = fine_tune_once(path, task, train, dev, training, arm=arm, seed=seed)
        summary = {
            # where the data and results lie does not decide the results, and differs from clone to clone
            "options": {key: value for key, value in vars(options).items() if key not in ("out", "glue_dir")},
            "train_examples": len(train),
            "dev_examples": len(dev),
            "uniform_steps": steps,
            "eval_every": eval_every,
            "arms": summarize(runs, options.seeds),
        }
        plot(task, runs, os.path.join(options.out, f"{task}_curves.png"))
        lines = [
            f"{task.upper()}: {len(train)} train examples, {steps} uniform steps, dev every {eval_every} steps, seeds "
            + " ".join(map(str, options.seeds)),
            "",
            "| arm | final dev acc. (mean) | reached uniform's final | steps / uniform | seconds / uniform | "
            + "seconds per step / uniform |",
            "|---|---|---|---|---|---|",
        ]
        for arm, row in summary["arms"].items():
            ratios = [row["median_steps_ratio"], row["median_seconds_ratio"]]
            ratios = ["—" if value is None else f"{value:.2f}" for value in ratios]
            lines.append(
                f"| {arm} | {row['final_mean']:.4f} | {row['reached']} | {ratios[0]} | {ratios[1]} "
                f"| {row['seconds_per_step_ratio']:.2f} |"
            )
        lines.append("\nRatios are medians over the seeds that reached the target.\n")
        with open(os.path.join(options.out, f"{task}_time_to_accuracy.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
        with open(os.path.join(options.out, f"{task}_time_to_accuracy.md"), "w") as handle:
            handle.write("\n".join(lines))
        print("\n".join(lines))


if __name__ == "__main__":
    main()
