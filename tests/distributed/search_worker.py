"""Run under `accelerate launch --num_processes 2 --cpu`: a 2-trial MMR search on a tiny model.

Each process writes the mmr/lambda its trials trained with and what hyperparameter_search returned
to OUT/rank{r}.json.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from conftest import run_worker, search_two_trials


def main(out: str) -> None:
    log, best = search_two_trials(out, per_device_train_batch_size=4, use_cpu=True)
    record = {"lambdas": [value for value, _ in log.trials], "best": None if best is None else best.hyperparameters}
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    run_worker(main, sys.argv[1])
