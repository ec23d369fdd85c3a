#!/usr/bin/env python
"""What MMR, MMS sampling and margin recording cost per step, against the plain Trainer.

Arms: ``plain`` (transformers.Trainer), ``mmr`` and ``mmr_margin`` (MMRTrainer, mmr_lambda 0.1, the
``weights`` and the ``margin`` form, uniform sampling), ``select`` and ``cached`` (MMRTrainer with that
mms_selection, mmr_lambda 0.1) and ``record`` (MMRTrainer with record_margins and MMR off). Every arm
runs in its own process (so peak memory is its own), with the same seed, batch size and data;
repetitions are interleaved (plain, mmr, ..., plain, ...) so that machine drift cancels, and each
arm is compared with the plain run of the same repetition.

Data and model: by default real MRPC with dynamic padding and the packaged MiniLM. With
``--data synthetic``, random token ids of exactly ``--seq_len`` tokens, and ``--architecture``
builds the model from its config with random weights (speed does not depend on them): no file and
no network needed, as on a bare GPU machine. ``--device cuda --bf16`` trains there in bf16.

Throughput is the examples trained on per second of the median timed step (the first steps
are warm-up and not timed; the median resists the bursts of a shared machine; the mean is
reported too); for select mode that excludes the scored candidates, so its scoring cost shows.
Peak memory is the process's peak resident set on CPU, the peak of allocated GPU memory on CUDA.
The last line printed is one JSON object with the median ratios.

    python bench/overhead.py --quick            # < 10 minutes on 2 CPU cores
    python bench/overhead.py --repeats 5 --steps 60
    python bench/overhead.py --quick --arms select --pool_factor 4 --scoring_batch_size 16
    python bench/overhead.py --data synthetic --architecture bert-base --device cuda --bf16 --batch 32
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

from common import bounded, provenance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ("plain", "mmr", "mmr_margin", "select", "cached", "record")
# BERT encoders built from their configs for --data synthetic: MiniLM-L6's and bert-base's shapes, and a tiny one.
ARCHITECTURES = {
    "minilm": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37},
}
# Synthetic training examples per training batch: enough for several epochs of every mode.
SYNTHETIC_BATCHES = 20


def synthetic_data(batch: int, seq_len: int, vocab_size: int) -> list[dict]:
    """Random token sequences of ``seq_len`` ids with random binary labels (fixed length: no padding)."""
    import torch

    g = torch.Generator().manual_seed(0)
    n = batch * SYNTHETIC_BATCHES
    ids = torch.randint(1000, vocab_size, (n, seq_len), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    mask = torch.ones(seq_len, dtype=torch.long)
    return [{"input_ids": ids[i], "attention_mask": mask, "labels": labels[i]} for i in range(n)]


def child(arm: str, options: argparse.Namespace, select: dict) -> dict:
    """Train one arm for ``options.steps`` steps and measure it (runs in its own process)."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    sys.path.insert(0, ROOT)
    from hf_mmr import MMRTrainer, MMRTrainingArguments

    torch.manual_seed(0)
    cuda = options.device == "cuda"
    if options.data == "synthetic":
        config = BertConfig(**ARCHITECTURES[options.architecture], num_labels=2)
        model = AutoModelForSequenceClassification.from_config(config)
        train, tokenizer = synthetic_data(options.batch, options.seq_len, config.vocab_size), None
        collator = default_data_collator  # every example has seq_len tokens
    else:
        from transformers import AutoTokenizer

        from hf_mmr import default_model_dir
        from hf_mmr.glue import load_glue_tsv

        tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
        train = load_glue_tsv(options.glue_dir, "mrpc", ["train"])["train"]
        train = train.map(
            lambda b: tokenizer(b["sentence1"], b["sentence2"], truncation=True, max_length=options.seq_len),
            batched=True,
        )
        model = AutoModelForSequenceClassification.from_pretrained(default_model_dir(), num_labels=2)
        collator = DataCollatorWithPadding(tokenizer)

    class Clock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()  # the step's kernels, not just their launch
            self.times.append(time.perf_counter())

    clock = Clock()
    common = {
        "output_dir": os.path.join("/tmp", f"hf_mmr_overhead_{arm}_{os.getpid()}"),
        "max_steps": options.steps,
        "per_device_train_batch_size": options.batch,
        "learning_rate": 5e-5,
        "seed": 42,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": options.steps,
        "disable_tqdm": True,
        "dataloader_pin_memory": cuda,
        "use_cpu": not cuda,
        "bf16": options.bf16,
    }
    if arm == "plain":
        trainer_cls, args = Trainer, TrainingArguments(**common)
    else:
        trainer_cls = MMRTrainer
        arguments = {
            "mmr_lambda": 0.0 if arm == "record" else 0.1,
            "mmr_form": "margin" if arm == "mmr_margin" else "weights",
            "mms_selection": arm if arm in ("select", "cached") else "none",
            "record_margins": arm == "record",
            "mms_anneal_epochs": 0,
        }
        args = MMRTrainingArguments(**common, **arguments, **select)
    trainer = trainer_cls(
        model=model, args=args, train_dataset=train, data_collator=collator, processing_class=tokenizer
    )
    trainer.add_callback(clock)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = clock.times[options.warmup - 1 :]
    step_seconds = [later - earlier for earlier, later in itertools.pairwise(timed)]
    peak = (
        torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "arm": arm,
        # The median step: robust to the bursts of a shared machine, which the mean is not.
        "train_samples_per_second": options.batch / statistics.median(step_seconds),
        "mean_train_samples_per_second": len(step_seconds) * options.batch / (timed[-1] - timed[0]),
        "peak_memory_mib": peak,
        "timed_steps": len(timed) - 1,
    }


def run_arm(arm: str, options: argparse.Namespace) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", arm]
    for name in ("steps", "warmup", "batch", "glue_dir", "pool_factor", "data", "architecture", "seq_len", "device"):
        command += [f"--{name}", str(getattr(options, name))]
    if options.scoring_batch_size:
        command += ["--scoring_batch_size", str(options.scoring_batch_size)]
    if options.bf16:
        command.append("--bf16")
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
    parser.add_argument("--data", choices=("mrpc", "synthetic"), default="mrpc", help="real MRPC or random token ids")
    parser.add_argument(
        "--architecture", choices=list(ARCHITECTURES), default="minilm", help="--data synthetic's model"
    )
    parser.add_argument("--seq_len", type=bounded(int, 0), default=128, help="max_seq_length (synthetic: every length)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="train in bf16 mixed precision")
    parser.add_argument("--output", help="also write the JSON result to this file")
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        select = {"mms_pool_factor": options.pool_factor, "mms_scoring_batch_size": options.scoring_batch_size}
        print(json.dumps(child(options.child, options, select)))
        return
    if options.data == "mrpc" and not os.path.isdir(os.path.join(options.glue_dir, "MRPC")):
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
                f"{runs[arm][-1]['peak_memory_mib']:8.0f} MiB peak",
                flush=True,
            )
    result: dict = {
        "data": options.data,
        "architecture": options.architecture if options.data == "synthetic" else "packaged MiniLM-L6",
        "seq_len": options.seq_len,
        "device": options.device,
        "bf16": options.bf16,
        "steps": options.steps,
        "warmup_steps": options.warmup,
        "batch": options.batch,
        "pool_factor": options.pool_factor,
        "scoring_batch_size": options.scoring_batch_size,
        "repeats": options.repeats,
        "total_seconds": round(time.time() - start, 1),
        "command": "python bench/overhead.py " + " ".join(sys.argv[1:]),
        "provenance": provenance(),
        "arms": {},
    }
    for arm in arms:
        result["arms"][arm] = {
            "train_samples_per_second": summary([r["train_samples_per_second"] for r in runs[arm]]),
            "peak_memory_mib": summary([r["peak_memory_mib"] for r in runs[arm]]),
        }
        if arm == "plain":
            continue
        throughput = [
            r["train_samples_per_second"] / p["train_samples_per_second"] for r, p in zip(runs[arm], runs["plain"])
        ]
        memory = [r["peak_memory_mib"] / p["peak_memory_mib"] for r, p in zip(runs[arm], runs["plain"])]
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
