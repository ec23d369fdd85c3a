"""Choosing MMR's setting with Trainer.hyperparameter_search, and MMRTrainer combined with a user's own Trainer."""

import json
import os
import sys

import pytest
import torch
from conftest import NO_DROPOUT, make_trainer, search_two_trials, step_logs, tiny_model
from transformers import Trainer

from hf_mmr import MMRTrainer
from hf_mmr.search import make_mmr_hp_space

HERE = os.path.dirname(os.path.abspath(__file__))


def test_two_trials_each_train_with_their_own_setting(tmp_path):
    pytest.importorskip("optuna")
    log, best = search_two_trials(tmp_path, per_device_train_batch_size=8)
    assert len(log.trials) == 2
    (first, first_penalty), (second, second_penalty) = log.trials
    assert first != second and all(1e-4 <= value <= 0.1 for value in (first, second))
    # The logs round to 6 digits.
    assert any(best.hyperparameters["mmr_lambda"] == pytest.approx(value, rel=1e-3) for value in (first, second))
    assert first_penalty > 0 and second_penalty > 0  # the penalty was on in each trial


def test_hp_space_fixes_single_choices_and_checks_its_ranges():
    optuna = pytest.importorskip("optuna")
    trial = optuna.trial.FixedTrial({"mmr_lambda": 0.01})
    assert make_mmr_hp_space(forms=["margin"], detach_radius=[True])(trial) == {
        "mmr_lambda": 0.01,
        "mmr_form": "margin",
        "mmr_detach_radius": True,
    }
    for bad in ({"lambda_range": (0.0, 1.0)}, {"lambda_range": (0.1, 0.01)}, {"forms": ["ratio"]}, {"forms": []}):
        with pytest.raises(ValueError):
            make_mmr_hp_space(**bad)


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


@pytest.mark.e2e
def test_search_on_two_processes(tmp_path):
    pytest.importorskip("optuna")
    from test_distributed import launch

    result = launch(os.path.join(HERE, "distributed", "search_worker.py"), str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert len(rank0["lambdas"]) == 2 and rank0["lambdas"] == rank1["lambdas"]  # both ranks ran the same trials
    assert rank0["lambdas"][0] != rank0["lambdas"][1]
    assert rank0["best"] is not None and rank1["best"] is None  # optuna's study lives on rank 0


def test_missing_optuna_is_a_one_line_error(glue_dir, tmp_path, monkeypatch, capsys):
    import run_glue_mmr

    monkeypatch.setitem(sys.modules, "optuna", None)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sentinel").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        run_glue_mmr.main(
            [
                "--task_name",
                "rte",
                "--glue_dir",
                glue_dir,
                "--do_train",
                "--max_train_samples",
                "20",
                "--mmr_search_trials",
                "2",
                "--output_dir",
                str(tmp_path / "out"),
                "--overwrite_output_dir",
                "true",
            ]
        )
    assert exit_info.value.code == 2
    assert 'pip install "hf-mmr[search]"' in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["sentinel"]


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
