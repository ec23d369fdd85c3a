"""Run under `accelerate launch --num_processes 2 --cpu`: 3 cached-mode epochs with gradient accumulation.

Each process writes to OUT/rank{r}.json the DataLoader's length at the start of every epoch, the
plan, the examples it trained on, the learning rate after the last step and the global step.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from conftest import make_trainer, run_worker, synthetic_dataset

from hf_mmr import MMRTrainer
from hf_mmr.sampling import INDEX_KEY


class Recorder(MMRTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = {"dataloader_lengths": [], "trained": []}

    def _run_epoch(self, *args, train_dataloader, epoch, **kwargs):
        self.selection.epoch_sampler.set_epoch(epoch)
        self.record["dataloader_lengths"].append(len(train_dataloader))
        return super()._run_epoch(*args, train_dataloader=train_dataloader, epoch=epoch, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.record["trained"].append(inputs[INDEX_KEY].tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def main(out: str) -> None:
    settings = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "num_train_epochs": 3, "seed": 5}
    cached = {"mms_selection": "cached", "mms_keep_quantile": 0.25, "mms_keep_fraction": 0.2, "mms_anneal_epochs": 1}
    trainer = make_trainer(out, None, synthetic_dataset(n=80, length=10), Recorder, use_cpu=True, **settings, **cached)
    trainer.train()
    plan = trainer.selection.epochs
    trainer.record.update(
        plan_batches=plan.batches,
        plan_steps=plan.steps,
        max_steps=trainer.state.max_steps,
        global_step=trainer.state.global_step,
        last_lr=trainer.lr_scheduler.get_last_lr()[0],
        cache_scored=int((~trainer.selection.cache.scores.isnan()).sum()),
    )
    with open(os.path.join(out, f"rank{trainer.args.process_index}.json"), "w") as handle:
        json.dump(trainer.record, handle)


if __name__ == "__main__":
    run_worker(main, sys.argv[1])
