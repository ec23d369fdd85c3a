#!/usr/bin/env python
"""Does MMS selection save training time? Dev accuracy against steps and seconds, uniform sampling as the reference.

Arms, all ``MMRTrainer`` with the same model, data, batch size, learning rate and seeds, MMR off:

* ``uniform``: the Trainer's own shuffled sampler, ``EPOCHS`` epochs;
* ``cached``: ``mms_selection cached``, ``EPOCHS`` epochs: the first is uniform and records every
  example's MMS, later ones are pruned (fewer steps), the last ``mms_anneal_epochs`` are whole. Its
  keep quantile, keep fraction and anneal are chosen per task on a held-out slice of train with the
  first seed: the setting with the fewest steps whose held-out accuracy is within ``TOLERANCE`` of
  uniform's on the same slice (if none is, the most accurate one);
* ``uniform_short``: the Trainer's sampler for as many steps as ``cached`` took with the same seed, its
  learning rate decaying over those steps: the control that tells whether cached's accuracy comes
  from its shorter schedule or from the examples it keeps;
* ``select_r{r}``: ``mms_selection select`` with pool factor ``r`` (each step trains on the lowest-MMS
  batch of ``r`` batches scored by an extra forward pass), for as many steps as uniform.

Arms are interleaved seed by seed so that machine drift falls on all of them alike. The dev set is
scored every ``uniform steps / --evaluations`` steps; training seconds exclude evaluation and
include MMS scoring. For each seed the target is that seed's final uniform dev accuracy; each arm
reports the first step and second at which it reaches it, and its total training seconds, as
ratios to uniform's. Every run is kept as JSON under ``OUT/runs/<task>/`` and skipped on a rerun
with the same settings, so the study can run task by task. Results per task:
``OUT/<task>_time_to_accuracy.json`` and ``.md``, and ``OUT/<task>_curves.png``.

    python bench/time_to_accuracy.py --out docs/selection_study --tasks sst2
    python bench/time_to_accuracy.py --out docs/selection_study --tasks mrpc --arms uniform cached uniform_short
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics

from common import DEFAULT_GLUE_DIR, METRIC, bounded, fine_tune_once, mean_std, paired_difference, task_splits

# Training set (None: all of train) per task; every arm trains EPOCHS epochs (select: as many steps).
RECIPES = {"sst2": {"train_size": 4000}, "mrpc": {"train_size": None}}
EPOCHS = 3
CACHED_GRID = [
    {"mms_keep_quantile": quantile, "mms_keep_fraction": fraction, "mms_anneal_epochs": anneal}
    for quantile in (0.2, 0.4)
    for fraction in (0.2, 0.4)
    for anneal in (0.25, 0.5)
]
# Held-out accuracy a cached setting may lose against uniform and still count as equal.
TOLERANCE = 0.003
POOL_FACTORS = (2, 4, 10)
# In the order they run for each seed: uniform_short needs cached's step count.
ARMS = ("uniform", "cached", "uniform_short", *(f"select_r{r}" for r in POOL_FACTORS))


def arm_arguments(arm: str, cached: dict | None = None) -> dict:
    """The MMR arguments of an arm: ``uniform(_short)``, ``cached`` (with its chosen setting) or ``select_r{r}``."""
    if arm in ("uniform", "uniform_short"):
        return {"mms_selection": "none"}
    if arm == "cached":
        return {"mms_selection": "cached", **(cached or {})}
    return {"mms_selection": "select", "mms_pool_factor": int(arm.removeprefix("select_r"))}


def cached_name(setting: dict) -> str:
    return "cached_q{mms_keep_quantile:g}_f{mms_keep_fraction:g}_a{mms_anneal_epochs:g}".format(**setting)


def choose_cached(heldout: dict[str, dict], uniform: dict) -> dict:
    """The grid entry with the fewest steps within ``TOLERANCE`` of uniform's held-out accuracy."""
    target = uniform["final"][METRIC] - TOLERANCE
    scored = [(setting, heldout[cached_name(setting)]) for setting in CACHED_GRID]
    equal = [(setting, record) for setting, record in scored if record["final"][METRIC] >= target - 1e-9]
    if equal:
        return min(equal, key=lambda pair: (pair[1]["steps"], -pair[1]["final"][METRIC]))[0]
    return max(scored, key=lambda pair: (pair[1]["final"][METRIC], -pair[1]["steps"]))[0]


def first_reach(curve: list[dict], target: float) -> dict | None:
    """The first evaluation point at or above ``target``."""
    return next((point for point in curve if point[METRIC] >= target - 1e-9), None)


def ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else round(value / reference, 3)


def seconds_per_step(record: dict) -> float:
    return record["train_seconds"] / record["steps"]


def summarize(runs: dict[str, dict[int, dict]], seeds: list[int]) -> dict:
    """Per arm: final accuracy, paired difference to uniform, and when (steps, seconds) it reached uniform's final."""
    result: dict = {}
    for arm, by_seed in runs.items():
        rows = []
        for seed in sorted(by_seed):
            uniform = runs["uniform"][seed]
            target = uniform["final"][METRIC]
            reference = first_reach(uniform["curve"], target)
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
                    "total_seconds_ratio": ratio(by_seed[seed]["train_seconds"], uniform["train_seconds"]),
                    "total_steps_ratio": ratio(by_seed[seed]["steps"], uniform["steps"]),
                    "seconds_per_step": seconds_per_step(by_seed[seed]),
                }
            )
        reached = [row for row in rows if row["reached"]]
        finals = [row["final"] for row in rows]
        mean, std = mean_std(finals)
        totals = [row["total_seconds_ratio"] for row in rows]
        result[arm] = {
            "seeds": rows,
            "reached": f"{len(reached)}/{len(rows)}",
            "final_mean": mean,
            "final_std": std,
            "difference": paired_difference(finals, [row["target"] for row in rows]),
            "median_steps_ratio": statistics.median(r["steps_ratio"] for r in reached) if reached else None,
            "median_seconds_ratio": statistics.median(r["seconds_ratio"] for r in reached) if reached else None,
            "total_seconds_ratio": {"median": statistics.median(totals), "min": min(totals), "max": max(totals)},
            "total_steps_ratio": statistics.median(row["total_steps_ratio"] for row in rows),
            "seconds_per_step_ratio": statistics.median(
                row["seconds_per_step"] / seconds_per_step(runs["uniform"][row["seed"]]) for row in rows
            ),
        }
    if "cached" in runs and "uniform_short" in runs:
        # Same steps and schedule, different examples: what the choice of examples adds or costs.
        seeds = sorted(runs["uniform_short"])
        finals = {arm: [runs[arm][seed]["final"][METRIC] for seed in seeds] for arm in ("cached", "uniform_short")}
        result["cached"]["minus_uniform_short"] = paired_difference(finals["cached"], finals["uniform_short"])
    return result


def plot(task: str, runs: dict[str, dict[int, dict]], path: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    colors = dict(zip(runs, ("tab:blue", "tab:orange", "tab:gray", "tab:green", "tab:red", "tab:purple")))
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


def table(task: str, summary: dict, seeds: list[int]) -> list[str]:
    lines = [
        (
            f"{task.upper()}: {summary['train_examples']} train examples, {summary['uniform_steps']} uniform steps, "
            f"dev every {summary['eval_every']} steps; cached: {summary['cached_setting']}"
        ),
        "",
        (
            "| arm | seeds | final dev acc., mean ± sd | − uniform, 95 % CI | reached uniform's final | steps to it / "
            "uniform | seconds to it / uniform | total seconds / uniform, median (range) | total steps / uniform |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, row in summary["arms"].items():
        to_target = [
            "—" if value is None else f"{value:.2f}"
            for value in (row["median_steps_ratio"], row["median_seconds_ratio"])
        ]
        low, high = row["difference"]["ci95"]
        difference = "" if arm == "uniform" else f"{row['difference']['mean']:+.4f} [{low:+.4f}, {high:+.4f}]"
        total = row["total_seconds_ratio"]
        lines.append(
            f"| {arm} | {len(row['seeds'])} | {row['final_mean']:.4f} ± {row['final_std']:.4f} | {difference} | "
            f"{row['reached']} | {to_target[0]} | {to_target[1]} | {total['median']:.2f} ({total['min']:.2f}–"
            f"{total['max']:.2f}) | {row['total_steps_ratio']:.2f} |"
        )
    lines.append("\nRatios to the target are medians over the seeds that reached it; totals over every seed.\n")
    if "minus_uniform_short" in summary["arms"].get("cached", {}):
        versus = summary["arms"]["cached"]["minus_uniform_short"]
        low, high = versus["ci95"]
        lines.append(
            f"Cached − uniform_short, seed by seed (same steps, examples chosen by MMS or uniformly): "
            f"{versus['mean']:+.4f} [{low:+.4f}, {high:+.4f}] over {versus['n']} seeds.\n"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the runs, the summary and the plots")
    parser.add_argument("--tasks", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44, 45, 46])
    parser.add_argument("--select_seeds", nargs="+", type=int, default=[42, 43, 44], help="seeds of the select arms")
    parser.add_argument("--select_tasks", nargs="+", default=["sst2"], choices=list(RECIPES))
    parser.add_argument("--evaluations", type=bounded(int, 0), default=12, help="dev evaluations over the uniform run")
    parser.add_argument("--heldout_fraction", type=bounded(float, 0, below=1), default=0.2)
    parser.add_argument("--batch_size", type=bounded(int, 0), default=32)
    parser.add_argument("--learning_rate", type=bounded(float, 0), default=1e-4)
    parser.add_argument("--glue_dir", default=DEFAULT_GLUE_DIR)
    options = parser.parse_args()
    if "uniform_short" in options.arms and "cached" not in options.arms:
        parser.error("--arms uniform_short needs cached too: it trains as many steps as cached took with the same seed")
    import matplotlib

    matplotlib.use("Agg")
    for task in options.tasks:
        summary = run_task(options, task)
        plot(task, summary.pop("runs"), os.path.join(options.out, f"{task}_curves.png"))
        lines = table(task, summary, options.seeds)
        with open(os.path.join(options.out, f"{task}_time_to_accuracy.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
        with open(os.path.join(options.out, f"{task}_time_to_accuracy.md"), "w") as handle:
            handle.write("\n".join(lines))
        print("\n".join(lines))


def run_task(options: argparse.Namespace, task: str) -> dict:
    """The held-out choice of cached's setting, then every arm and seed on dev."""
    base = {"batch_size": options.batch_size, "learning_rate": options.learning_rate, "mmr_lambda": 0.0}
    folder = os.path.join(options.out, "runs", task)
    train, heldout = task_splits(task, RECIPES[task]["train_size"], options.heldout_fraction, options.glue_dir)
    first = options.seeds[0]
    final_only = {**base, "seed": first, "eval_steps": 10**9, "num_train_epochs": EPOCHS}

    def heldout_run(name: str, arguments: dict) -> dict:
        path = os.path.join(folder, f"heldout_{name}_seed{first}.json")
        return fine_tune_once(path, task, train, heldout, {**final_only, **arguments}, arm=name, seed=first)

    cached = None
    if "cached" in options.arms:
        uniform_heldout = heldout_run("uniform", arm_arguments("uniform"))
        grid = {cached_name(s): heldout_run(cached_name(s), arm_arguments("cached", s)) for s in CACHED_GRID}
        cached = choose_cached(grid, uniform_heldout)
    train, dev = task_splits(task, RECIPES[task]["train_size"], glue_dir=options.glue_dir)
    steps = math.ceil(len(train) / options.batch_size) * EPOCHS
    eval_every = max(1, steps // options.evaluations)
    wanted = {"uniform", *options.arms}
    arms = [arm for arm in ARMS if arm in wanted and (not arm.startswith("select") or task in options.select_tasks)]
    runs: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
    for seed in options.seeds:
        for arm in arms:
            if arm.startswith("select") and seed not in options.select_seeds:
                continue
            if arm.startswith("select"):
                length = {"max_steps": steps}
            elif arm == "uniform_short":
                length = {"max_steps": runs["cached"][seed]["steps"]}
            else:
                length = {"num_train_epochs": EPOCHS}
            training = {**base, "seed": seed, "eval_steps": eval_every, **length, **arm_arguments(arm, cached)}
            name = cached_name(cached) if arm == "cached" else arm
            path = os.path.join(folder, f"{name}_seed{seed}.json")
            runs[arm][seed] = fine_tune_once(path, task, train, dev, training, arm=arm, seed=seed)
    return {
        # where the data and results lie does not decide the results, and differs from clone to clone
        "options": {key: value for key, value in vars(options).items() if key not in ("out", "glue_dir")},
        "train_examples": len(train),
        "dev_examples": len(dev),
        "uniform_steps": steps,
        "eval_every": eval_every,
        "cached_setting": cached,
        "cached_grid_heldout": None
        if cached is None
        else {name: {"accuracy": record["final"][METRIC], "steps": record["steps"]} for name, record in grid.items()}
        | {"uniform": {"accuracy": uniform_heldout["final"][METRIC], "steps": uniform_heldout["steps"]}},
        "arms": summarize(runs, options.seeds),
        "runs": runs,
    }


if __name__ == "__main__":
    main()
