#!/usr/bin/env python
"""Do the training margins find label errors? ``record_margins`` against the known detectors, on flipped labels.

For each task (SST-2's 4,000-example subset, TREC-6's whole train) and noise level (10, 20, 30 % of
the training labels flipped to a uniformly drawn other class by ``flip_labels``, noise seed 0, dev
clean), each seed fine-tunes the packaged MiniLM on the noisy train with ``record_margins`` on
(the form study's recipe, 3 epochs, no MMR) and ranks the training examples by each score of the
table against the true flips:

* ``aum``: the mean signed geometric margin of the given label (low = suspect);
* ``logit_aum``: AUM as Pleiss et al. 2020 define it, the mean of ``z_y - max_{j != y} z_j``;
* ``loss``: the mean training loss (high = suspect; the baseline of Chong et al. 2022);
* ``confidence``: dataset cartography's mean ``p_y`` (low = suspect; Swayamdipta et al. 2020).

Per run: the AUPRC and the precision at k = number of flips of each score, and the precision and
recall of the rule ``suspect = aum < 0``. The final model is also scored on the flipped examples
against their noisy labels (``probe_accuracy``: how much of the noise it memorized).

The payoff, at 20 % noise: each seed retrains on the noisy train without its suspects
(``cleaned``) and without the true flips (``oracle``); clean dev accuracy of noisy / cleaned /
oracle. One JSON record per run under ``OUT/runs/<task>/``, skipped on a rerun with the same
settings; ``OUT/summary.{json,md}`` and ``OUT/<task>_*.png`` cover what is stored.

    python bench/label_errors.py --out docs/label_errors
    python bench/label_errors.py --out docs/label_errors --tasks trec --summary_only
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from common import (
    DEFAULT_GLUE_DIR,
    DEFAULT_TREC_DIR,
    METRIC,
    fine_tune,
    flipped_indices,
    mean_std,
    paired_difference,
    run_once,
    task_splits,
    write_summary,
)

TRAIN_SIZES = {"sst2": 4000, "trec": None}
NOISE_LEVELS = (0.1, 0.2, 0.3)
PAYOFF_NOISE = 0.2
NOISE_SEED = 0
# The form study's recipe, 3 epochs, no MMR: only the data differs between runs of a task.
RECIPE = {"batch_size": 32, "learning_rate": 1e-4, "num_train_epochs": 3.0, "max_seq_length": 128}
# Each score, oriented so that a larger value is more suspect.
SCORES = {
    "aum": lambda table: -table["aum"],
    "logit_aum": lambda table: -table["logit_aum"],
    "loss": lambda table: table["mean_loss"],
    "confidence": lambda table: -table["confidence"],
}


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AUPRC as average precision: the mean, over the positives, of the precision at each one's rank.

    Ties are broken by position (a stable sort of the scores, largest first); unscored (NaN) examples rank last.
    """
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    hits = positives[order].astype(np.float64)
    if not hits.sum():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def precision_at(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    """The share of true positives among the ``k`` largest scores."""
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    return float(positives[order[:k]].mean()) if k else float("nan")


def detection(table: dict[str, list], flipped: list[int]) -> dict[str, float]:
    """Every score's AUPRC and precision at k = number of flips; precision and recall of ``aum < 0``."""
    columns = {name: np.asarray([np.nan if v is None else v for v in values]) for name, values in table.items()}
    positives = np.zeros(len(columns["aum"]), dtype=bool)
    positives[flipped] = True
    result = {}
    for name, score in SCORES.items():
        values = score(columns)
        result[f"auprc_{name}"] = round(average_precision(values, positives), 5)
        result[f"precision_at_k_{name}"] = round(precision_at(values, positives, len(flipped)), 5)
    suspect = columns["aum"] < 0  # NaN (never trained on) is no suspect
    result["rule_suspects"] = int(suspect.sum())
    result["rule_precision"] = round(float(positives[suspect].mean()), 5) if suspect.any() else float("nan")
    result["rule_recall"] = round(float(suspect[positives].mean()), 5)
    result["noise_rate"] = round(float(positives.mean()), 5)  # AUPRC of a random ranking
    return result


def arm_name(arm: dict) -> str:
    """A file-name-safe label of an arm's own settings: ``baseline``, ``ls0.1``, ``weights_0.01``, ``margin_0.003``."""
    if arm.get("label_smoothing_factor"):
        return f"ls{arm['label_smoothing_factor']:g}"
    if arm.get("mmr_lambda"):
        return f"{arm['mmr_form']}_{arm['mmr_lambda']:g}"
    return "baseline"


def run(
    options: argparse.Namespace,
    task: str,
    noise: float,
    seed: int,
    variant: str = "noisy",
    arm: dict | None = None,
    heldout_fraction: float = 0.0,
    out: str | None = None,
    train_size: int | None | str = "recipe",
    epochs: float = RECIPE["num_train_epochs"],
) -> dict | None:
    """One run, its record stored under ``out`` (default ``options.out``); None if missing and ``--summary_only``.

    ``variant``: ``noisy`` (the noisy train, margins recorded, the flipped examples probed), ``cleaned``
    (without the noisy run's suspects), ``oracle`` (without the true flips), or ``small`` (a clean subset
    of ``train_size`` examples, as the regime study runs it). ``arm``: the run's own settings
    (``label_smoothing_factor``, or ``mmr_form`` and ``mmr_lambda``); ``heldout_fraction`` > 0 scores the
    run on that slice of the (noisy) train instead of dev. Within a task every other setting is the same.
    """
    arm = arm or {}
    size = TRAIN_SIZES[task] if train_size == "recipe" else train_size
    parts = [f"noise{noise:g}"] + (["heldout"] if heldout_fraction else [])
    parts += [arm_name(arm)] if arm else []
    parts += [variant] if variant != "noisy" else []
    path = os.path.join(out or options.out, "runs", task, "_".join(parts) + f"_seed{seed}.json")
    if options.summary_only and not os.path.isfile(path):
        return None
    train, evaluation = task_splits(
        task, size, heldout_fraction, options.glue_dir, options.trec_dir, label_noise=noise, noise_seed=NOISE_SEED
    )
    flipped = flipped_indices(train)
    removed: list[int] = []
    if variant == "cleaned":
        noisy = run(options, task, noise, seed)
        if noisy is None:
            return None
        removed = [i for i, aum in enumerate(noisy["train_margins"]["aum"]) if aum is not None and aum < 0]
    elif variant == "oracle":
        removed = flipped
    kept = sorted(set(range(len(train))) - set(removed))
    training = {
        "seed": seed,
        "eval_steps": 10**9,
        **RECIPE,
        "num_train_epochs": epochs,
        "mmr_lambda": 0.0,
        "record_margins": variant == "noisy",
        **arm,
    }
    settings = {
        "task": task,
        "variant": variant,
        "train_examples": len(kept),
        "label_noise": noise,
        "noise_seed": NOISE_SEED,
        "label_smoothing_factor": 0.0,
        "mmr_form": "weights",
        **training,
    }
    if heldout_fraction:
        settings["heldout_fraction"] = heldout_fraction
    if size != TRAIN_SIZES[task]:
        settings["train_subset"] = size

    def make() -> dict:
        data = train.select(kept)
        probe = train.select(flipped) if variant == "noisy" and flipped else None
        record = fine_tune(task, data, evaluation, probe=probe, **training)
        record.update(task=task, variant=variant, arm=arm_name(arm), flipped=flipped, removed=removed)
        if probe is not None:
            record["detection"] = detection(record["train_margins"], flipped)
            record["probe_accuracy"] = record["probe"]["probe_accuracy"]
        return record

    return run_once(path, settings, make)


def summarize(options: argparse.Namespace, task: str) -> dict:
    """Per noise level: each score's AUPRC and precision at k (mean ± sd over seeds), the rule, the payoff."""
    result: dict = {"levels": {}, "payoff": None}
    for noise in NOISE_LEVELS:
        records = [r for seed in options.seeds if (r := run(options, task, noise, seed)) is not None]
        if not records:
            continue
        level: dict = {"seeds": [r["settings"]["seed"] for r in records], "flips": len(records[0]["flipped"])}
        for key in records[0]["detection"]:
            level[key] = mean_std([r["detection"][key] for r in records])
        level["dev_accuracy"] = mean_std([r["final"][METRIC] for r in records])
        level["dev_ece"] = mean_std([r["final"]["eval_ece"] for r in records])
        level["probe_accuracy"] = mean_std([r["probe_accuracy"] for r in records])
        result["levels"][f"{noise:g}"] = level
    arms = {
        variant: [run(options, task, PAYOFF_NOISE, seed, variant) for seed in options.seeds]
        for variant in ("noisy", "cleaned", "oracle")
    }
    if all(None not in records for records in arms.values()):
        result["payoff"] = {
            "seeds": options.seeds,
            "removed": {variant: [len(r["removed"]) for r in records] for variant, records in arms.items()},
        }
        for name, key in (("dev_accuracy", METRIC), ("dev_ece", "eval_ece"), ("dev_nll", "eval_nll")):
            values = {variant: [r["final"][key] for r in records] for variant, records in arms.items()}
            result["payoff"][name] = values
            prefix = "" if name == "dev_accuracy" else f"{name[4:]}_"  # accuracy keeps its original keys
            for treated, control in (("cleaned", "noisy"), ("oracle", "noisy"), ("oracle", "cleaned")):
                difference = paired_difference(values[treated], values[control])
                result["payoff"][f"{prefix}{treated}_minus_{control}"] = difference
    return result


def summary_lines(tasks: dict[str, dict]) -> list[str]:
    def cell(pair: tuple[float, float]) -> str:
        return f"{pair[0]:.3f} ± {pair[1]:.3f}"

    lines = [
        "| task | noise | flips | AUPRC −aum | AUPRC −logit_aum | AUPRC loss | AUPRC −confidence | P@k −aum | "
        "P@k −logit_aum | P@k loss | P@k −confidence | aum < 0: precision | recall | dev acc. | dev ECE | "
        "flipped memorized |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, result in tasks.items():
        for noise, level in result["levels"].items():
            lines.append(
                f"| {task} | {noise} | {level['flips']} | "
                + " | ".join(cell(level[f"auprc_{name}"]) for name in SCORES)
                + " | "
                + " | ".join(cell(level[f"precision_at_k_{name}"]) for name in SCORES)
                + f" | {cell(level['rule_precision'])} | {cell(level['rule_recall'])} | "
                f"{cell(level['dev_accuracy'])} | {cell(level['dev_ece'])} | {cell(level['probe_accuracy'])} |"
            )
    lines += ["", f"Payoff at {PAYOFF_NOISE:g} noise (clean dev accuracy, ECE and NLL; mean ± sd over seeds):", ""]
    lines += [
        "| task | metric | noisy | cleaned (aum < 0 removed) | oracle (true flips removed) | "
        "cleaned − noisy, 95 % CI | oracle − noisy | removed by the rule |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, result in tasks.items():
        payoff = result["payoff"]
        if payoff is None:
            continue

        def diff(entry: dict, points: bool) -> str:
            if not points:  # NLL is in nats, not a share
                return f"{entry['mean']:+.3f} [{entry['ci95'][0]:+.3f}, {entry['ci95'][1]:+.3f}]"
            return f"{100 * entry['mean']:+.2f} [{100 * entry['ci95'][0]:+.2f}, {100 * entry['ci95'][1]:+.2f}] points"

        for name, prefix in (("dev_accuracy", ""), ("dev_ece", "ece_"), ("dev_nll", "nll_")):
            values = payoff[name]
            points = name != "dev_nll"
            lines.append(
                f"| {task} | {name[4:]} | {cell(mean_std(values['noisy']))} | {cell(mean_std(values['cleaned']))} | "
                f"{cell(mean_std(values['oracle']))} | {diff(payoff[f'{prefix}cleaned_minus_noisy'], points)} | "
                f"{diff(payoff[f'{prefix}oracle_minus_noisy'], points)} | {payoff['removed']['cleaned']} |"
            )
    return lines


def plot(options: argparse.Namespace, task: str) -> None:
    """AUPRC of each score against the noise level (mean and every seed)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for name in SCORES:
        levels, means = [], []
        for noise in NOISE_LEVELS:
            values = [r["detection"][f"auprc_{name}"] for s in options.seeds if (r := run(options, task, noise, s))]
            if values:
                ax.scatter([noise] * len(values), values, s=10, alpha=0.5)
                levels.append(noise)
                means.append(float(np.mean(values)))
        ax.plot(levels, means, marker="o", label=name)
    ax.plot(NOISE_LEVELS, NOISE_LEVELS, color="grey", linestyle=":", label="random ranking")
    ax.set_xlabel("share of training labels flipped")
    ax.set_ylabel("AUPRC against the true flips")
    ax.set_title(f"{task}: finding the flipped labels")
    ax.legend(fontsize=8)
    fig.savefig(os.path.join(options.out, f"{task}_auprc.png"), dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the runs, the summary and the plots")
    parser.add_argument("--tasks", nargs="+", default=list(TRAIN_SIZES), choices=list(TRAIN_SIZES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--summary_only", action="store_true", help="train nothing; summarize the stored runs")
    parser.add_argument("--glue_dir", default=DEFAULT_GLUE_DIR)
    parser.add_argument("--trec_dir", default=DEFAULT_TREC_DIR)
    options = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    if not options.summary_only:
        for task in options.tasks:  # seed by seed within a level, so that an interrupted study stays paired
            for noise in NOISE_LEVELS:
                for seed in options.seeds:
                    run(options, task, noise, seed)
            for seed in options.seeds:
                for variant in ("cleaned", "oracle"):
                    run(options, task, PAYOFF_NOISE, seed, variant)
    options.summary_only = True
    tasks = {task: summarize(options, task) for task in TRAIN_SIZES}
    tasks = {task: result for task, result in tasks.items() if result["levels"]}
    if not tasks:
        return
    for task in tasks:
        plot(options, task)
    summary = {"recipe": {**RECIPE, "train_sizes": TRAIN_SIZES, "noise_seed": NOISE_SEED}, "tasks": tasks}
    write_summary(options.out, summary, summary_lines(tasks))


if __name__ == "__main__":
    main()
