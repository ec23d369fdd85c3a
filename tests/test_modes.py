"""The selection modes as objects: the factory, the uniform default, a user's own mode, and the model card."""

import types

import pytest
import torch
from conftest import make_trainer, step_logs

from hf_mmr import MMRTrainer
from hf_mmr.card import mmr_card_text
from hf_mmr.diagnostics import DiagnosticWindow
from hf_mmr.modes import MODES, CachedSelection, MicroBatch, PoolSelection, SelectionMode, selection_mode
from hf_mmr.sampling import INDEX_KEY, take_rows


@pytest.mark.parametrize(
    ("name", "cls"), [("none", SelectionMode), ("select", PoolSelection), ("cached", CachedSelection)]
)
def test_the_factory_builds_the_mode_mms_selection_names(tmp_path, name, cls):
    trainer = make_trainer(tmp_path, mms_selection=name)
    assert type(trainer.selection) is cls and trainer.selection.name == name and trainer.selection.trainer is trainer
    assert set(MODES) == {"none", "select", "cached"}


def test_the_uniform_mode_changes_nothing():
    mode = selection_mode(types.SimpleNamespace(args=types.SimpleNamespace(mms_selection="none")))
    batch, loss = {"input_ids": torch.ones(2, 3)}, torch.tensor(0.5)
    assert mode.select(None, batch) is batch and mode.sampler() is None and mode.pool_factor == 1
    micro_batch = MicroBatch(torch.zeros(2, 2), torch.zeros(2), None, torch.zeros(2), 4)
    assert mode.weight_loss(loss, micro_batch) == (loss, None)
    assert mode.plan((1, 2), None) == (1, 2) and mode.resume_position(3, 4) == (3, 4) and mode.epoch_arguments(0) == {}
    assert mode.items_in_batch(7, []) == 7 and not mode.uses_margins


class FirstHalf(SelectionMode):
    """A user's mode: every step trains on the first half of its batch, the other half never reaches the model."""

    name = "first_half"
    uses_margins = True  # so that batches carry their example indices

    def select(self, model, inputs):
        inputs = self.trainer._prepare_inputs(inputs)
        return take_rows(inputs, torch.arange(len(inputs[INDEX_KEY]) // 2))

    def items_in_batch(self, num_items, batch_samples):
        return None if num_items is None else num_items // 2

    def log(self, logs):
        logs["first_half/steps"] = self.trainer.state.global_step


def test_a_mode_of_ones_own_plugs_into_the_trainer(tmp_path):
    trained = []

    class Watching(MMRTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                trained.append(inputs[INDEX_KEY].tolist())
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = make_trainer(tmp_path, None, None, Watching, per_device_train_batch_size=8, max_steps=3, logging_steps=1)
    trainer.selection = FirstHalf(trainer)
    trainer.train()
    assert [len(batch) for batch in trained] == [4, 4, 4]
    assert [entry["first_half/steps"] for entry in step_logs(trainer)] == [1, 2, 3]


def test_the_diagnostic_window_averages_and_restarts():
    window = DiagnosticWindow()
    window.add("a", torch.tensor(1.0))
    window.add("a", 3.0)
    window.add("b", torch.tensor(2.0))
    assert window and window.pop_means() == {"a": 2.0, "b": 2.0} and not window
    window.add("a", 5.0)
    assert window.pop_means(lambda means: means * 2) == {"a": 10.0}


def test_the_card_names_the_head_found_and_explains_an_empty_results_section(tmp_path):
    args = make_trainer(tmp_path, mmr_lambda=0.1).args
    trainer_card = "## Training procedure\n\n### Training results\n\n\n\n### Framework versions\n\n- Transformers 5\n"
    text = mmr_card_text(trainer_card, args, "bert.classifier", None, "0.0")
    assert "### Training results\n\nNo evaluation ran during training" in text
    assert "| `mmr_head` | bert.classifier |" in text and "| `mmr_lambda` | 0.1 |" in text
    assert "### Framework versions\n\n- Transformers 5" in text
    with_table = "### Training results\n\n| Epoch | Loss |\n|---|---|\n| 1 | 0.5 |\n\n### Framework versions\n"
    assert mmr_card_text(with_table, args, None, None, "0.0").startswith(with_table)
