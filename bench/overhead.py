#!/usr/bin/env python
"""What MMR and MMS sampling cost per step, against the plain Trainer, on real MRPC with the packaged MiniLM.

Arms: ``plain`` (transformers.Trainer), ``mmr`` (MMRTrainer, mmr_lambda 0.1, uniform sampling),
``select`` and ``cached`` (MMRTrainer with that mms_selection, mmr_lambda 0.1). Every arm runs
in its own process (so peak resident memory is its own), with the same seed, batch size and
dynamic padding; repetitions are interleaved (plain, mmr, select, cached, plain, ...) so that
machine drift cancels, and each arm is compared with the plain run of the same repetition.

Throughput is the examples trained on per second of the median timed step (the first steps
are warm-up and not timed; the median resists the bursts of a shared machine; the mean is
reported too); for select mode that excludes the scored candidates, so its scoring cost shows.
The last line printed is one JSON object with the median ratios.

    python bench/overhead.py --quick            # < 10 minutes on 2 CPU cores
    python bench/overhead.py --repeats 5 --steps 60
    python bench/overhead.py --quick --arms select --pool_factor 4 --scoring_batch_size 16
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from common import bounded

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ("plain", "mmr", "select", "cached")


def child(arm: str, steps: int, warmup: int, batch: int, glue_dir: str, select: dict) -> dict:
    """Train one arm for ``steps`` steps and measure it (runs in its own process)."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    sys.path.insert(0, ROOT)
    from hf_mmr import MMRTrainer, MMRTrainingArguments
    from hf_mmr.glue import load_glue_tsv
    from hf_mmr import default_model_dir

    torch.manual_seed(0)
    model_dir = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train = load_glue_tsv(glue_dir, "mrpc", ["train"])["train"]
    train = train.map(
        lambda b: tokenizer(b["sentence1"], b["sentence2"], truncation=True, max_length=128), batched=True
    )
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)

    class Clock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    clock = Clock()
    common = {
        "output_dir": os.path.join("/tmp", f"hf_mmr_overhead_{arm}_{os.getpid()}"),
        "max_steps": steps,
        "per_device_train_batch_size": batch,
        "learning_rate": 5e-5,
        "seed": 42,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": steps,
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
    }
    if arm == "plain":
        trainer_cls, args = Trainer, TrainingArguments(**common)
    else:
        selection = arm if arm in ("select", "cached") else "none"
        trainer_cls = MMRTrainer
        args = MMRTrainingArguments(**common, mmr_lambda=0.1, mms_selection=selection, mms_anneal_epochs=0, **select)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    trainer.add_callback(clock)
    trainer.train()
    timed = clock.times[warmup - 1 :]
    step_seconds = [later - earlier for earlier, later in itertools.pairwise(timed)]
    return {
        "arm": arm,
        # The median step: robust to the bursts of a shared machine, which the mean is not.
        "train_samples_per_second": batch / statistics.median(step_seconds),
        "mean_train_samples_per_second": len(step_seconds) * batch / (timed[-1] - timed[0]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "timed_steps": len(timed) - 1,
    }


def run_arm(arm: str, options: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        arm,
        "--steps",
        str(options.steps),
        "--warmup",
        str(options.warmup),
        "--batch",
        str(options.batch),
        "--glue_dir",
        options.glue_dir,
        "--pool_factor",
        str(options.pool_factor),
    ]
    if options.scoring_batch_size:
        command += ["--scoring_batch_size", str(options.scoring_batch_size)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"arm {arm} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repetitions of 20 steps (under 10 minutes here)")
    parser.add_argument("--repeats", type=bounded(int, 0), default=5)
    parser.add_argument("--steps", type=bounded(int, 0), default=60)
    parser.add_argument("--warmup", type=bounded(int, 0, inclusive=True), default=5, help="first steps not timed")
    parser.add_argument("--batch", type=bounded(int, 0), default=16)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument(
        "--glue_dir", default=os.environ.get("GLUE_DIR", os.path.join(ROOT, "..", "shared", "data", "glue"))
    )
    parser.add_argument(
        "--pool_factor", type=bounded(int, 0), default=10, help="select's mms_pool_factor (the RESULTS figures: 10)"
    )
    parser.add_argument(
        "--scoring_batch_size", type=bounded(int, 0), help="select's mms_scoring_batch_size (default: the trainer's)"
    )
    parser.add_argument("--output", help="also write the JSON result to this file")
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        select = {"mms_pool_factor": options.pool_factor, "mms_scoring_batch_size": options.scoring_batch_size}
        print(json.dumps(child(options.child, options.steps, options.warmup, options.batch, options.glue_dir, select)))
        return
    if not os.path.isdir(os.path.join(options.glue_dir, "MRPC")):
        raise SystemExit(f"--glue_dir {options.glue_dir!r} has no MRPC/ folder")
    if options.quick:
        options.repeats, options.steps = 3, 20
    if options.warmup >= options.steps:
        parser.error(f"--warmup {options.warmup} must be below --steps {options.steps}")
    arms = ["plain"] + [arm for arm in options.arms if arm != "plain"]
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    start = time.time()
    for repeat in range(options.repeats):
        for arm in arms:
            runs[arm].append(run_arm(arm, options))
            print(
                f"repeat {repeat + 1}/{options.repeats} {arm:7s} "
                f"{runs[arm][-1]['train_samples_per_second']:7.2f} samples/s "
                f"{runs[arm][-1]['peak_rss_mib']:8.0f} MiB peak",
                flush=True,
            )
    result: dict = {
        "steps": options.steps,
        "warmup_steps": options.warmup,
        "batch": options.batch,
        "pool_factor": options.pool_factor,
        "scoring_batch_size": options.scoring_batch_size,
        "repeats": options.repeats,
        "total_seconds": round(time.time() - start, 1),
        "arms": {},
    }
    for arm in arms:
        result["arms"][arm] = {
            "train_samples_per_second": summary([r["train_samples_per_second"] for r in runs[arm]]),
            "peak_rss_mib": summary([r["peak_rss_mib"] for r in runs[arm]]),
        }
        if arm == "plain":
            continue
        throughput = [
            r["train_samples_per_second"] / p["train_samples_per_second"] for r, p in zip(runs[arm], runs["plain"])
        ]
        memory = [r["peak_rss_mib"] / p["peak_rss_mib"] for r, p in zip(runs[arm], runs["plain"])]
        result["arms"][arm]["throughput_ratio"] = summary(throughput)
        result["arms"][arm]["peak_memory_ratio"] = summary(memory)
        result[f"{arm}_throughput_ratio"] = round(statistics.median(throughput), 4)
        result[f"{arm}_peak_memory_ratio"] = round(statistics.median(memory), 4)
    if options.output:
        with open(options.output, "w") as handle:
            json.dump(result, handle, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
