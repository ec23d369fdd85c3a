"""Complete-checkpoint markers, and SIGTERM during a real run: a checkpoint is saved and the same command resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import SIGNAL_INSIDE, make_trainer, subprocess_env

from hf_mmr.recovery import COMPLETE_MARKER, last_complete_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_checkpoints_are_marked_complete(tmp_path):
    trainer = make_trainer(
        tmp_path,
        per_device_train_batch_size=8,
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        mms_selection="cached",
    )
    trainer.train()
    for step in (1, 2):
        folder = tmp_path / f"checkpoint-{step}"
        assert (folder / COMPLETE_MARKER).is_file() and (folder / "mms_state.pt").is_file()
    assert trainer.state.global_step == 2


@pytest.mark.e2e
def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(glue_dir, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable,
        os.path.join(ROOT, "run_glue_mmr.py"),
        "--task_name",
        "rte",
        "--glue_dir",
        glue_dir,
        "--do_train",
        "--max_steps",
        "12",
        "--per_device_train_batch_size",
        "4",
        "--pad_to_max_length",
        "false",
        "--max_seq_length",
        "64",
        "--mmr_lambda",
        "0.1",
        "--mms_selection",
        "cached",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--output_dir",
        str(out),
    ]
    env = subprocess_env()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 300
    logged, seen = 0, []
    for line in process.stdout:  # wait for two logged training steps, then interrupt
        seen.append(line)
        logged += "'mmr/penalty'" in line
        if logged >= 2 or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=300)
    assert logged >= 2, "".join(seen)[-3000:]  # the run died before it was interrupted
    assert process.returncode == 128 + signal.SIGTERM, rest[-3000:]
    checkpoint = last_complete_checkpoint(str(out))
    assert checkpoint is not None and "Run the same command again" in rest
    stopped_at = int(checkpoint.rsplit("-", 1)[1])
    assert 2 <= stopped_at < 12
    for name in (
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "mms_state.pt",
    ):
        assert os.path.isfile(os.path.join(checkpoint, name)), name

    resumed = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming training at {checkpoint}" in resumed.stdout + resumed.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == list(range(1, 13))  # the restored history, then the resumed steps, none twice


@pytest.mark.parametrize("method", ["evaluate", "_save_checkpoint"])
def test_sigterm_during_evaluation_or_saving_leaves_a_complete_checkpoint(glue_dir, tmp_path, method):
    """The interrupted evaluation or save finishes; the next step saves, marks complete and stops.

    (That the same command resumes from such a checkpoint is the test above's business.)"""
    out = tmp_path / "out"
    args = [
        "--task_name",
        "rte",
        "--glue_dir",
        glue_dir,
        "--do_train",
        "--max_steps",
        "4",
        "--max_seq_length",
        "64",
        "--per_device_train_batch_size",
        "4",
        "--max_eval_samples",
        "8",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--mmr_lambda",
        "0.1",
        "--mms_selection",
        "cached",
        "--disable_tqdm",
        "true",
        "--output_dir",
        str(out),
    ]
    driver = SIGNAL_INSIDE.format(root=ROOT, method=method, when=True, args=args + ["--do_eval"])
    result = subprocess.run(
        [sys.executable, "-c", driver], check=False, capture_output=True, text=True, env=subprocess_env(), timeout=600
    )
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    assert last_complete_checkpoint(str(out)) == str(out / "checkpoint-3")
    assert (out / "checkpoint-2" / COMPLETE_MARKER).is_file()  # the save the signal fell into finished
