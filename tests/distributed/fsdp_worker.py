"""One MMR step and one select-mode scoring on a tiny BERT, whole on 1 process or FSDP2-sharded on 2.

Argument: OUT. For each MMR form, on 2 processes every transformer layer, the classifier on its own (so that its
weight is freed right after its forward, the hardest case) and the root are ``fully_shard``-ed; each
process takes its half of the same global batch of 8. Writes OUT/{world}_{form}.pt from the main
process: the penalty, the loss averaged over processes, every full gradient, the select pool's
scores by example and the selected examples.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from conftest import NO_DROPOUT, run_worker, synthetic_dataset, tiny_model

from hf_mmr import MMRTrainer, MMRTrainingArguments
from hf_mmr.sampling import INDEX_KEY


class Recorder(MMRTrainer):
    """Keeps the last value recorded under each diagnostic name, and the examples this process scored."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorded, self.scored = {}, None
        score = self.selection.score_pool

        def score_pool(model, pool):
            scores, predicted = score(model, pool)
            self.scored = (pool[INDEX_KEY], scores)
            return scores, predicted

        self.selection.score_pool = score_pool

    def add_diagnostic(self, name, value):
        super().add_diagnostic(name, value)
        self.recorded[name] = float(value)


def shard(model: torch.nn.Module) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (int(os.environ["WORLD_SIZE"]),))
    for layer in model.bert.encoder.layer:
        fully_shard(layer, mesh=mesh)
    fully_shard(model.classifier, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh)


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def main(out: str) -> None:
    for form in ("weights", "margin"):
        one_step(out, form)


def one_step(out: str, form: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = MMRTrainingArguments(
        output_dir=out,
        per_device_train_batch_size=8 // world,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        average_tokens_across_devices=False,
        mmr_lambda=0.5,
        mmr_form=form,
        mms_selection="select",
        mms_pool_factor=2,
    )
    model = tiny_model("bert", num_labels=3, seed=3, initializer_range=0.5, **NO_DROPOUT)
    if world > 1:
        shard(model)
    trainer = Recorder(model=model, args=args, train_dataset=synthetic_dataset(n=8))
    rows = slice(args.process_index * 8 // world, (args.process_index + 1) * 8 // world)
    data = synthetic_dataset(n=8, length=10, seed=4)
    batch = {key: torch.stack([example[key] for example in data])[rows] for key in data[0]}
    batch[INDEX_KEY] = torch.arange(8)[rows]

    model.train()
    gather = trainer.accelerator.gather
    selected = gather(trainer.selection.select_from_pool(model, dict(batch))[INDEX_KEY])
    scored, scores = (gather(tensor) for tensor in trainer.scored)
    loss = trainer.compute_loss(model, {k: v for k, v in batch.items() if k != INDEX_KEY})
    loss.backward()
    mean_loss = trainer.accelerator.reduce(loss.detach(), reduction="mean")
    grads = {name: full(param.grad) for name, param in model.named_parameters()}
    if args.process_index == 0:
        torch.save(
            {
                "penalty": trainer.recorded["mmr/penalty"],
                "loss": float(mean_loss),
                "grads": grads,
                "scores": dict(zip(scored.tolist(), scores.tolist())),
                "selected": sorted(selected.tolist()),
            },
            os.path.join(out, f"{world}_{form}.pt"),
        )


if __name__ == "__main__":
    run_worker(main, sys.argv[1])
