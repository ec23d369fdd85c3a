"""Damaged and interrupted checkpoints, paths and config values: one line naming the file or key, nothing lost.

The checkpoints are real: a tiny model's for the library's checks, and a run of run_glue_mmr.py on real RTE
killed with SIGKILL in the middle of a save for the command-line cases.
"""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, make_trainer, run_script, subprocess_env, synthetic_dataset

from hf_mmr import CheckpointError
from hf_mmr.recovery import COMPLETE_MARKER, check_resumable, checkpoint_problem, last_complete_checkpoint


def fingerprint(folder):
    """Every file below ``folder`` with its size and hash: what the user has on disk."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = hashlib.sha1(handle.read()).hexdigest()
    return found


def halve(path):
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def edit_state(folder, **fields):
    """Hand-edit a checkpoint's trainer_state.json, as a user might."""
    state = json.loads((folder / "trainer_state.json").read_text())
    (folder / "trainer_state.json").write_text(json.dumps({**state, **fields}))


def cached_trainer(out, **settings):
    fixed = {"per_device_train_batch_size": 4, "max_steps": 4, "save_strategy": "steps", "save_steps": 2}
    return make_trainer(out, None, synthetic_dataset(n=16), mms_selection="cached", **{**fixed, **settings})


@pytest.fixture
def saved(tmp_path):
    """A finished cached-mode run with two sound checkpoints (steps 2 and 4)."""
    cached_trainer(tmp_path).train()
    return tmp_path


@pytest.mark.parametrize(
    "damage,file,words",
    [
        (lambda f: halve(f / "model.safetensors"), "model.safetensors", "cut short"),
        (lambda f: (f / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}"), "model.safetensors", "header"),
        (lambda f: (f / "trainer_state.json").write_text('{"global_step": 4,'), "trainer_state.json", "not valid JSON"),
        (lambda f: (f / "trainer_state.json").write_text("{}"), "trainer_state.json", "'global_step'"),
        (lambda f: edit_state(f, global_step="4"), "trainer_state.json", "global_step = '4', not a whole number"),
        (lambda f: edit_state(f, epoch=[1]), "trainer_state.json", "epoch = [1], not a number"),
        (lambda f: edit_state(f, log_history={}), "trainer_state.json", "log_history that is not a list"),
        (lambda f: edit_state(f, steps=4), "trainer_state.json", "'steps', which TrainerState does not know"),
        (lambda f: halve(f / "optimizer.pt"), "optimizer.pt", "cut short"),
        (lambda f: halve(f / "rng_state.pth"), "rng_state.pth", "cut short"),
        (lambda f: (f / "mms_state.pt").unlink(), "mms_state.pt", "missing"),
        (lambda f: (f / COMPLETE_MARKER).unlink(), COMPLETE_MARKER, "did not finish saving"),
    ],
)
def test_a_damaged_checkpoint_is_named_and_passed_over(saved, caplog, damage, file, words):
    newest = saved / "checkpoint-4"
    assert checkpoint_problem(str(newest), ("mms_state.pt",)) is None
    damage(newest)
    before = fingerprint(saved)
    problem = checkpoint_problem(str(newest), ("mms_state.pt",))
    assert problem is not None and file in problem and words in problem
    with caplog.at_level(logging.WARNING, logger="hf_mmr.recovery"):
        assert last_complete_checkpoint(str(saved), ("mms_state.pt",), warn=True) == str(saved / "checkpoint-2")
    assert f"Skipping checkpoint-4: {problem}" in caplog.text
    with pytest.raises(CheckpointError, match=f"cannot resume: .*{file}.*resume from .*checkpoint-2 instead"):
        check_resumable(str(newest), ("mms_state.pt",))
    assert fingerprint(saved) == before  # nothing deleted or rewritten


def test_automatic_resume_takes_the_newest_sound_checkpoint(saved, caplog):
    halve(saved / "checkpoint-4" / "model.safetensors")
    trainer = cached_trainer(saved, max_steps=5)
    with caplog.at_level(logging.WARNING, logger="hf_mmr.recovery"):
        trainer.train(resume_from_checkpoint=True)
    assert "Skipping checkpoint-4" in caplog.text
    assert trainer.state.global_step == 5
    logged = [e["step"] for e in trainer.state.log_history if "loss" in e]
    assert logged[:2] == [1, 2] and logged[2] == 3  # resumed after step 2, not after the damaged step 4


def test_resuming_cached_mode_by_path_needs_its_mms_state(saved):
    (saved / "checkpoint-4" / "mms_state.pt").unlink()
    with pytest.raises(CheckpointError, match="mms_state.pt is missing.*checkpoint-2 instead"):
        cached_trainer(saved).train(resume_from_checkpoint=str(saved / "checkpoint-4"))
    # Uniform sampling has no MMS cache to lose: the same checkpoint resumes.
    plain = make_trainer(saved, None, synthetic_dataset(n=16), per_device_train_batch_size=4, max_steps=5)
    plain.train(resume_from_checkpoint=str(saved / "checkpoint-4"))
    assert plain.state.global_step == 5


# ---------------------------------------------------------------- the command line
KILLED_MID_SAVE = """
import os, signal, sys
sys.argv[0] = "run_glue_mmr.py"
sys.path.insert(0, {root!r})
from transformers import Trainer
import run_glue_mmr

original = Trainer._save_optimizer_and_scheduler

def killed(self, output_dir):
    if self.state.global_step == 6:  # the weights of checkpoint-6 are written, its optimizer is not
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, output_dir)

Trainer._save_optimizer_and_scheduler = killed
run_glue_mmr.main({args!r})
"""


def command(glue_dir, out, *more):
    return [
        "--task_name", "rte", "--glue_dir", glue_dir, "--do_train", "--max_steps", "6",
        "--per_device_train_batch_size", "4", "--max_seq_length", "64", "--pad_to_max_length", "false",
        "--mmr_lambda", "0.1", "--mms_selection", "cached", "--save_strategy", "steps", "--save_steps", "2",
        "--disable_tqdm", "true", "--report_to", "none", "--output_dir", str(out), *more,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def killed_run(glue_dir, tmp_path_factory):
    """run_glue_mmr.py killed by SIGKILL while saving checkpoint-6: checkpoints 2 and 4 are sound, 6 is not."""
    out = tmp_path_factory.mktemp("killed") / "out"
    driver = KILLED_MID_SAVE.format(root=ROOT, args=command(glue_dir, out))
    result = subprocess.run(
        [sys.executable, "-c", driver], check=False, capture_output=True, text=True, timeout=600, env=subprocess_env()
    )
    assert result.returncode == -9, result.stderr[-3000:]
    assert not (out / "checkpoint-6" / COMPLETE_MARKER).exists() and (out / "checkpoint-6").is_dir()
    return out


def in_process(args, capsys):
    """``run_glue_mmr.main(args)`` in this process (imports are slow), as a finished command: (code, stderr)."""
    import run_glue_mmr

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_glue_mmr.main(args)
    return subprocess.CompletedProcess(args, exit_info.value.code, "", capsys.readouterr().err)


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "out")
    return tmp_path / "out"


def assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert ": error: " in last, last
    for word in words:
        assert word in last, last


def test_the_same_command_resumes_past_a_killed_save_and_a_cut_weights_file(killed_run, glue_dir, tmp_path):
    out = copy_of(killed_run, tmp_path)
    halve(out / "checkpoint-4" / "model.safetensors")
    kept = fingerprint(out / "checkpoint-2")
    result = run_script(*command(glue_dir, out))
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "Skipping checkpoint-6: " in log and "did not finish saving" in log
    assert "Skipping checkpoint-4: " in log and "model.safetensors is" in log
    assert f"resuming training at {out / 'checkpoint-2'}" in log
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
    assert fingerprint(out / "checkpoint-2") == kept
    # The resumed run saved steps 4 and 6 again, whole this time.
    assert (
        checkpoint_problem(str(out / "checkpoint-4")) is None and checkpoint_problem(str(out / "checkpoint-6")) is None
    )


@pytest.mark.parametrize(
    "damage,checkpoint,words,real",
    [
        (lambda o: (o / "checkpoint-4" / "trainer_state.json").write_text("{not json"), 4,
         ["checkpoint-4/trainer_state.json", "not valid JSON", "checkpoint-2 instead"], True),
        (lambda o: None, 6, ["checkpoint-6", "did not finish saving", "checkpoint-4 instead"], False),
        (lambda o: (o / "checkpoint-4" / "mms_state.pt").unlink(), 4,
         ["checkpoint-4/mms_state.pt is missing", "checkpoint-2 instead"], False),
    ],
)  # fmt: skip
def test_resuming_a_damaged_checkpoint_by_path_is_refused(
    killed_run, glue_dir, tmp_path, capsys, damage, checkpoint, words, real
):
    out = copy_of(killed_run, tmp_path)
    damage(out)
    before = fingerprint(out)
    args = command(glue_dir, out, "--resume_from_checkpoint", str(out / f"checkpoint-{checkpoint}"))
    assert_one_line_error(run_script(*args) if real else in_process(args, capsys), *words)
    assert fingerprint(out) == before


def test_an_output_dir_below_a_file_is_refused_before_loading_data(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_script("--task_name", "rte", "--glue_dir", str(tmp_path / "nowhere"), "--do_train",
                    "--output_dir", str(tmp_path / "notes.txt" / "run1"))  # fmt: skip
    assert_one_line_error(result, "--output_dir", "notes.txt", "which is a file")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "flag,make,words",
    [
        ("--model_name_or_path", lambda d: None, "is a folder without config.json"),
        ("--tokenizer_name", lambda d: None, "is a folder without tokenizer_config.json or tokenizer.json"),
        ("--config_name", lambda d: (d / "config.json").write_text("{}"), "cannot load --config_name"),
    ],
)
def test_a_model_folder_that_cannot_be_loaded_is_named(tmp_path, capsys, glue_dir, flag, make, words):
    folder = tmp_path / "my-model"
    folder.mkdir()
    make(folder)
    args = ["--task_name", "rte", "--glue_dir", glue_dir, "--do_train", "--output_dir", str(tmp_path / "out")]
    assert_one_line_error(in_process([*args, flag, str(folder)], capsys), flag, "my-model", words)
    kept = ["config.json"] if flag == "--config_name" else []
    assert not (tmp_path / "out").exists() and os.listdir(folder) == kept


@pytest.mark.parametrize(
    "line,words,real",
    [
        ("mmr_lambda: [0.1, 0.2]", ["'mmr_lambda'", "a number", "[0.1, 0.2]"], True),
        ("per_device_train_batch_size: {a: 1}", ["'per_device_train_batch_size'", "an integer"], False),
        ("do_train: maybe", ["'do_train'", "true or false"], False),
        ("mmr_form: 3", ["'mmr_form'", "one of 'weights', 'margin'", "got 3"], False),
        ("num_train_epochs: two", ["'num_train_epochs'", "'two'"], False),
        ("mmr_search_forms: [weights, {a: 1}]", ["'mmr_search_forms'", "a list of a string"], False),
    ],
)
def test_a_config_value_of_the_wrong_type_names_key_and_file(tmp_path, capsys, line, words, real):
    config = tmp_path / "run.yaml"
    config.write_text(f"task_name: rte\noutput_dir: {tmp_path / 'out'}\n{line}\n")
    assert_one_line_error(run_script(str(config)) if real else in_process([str(config)], capsys), str(config), *words)
    assert not (tmp_path / "out").exists()


def test_config_values_that_fit_their_fields_are_taken(tmp_path):
    """YAML reads 1e-4 (without a dot) as a string, a single word for a list field is a list of one."""
    from run_glue_mmr import parse_args

    config = tmp_path / "run.yaml"
    config.write_text(f"task_name: rte\noutput_dir: {tmp_path}\nlearning_rate: 1e-4\nmmr_search_forms: margin\n")
    _, data_args, training_args = parse_args([str(config)])
    assert training_args.learning_rate == 1e-4 and data_args.mmr_search_forms == ["margin"]
    lines = ["task_name: rte", f"output_dir: {tmp_path}", "max_train_samples: 100.0", "num_train_epochs: 2.0"]
    config.write_text("\n".join([*lines, "model_revision: 1.0"]) + "\n")
    model_args, data_args, training_args = parse_args([str(config)])  # YAML's whole floats fit int fields
    assert data_args.max_train_samples == 100 and training_args.num_train_epochs == 2.0
    assert model_args.model_revision == "1.0"  # a string field keeps the value as written


def test_a_config_path_that_is_a_folder_is_named(tmp_path, capsys):
    (tmp_path / "run.yaml").mkdir()
    assert_one_line_error(in_process([str(tmp_path / "run.yaml")], capsys), "run.yaml", "is a folder")
