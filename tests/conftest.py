"""Shared helpers: tiny models built from configs (no download), synthetic data, one trainer factory, real GLUE."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, TrainerCallback

# Parallel workers (pytest -n auto) share the cores: each worker, and every script or worker it starts, uses
# its share. More threads than cores make OpenMP's waiting threads spin against each other, which is far
# slower than one thread each.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _threads = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)

GLUE_DIR = os.environ.get("GLUE_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "glue"))

# model_type -> path of the final linear layer of its sequence-classification head
HEAD_PATHS = {
    "bert": "classifier",
    "roberta": "classifier.out_proj",
    "xlm-roberta": "classifier.out_proj",
    "electra": "classifier.out_proj",
    "distilbert": "classifier",
    "deberta-v2": "classifier",
    "albert": "classifier",
    "mpnet": "classifier.out_proj",
    "modernbert": "classifier",
}

_SIZES = {
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 37},
    "albert": {"embedding_size": 16},
    "modernbert": {"global_attn_every_n_layers": 1, "local_attention": 16},
}


def tiny_model(model_type: str, num_labels: int = 3, seed: int = 0, **overrides) -> torch.nn.Module:
    """A randomly initialised 2-layer classifier of the given architecture, small enough for unit tests."""
    sizes = {
        "vocab_size": 100,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
        "num_labels": num_labels,
        "pad_token_id": 0,
    }
    sizes.update(_SIZES.get(model_type, {}))
    sizes.update(overrides)
    config = AutoConfig.for_model(model_type, **sizes)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config)


def available_model_types() -> list[str]:
    from transformers import CONFIG_MAPPING

    return [model_type for model_type in HEAD_PATHS if model_type in CONFIG_MAPPING]


@pytest.fixture(scope="session")
def glue_dir() -> str:
    if not os.path.isdir(os.path.join(GLUE_DIR, "MRPC")):
        pytest.fail(f"real GLUE data not found in {GLUE_DIR}: set GLUE_DIR to the folder holding MRPC/, RTE/, ...")
    return GLUE_DIR


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a script or worker a test starts: offline, quiet tokenizers, plus ``extra``."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def free_port() -> int:
    """A TCP port no process listens on now, for a test's own process group."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "run_glue_mmr.py")


def run_script(*args: str, env: dict[str, str] | None = None, cwd: str = ROOT, timeout: int = 600):
    """``python run_glue_mmr.py ARGS`` as a user types it, in ``cwd``; its exit code and output are the test's."""
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        check=False,
        capture_output=True,
        text=True,
        env=subprocess_env(**(env or {})),
        timeout=timeout,
        cwd=cwd,
    )


NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}

# What every unit test's trainer shares: a fast, quiet run that saves nothing.
QUIET = {
    "learning_rate": 1e-3,
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": "none",
    "disable_tqdm": True,
}


def synthetic_dataset(n=32, num_labels=3, length=12, seed=0):
    """``n`` random token sequences of one length with random labels (unit tests only)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, length), generator=g)
    labels = torch.randint(0, num_labels, (n,), generator=g)
    return [
        {"input_ids": ids[i], "attention_mask": torch.ones(length, dtype=torch.long), "labels": labels[i]}
        for i in range(n)
    ]


def make_trainer(tmp_path, model=None, dataset=None, trainer_cls=None, args_cls=None, **settings):
    """A trainer (``MMRTrainer`` by default) over a tiny BERT and synthetic data, not yet trained."""
    from hf_mmr import MMRTrainer, MMRTrainingArguments

    args = (args_cls or MMRTrainingArguments)(output_dir=str(tmp_path), **{**QUIET, **settings})
    model = model if model is not None else tiny_model("bert", num_labels=3, seed=1)
    num_labels = getattr(getattr(model, "config", None), "num_labels", 3)
    return (trainer_cls or MMRTrainer)(
        model=model,
        args=args,
        train_dataset=dataset if dataset is not None else synthetic_dataset(num_labels=num_labels),
    )


def step_logs(trainer):
    """The training-step entries of the log history."""
    return [entry for entry in trainer.state.log_history if "loss" in entry]


class LambdaLog(TrainerCallback):
    """Records each training run's (mmr/lambda, mmr/penalty) at its first logged step: one entry per trial."""

    def __init__(self):
        self.trials = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "mmr/lambda" in logs and state.global_step == 1:
            self.trials.append((logs["mmr/lambda"], logs["mmr/penalty"]))


def search_two_trials(output_dir, **settings):
    """A 2-trial ``hyperparameter_search`` over ``mmr_hp_space`` on a tiny model: (LambdaLog, its result)."""
    import optuna

    from hf_mmr import MMRTrainer, MMRTrainingArguments
    from hf_mmr.search import mmr_hp_space

    args = MMRTrainingArguments(output_dir=str(output_dir), max_steps=2, **{**QUIET, **settings})
    trainer = MMRTrainer(
        model_init=lambda: tiny_model("bert", num_labels=3, seed=1),
        args=args,
        train_dataset=synthetic_dataset(n=16),
        eval_dataset=synthetic_dataset(n=8, seed=1),
    )
    log = LambdaLog()
    trainer.add_callback(log)
    best = trainer.hyperparameter_search(
        hp_space=mmr_hp_space,
        n_trials=2,
        direction="minimize",
        backend="optuna",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    return log, best


def run_worker(main, *args):
    """Run a distributed test worker's ``main`` on one thread, shut its process group down, and leave without
    running the interpreter's teardown: gloo's threads can still abort it ("terminate called without an active
    exception") after the work is done and written, which would fail a finished run."""
    torch.set_num_threads(1)
    main(*args)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# A script that runs run_glue_mmr.main(ARGS) with SIGTERM sent to itself at step 2 from inside METHOD, by the
# processes for which WHEN holds (ARGS None: the command line's own).
SIGNAL_INSIDE = """
import os, signal, sys
sys.argv[0] = "run_glue_mmr.py"
sys.path.insert(0, {root!r})
from hf_mmr import MMRTrainer
import run_glue_mmr

original = getattr(MMRTrainer, {method!r})

def interrupted(self, *args, **kwargs):
    if self.state.global_step == 2 and {when} and not getattr(self, "_signalled", False):
        self._signalled = True
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while this method runs to its end
    return original(self, *args, **kwargs)

setattr(MMRTrainer, {method!r}, interrupted)
run_glue_mmr.main({args!r})
"""
