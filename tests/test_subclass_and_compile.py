"""MMRTrainer combined with a user's own Trainer subclass, and under torch.compile."""

import pytest
import torch
from conftest import NO_DROPOUT, make_trainer, step_logs, tiny_model
from transformers import Trainer

from hf_mmr import MMRTrainer


class ClassWeighted(Trainer):
    """A user's Trainer: cross-entropy with class weights, computed from the logits."""

    class_weights = torch.tensor([1.0, 3.0, 0.5])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=self.class_weights)
        return (loss, outputs) if return_outputs else loss


class Combined(MMRTrainer, ClassWeighted):
    pass


class WrongOrder(ClassWeighted, MMRTrainer):
    pass


def test_penalty_is_added_to_the_users_own_loss(tmp_path):
    """MMRTrainer first: loss = the user's class-weighted CE + lambda * penalty, not the default CE."""
    runs = {}
    for name, cls in (("theirs", ClassWeighted), ("combined", Combined)):
        trainer = make_trainer(
            tmp_path / name,
            model=tiny_model("bert", num_labels=3, seed=1, **NO_DROPOUT),
            trainer_cls=cls,
            per_device_train_batch_size=8,
            max_steps=1,
            seed=7,
            mmr_lambda=0.5,
        )
        trainer.train()
        runs[name] = step_logs(trainer)[0]
    default_ce = make_trainer(
        tmp_path / "default",
        model=tiny_model("bert", num_labels=3, seed=1, **NO_DROPOUT),
        per_device_train_batch_size=8,
        max_steps=1,
        seed=7,
    )
    default_ce.train()
    theirs, combined = runs["theirs"]["loss"], runs["combined"]
    assert combined["loss"] == pytest.approx(theirs + 0.5 * combined["mmr/penalty"], rel=1e-5)
    assert theirs != pytest.approx(step_logs(default_ce)[0]["loss"], rel=1e-3)  # their loss differs from the default


def test_the_other_order_warns_that_the_penalty_may_be_skipped(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        trainer = make_trainer(
            tmp_path, trainer_cls=WrongOrder, per_device_train_batch_size=8, max_steps=1, mmr_lambda=0.5
        )
    assert "list MMRTrainer first" in caplog.text
    trainer.train()
    assert "mmr/penalty" not in step_logs(trainer)[0]  # their compute_loss never reached MMRTrainer's


@pytest.mark.parametrize("selection", ["none", "select", "cached"])
def test_torch_compile_trains_like_eager(tmp_path, selection):
    """3 MMR steps with torch_compile=True give the eager run's losses and penalties (close, not bitwise)."""
    logs = {}
    for compiled in (False, True):
        trainer = make_trainer(
            tmp_path / str(compiled),
            model=tiny_model("bert", num_labels=3, seed=1, **NO_DROPOUT),
            per_device_train_batch_size=8,
            max_steps=3,
            seed=7,
            mmr_lambda=0.1,
            mms_selection=selection,
            mms_pool_factor=2,
            torch_compile=compiled,
        )
        trainer.train()
        logs[compiled] = step_logs(trainer)
    for eager, compiled in zip(logs[False], logs[True]):
        for key in ("loss", "mmr/penalty", "mmr/radius", "mms/mean"):
            assert compiled[key] == pytest.approx(eager[key], rel=1e-3, abs=1e-5), key
