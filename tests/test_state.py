"""The checkpoint-state protocol: every piece saved and loaded one way, one error for other training data,
and a checkpoint's soundness read once per run."""

import os
import time

import pytest
import torch
from conftest import make_trainer, synthetic_dataset

from hf_mmr import CheckpointError, ResumeMismatchError, recovery
from hf_mmr.recording import MarginRecorder
from hf_mmr.sampling import MarginCache
from hf_mmr.state import load_state, save_state

FIXED = {"per_device_train_batch_size": 4, "max_steps": 4, "save_strategy": "steps", "save_steps": 2}


@pytest.mark.parametrize("piece", [MarginCache, MarginRecorder])
def test_a_piece_round_trips_and_refuses_another_number_of_examples(tmp_path, piece):
    saved = piece(6)
    if piece is MarginCache:
        saved.update(torch.tensor([1, 4]), torch.tensor([0.5, 2.0]))
        saved.plan_batches = [3, 2]
    else:
        saved.add(torch.tensor([1, 4]), torch.rand(len(saved.state_dict()["sums"]) + 2 + 2, 2).double())
    save_state(saved, str(tmp_path))
    restored = piece(6)
    assert load_state(restored, str(tmp_path))
    for name, value in saved.state_dict().items():
        if torch.is_tensor(value):
            torch.testing.assert_close(restored.state_dict()[name], value, equal_nan=True, rtol=0, atol=0)
        else:
            assert restored.state_dict()[name] == value
    with pytest.raises(ResumeMismatchError, match=f"{piece.FILE_NAME} records 6 training examples but .* has 5"):
        load_state(piece(5), str(tmp_path))
    assert not load_state(piece(6), str(tmp_path / "elsewhere"))  # no file: nothing restored, no error


@pytest.mark.parametrize("settings", [{"mms_selection": "cached"}, {"record_margins": True}])
def test_resuming_with_other_training_data_is_one_error(tmp_path, settings):
    make_trainer(tmp_path, None, synthetic_dataset(n=16), **FIXED, **settings).train()
    fewer = make_trainer(tmp_path, None, synthetic_dataset(n=12), **{**FIXED, "max_steps": 6}, **settings)
    with pytest.raises(ResumeMismatchError, match="records 16 training examples but the training set has 12") as caught:
        fewer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    assert isinstance(caught.value, CheckpointError)


def test_a_sound_folder_at_rest_is_read_once_until_a_file_changes(tmp_path, monkeypatch):
    make_trainer(tmp_path, None, synthetic_dataset(n=16), **FIXED).train()
    folder = str(tmp_path / "checkpoint-4")
    past = time.time() - 60
    for name in os.listdir(folder):
        os.utime(os.path.join(folder, name), (past, past))
    reads = []
    check = recovery._checkpoint_problem
    monkeypatch.setattr(recovery, "_checkpoint_problem", lambda *a: reads.append(a) or check(*a))
    assert recovery.checkpoint_problem(folder) is None and recovery.checkpoint_problem(folder) is None
    assert len(reads) == 1
    with open(os.path.join(folder, "optimizer.pt"), "r+b") as handle:  # damaged after it was found sound
        handle.truncate(os.path.getsize(handle.name) // 2)
    assert "optimizer.pt" in recovery.checkpoint_problem(folder) and len(reads) == 2


def test_a_folder_just_written_is_read_every_time(tmp_path, monkeypatch):
    make_trainer(tmp_path, None, synthetic_dataset(n=16), **FIXED).train()
    folder = str(tmp_path / "checkpoint-4")
    os.utime(os.path.join(folder, "trainer_state.json"))  # now: within the file system clock's resolution
    reads = []
    check = recovery._checkpoint_problem
    monkeypatch.setattr(recovery, "_checkpoint_problem", lambda *a: reads.append(a) or check(*a))
    recovery.checkpoint_problem(folder)
    recovery.checkpoint_problem(folder)
    assert len(reads) == 2
