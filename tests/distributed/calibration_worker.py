"""Run as one process or under `accelerate launch --num_processes 2 --cpu`: fit a temperature on a fixed model.

Nothing is trained, so one and two processes hold the same model; each process writes its
calibration report and the world size to OUT/rank{r}.json.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from conftest import make_trainer, run_worker, synthetic_dataset, tiny_model


def main(out: str) -> None:
    data = synthetic_dataset(n=600, length=10, seed=3)
    generator = torch.Generator().manual_seed(0)
    for example in data:  # 60 % class 0, which the head favours too strongly: a finite T > 1 fits
        other = int(torch.randint(1, 3, (1,), generator=generator))
        example["labels"] = torch.tensor(0 if torch.rand(1, generator=generator) < 0.6 else other)
    model = tiny_model("bert", num_labels=3, seed=1)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([4.0, 0.0, 0.0]))
    trainer = make_trainer(out, model, data, use_cpu=True, calibration="temperature", per_device_eval_batch_size=7)
    report = trainer.calibrate()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{trainer.args.process_index}.json"), "w") as handle:
        json.dump({**report, "world_size": trainer.args.world_size}, handle)


if __name__ == "__main__":
    run_worker(main, sys.argv[1])
