"""The selection modes as objects: the registry, the uniform default, the settings checks, a mode of one's own."""

import pytest
import torch
from conftest import make_trainer, step_logs

from hf_mmr import MMRTrainer
from hf_mmr.compat import TrainingPlan
from hf_mmr.errors import MMRConfigError
from hf_mmr.modes import MODES, CachedSelection, MicroBatch, PoolSelection, SelectionMode, register_mode
from hf_mmr.sampling import INDEX_KEY, take_rows


@pytest.mark.parametrize(
    ("name", "cls"), [("none", SelectionMode), ("select", PoolSelection), ("cached", CachedSelection)]
)
def test_the_factory_builds_the_mode_mms_selection_names(tmp_path, name, cls):
    trainer = make_trainer(tmp_path, mms_selection=name)
    assert type(trainer.selection) is cls and trainer.selection.name == name
    assert trainer.selection.context is trainer.context  # the mode sees the context, not the trainer
    assert {"none", "select", "cached"} <= set(MODES)


def test_the_uniform_mode_changes_nothing():
    mode = SelectionMode(None)
    batch, loss = {"input_ids": torch.ones(2, 3)}, torch.tensor(0.5)
    assert mode.select(None, batch) is batch and mode.sampler() is None and mode.pool_factor == 1
    micro_batch = MicroBatch(torch.zeros(2, 2), torch.zeros(2), None, torch.zeros(2), 4)
    assert mode.weight_loss(loss, micro_batch) == (loss, None)
    plan = TrainingPlan(1, 2, 3, 4, 5, 6, 7)
    assert mode.plan(plan, None) is plan and mode.resume_position(3, 4) == (3, 4) and mode.epoch_arguments(0) == {}
    assert mode.items_in_batch(7, []) == 7 and not mode.uses_margins


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("mms_selection", "best", "--mms_selection must be one of none, select, cached"),
        ("mms_pool_factor", 0, "--mms_pool_factor"),
        ("mms_scoring_batch_size", 0, "--mms_scoring_batch_size"),
        ("mms_anneal_epochs", float("nan"), "--mms_anneal_epochs"),
        ("mms_keep_quantile", 1.0, "--mms_keep_quantile"),
        ("mms_keep_fraction", 0.0, "--mms_keep_fraction"),
        ("mms_warmup_steps", -1, "--mms_warmup_steps"),
        ("mms_anneal_epochs", -2, "--mms_anneal_epochs"),
    ],
)
def test_each_mode_checks_its_settings_when_the_trainer_is_built(tmp_path, field, value, message):
    with pytest.raises(MMRConfigError, match=message):
        make_trainer(tmp_path, **{field: value})


class FirstHalf(SelectionMode):
    """A user's mode: every step trains on the first half of its batch, the other half never reaches the model."""

    name = "first_half"
    summary = "each step trains on the first half of its batch"
    uses_margins = True  # so that batches carry their example indices

    @classmethod
    def check(cls, args):
        super().check(args)
        if args.mms_selection == cls.name and args.per_device_train_batch_size < 2:
            raise MMRConfigError("--mms_selection first_half needs --per_device_train_batch_size >= 2")

    def select(self, model, inputs):
        inputs = self.context.prepare_inputs(inputs)
        return take_rows(inputs, torch.arange(len(inputs[INDEX_KEY]) // 2))

    def items_in_batch(self, num_items, batch_samples):
        return None if num_items is None else num_items // 2

    def log(self, logs):
        logs["first_half/steps"] = self.context.step


class Watching(MMRTrainer):
    """Records the example indices of every training micro-batch."""

    trained: list

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.trained.append(inputs[INDEX_KEY].tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def test_a_mode_of_ones_own_plugs_into_the_trainer(tmp_path):
    trainer = make_trainer(tmp_path, None, None, Watching, per_device_train_batch_size=8, max_steps=3, logging_steps=1)
    trainer.trained = []
    trainer.selection = FirstHalf(trainer.context)  # set at run time: its uses_margins is honoured
    trainer.train()
    assert [len(batch) for batch in trainer.trained] == [4, 4, 4]
    assert [entry["first_half/steps"] for entry in step_logs(trainer)] == [1, 2, 3]


@pytest.fixture
def first_half_registered():
    register_mode(FirstHalf)  # the one line a new mode adds
    yield
    del MODES[FirstHalf.name]


def test_a_registered_mode_is_a_choice_of_the_command_line_and_of_config_files(tmp_path, first_half_registered, capsys):
    import run_glue_mmr

    common = ["--task_name", "rte", "--output_dir", str(tmp_path / "out")]
    *_, args = run_glue_mmr.parse_args([*common, "--mms_selection", "first_half"])
    assert args.mms_selection == "first_half"
    config = tmp_path / "run.yaml"
    config.write_text(f"task_name: rte\noutput_dir: {tmp_path / 'out'}\nmms_selection: first_half\n")
    assert run_glue_mmr.parse_args([str(config)])[2].mms_selection == "first_half"
    with pytest.raises(MMRConfigError, match="first_half needs --per_device_train_batch_size >= 2"):
        run_glue_mmr.parse_args([*common, "--mms_selection", "first_half", "--per_device_train_batch_size", "1"])
    with pytest.raises(SystemExit):
        run_glue_mmr.parse_args([*common, "--mms_selection", "last_half"])
    assert "invalid choice: 'last_half'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_glue_mmr.parse_args(["--help"])
    assert "'first_half' (each step trains on the first half of its batch)" in " ".join(capsys.readouterr().out.split())

    trainer = make_trainer(tmp_path, None, None, Watching, **{**vars_of(args), "max_steps": 2})
    trainer.trained = []
    trainer.train()
    assert type(trainer.selection) is FirstHalf and [len(b) for b in trainer.trained] == [4, 4]


def vars_of(args):
    """The settings of parsed arguments that a unit test's trainer takes over."""
    return {"mms_selection": args.mms_selection, "per_device_train_batch_size": 8}
