"""Run under `accelerate launch --num_processes 2 --cpu`: a few select-mode steps on a tiny model.

Each process writes what it scored, what it trained on and the gathered scores to OUT/rank{r}.json.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from conftest import run_worker, synthetic_dataset, tiny_model

from hf_mmr import MMRTrainer, MMRTrainingArguments
from hf_mmr.sampling import INDEX_KEY


class Recorder(MMRTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = {"scored": [], "trained": [], "gathered_pool": [], "gathered_scores": []}
        score, gather = self.selection.score_pool, self.selection.gather_pool

        def score_pool(model, pool):
            scores, predicted = score(model, pool)
            self.record["scored"].append(pool[INDEX_KEY].tolist())
            return scores, predicted

        def gather_pool(pool, scores, predicted):
            gathered, all_scores, all_predicted = gather(pool, scores, predicted)
            self.record["gathered_pool"].append(gathered[INDEX_KEY].tolist())
            self.record["gathered_scores"].append(all_scores.tolist())
            return gathered, all_scores, all_predicted

        self.selection.score_pool, self.selection.gather_pool = score_pool, gather_pool

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.record["trained"].append(inputs[INDEX_KEY].tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def main(out: str) -> None:
    args = MMRTrainingArguments(
        output_dir=out,
        per_device_train_batch_size=4,
        max_steps=3,
        mms_selection="select",
        mms_pool_factor=3,
        mmr_lambda=0.1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=5,
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Recorder(
        model=tiny_model("bert", num_labels=3, seed=1), args=args, train_dataset=synthetic_dataset(n=96, length=10)
    )
    trainer.train()
    trainer.record["log_history"] = trainer.state.log_history
    with open(os.path.join(out, f"rank{args.process_index}.json"), "w") as handle:
        json.dump(trainer.record, handle)


if __name__ == "__main__":
    run_worker(main, sys.argv[1])
