"""Run under `accelerate launch --num_processes 2 --cpu`: a 2-trial MMR search on a tiny model.

Each process writes the mmr/lambda its trials trained with and what hyperparameter_search returned
to OUT/rank{r}.json.
"""

import json
import os
import sys

import optuna
import torch
from transformers import TrainerCallback

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from conftest import QUIET, synthetic_dataset, tiny_model

from hf_mmr import MMRTrainer, MMRTrainingArguments
from hf_mmr.search import mmr_hp_space


class LambdaLog(TrainerCallback):
    def __init__(self):
        self.lambdas = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "mmr/lambda" in logs and state.global_step == 1:
            self.lambdas.append(logs["mmr/lambda"])


def main(out: str) -> None:
    args = MMRTrainingArguments(output_dir=out, per_device_train_batch_size=4, max_steps=2, use_cpu=True, **QUIET)
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
    record = {"lambdas": log.lambdas, "best": None if best is None else best.hyperparameters}
    with open(os.path.join(out, f"rank{args.process_index}.json"), "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
