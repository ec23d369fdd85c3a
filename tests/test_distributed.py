"""Two CPU processes (gloo) under accelerate: select mode scores each candidate once and shares the global lowest."""

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SIGNAL_INSIDE, free_port, subprocess_env

from hf_mmr.recovery import COMPLETE_MARKER

HERE = os.path.dirname(os.path.abspath(__file__))


def launch(script, *args, timeout=600):
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",  # tests on parallel workers each launch their own process group
        str(free_port()),
        script,
        *args,
    ]
    env = subprocess_env(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, env=env)


def run_glue_on_rte(script: str, glue_dir: str, out, *args: str) -> subprocess.CompletedProcess:
    """run_glue_mmr.py (or a driver around it) training on real RTE with 2 CPU processes, batch 4 each."""
    common = ("--task_name", "rte", "--glue_dir", glue_dir, "--do_train", "--use_cpu", "--mmr_lambda", "0.1")
    return launch(
        script, *common, "--per_device_train_batch_size", "4", "--save_strategy", "no", "--output_dir", str(out), *args
    )


def on_one_and_two_processes(worker: str, *args: str) -> None:
    """Run a worker of tests/distributed as one plain process, then on two under accelerate."""
    path = os.path.join(HERE, "distributed", worker)
    single = subprocess.run(
        [sys.executable, path, *args], check=False, capture_output=True, text=True, timeout=600, env=subprocess_env()
    )
    assert single.returncode == 0, single.stderr[-3000:]
    double = launch(path, *args)
    assert double.returncode == 0, double.stderr[-3000:]


@pytest.fixture(scope="module")
def select_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("select")
    result = launch(os.path.join(HERE, "distributed", "select_worker.py"), str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def test_every_candidate_is_scored_exactly_once(select_records):
    rank0, rank1 = select_records
    assert len(rank0["scored"]) == len(rank1["scored"]) == 3
    for step in range(3):
        mine, theirs = rank0["scored"][step], rank1["scored"][step]
        assert len(mine) == len(theirs) == 12  # 4 per device x pool factor 3
        assert not set(mine) & set(theirs)
        assert rank0["gathered_pool"][step] == mine + theirs == rank1["gathered_pool"][step]


def test_union_of_selections_is_the_global_lowest(select_records):
    rank0, rank1 = select_records
    for step in range(3):
        pool, scores = rank0["gathered_pool"][step], rank0["gathered_scores"][step]
        assert scores == rank1["gathered_scores"][step]
        lowest = {pool[i] for i in sorted(range(len(pool)), key=lambda i: (scores[i], i))[:8]}
        trained = rank0["trained"][step] + rank1["trained"][step]
        assert len(trained) == 8 and set(trained) == lowest


def test_logged_diagnostics_are_global(select_records):
    rank0, rank1 = select_records
    steps0 = [e for e in rank0["log_history"] if "loss" in e]
    steps1 = [e for e in rank1["log_history"] if "loss" in e]
    assert len(steps0) == 3
    for a, b in zip(steps0, steps1):
        # mms/mean is each rank's own batch until log() averages it over the processes.
        for key in ("loss", "mmr/radius", "mmr/penalty", "mms/mean", "mms/selected_mean", "mms/pool_mean"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key


def test_cached_epochs_on_two_processes_with_accumulation(tmp_path):
    """80 examples, 2 processes x batch 4, accumulation 2: epochs of 10, 4 and 10 batches per process."""
    result = launch(os.path.join(HERE, "distributed", "cached_worker.py"), str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    for record in (rank0, rank1):
        # Kept per pruned epoch: 20 lowest + round(0.2 x 60) = 32 examples = 4 batches of 8 (2 processes x 4).
        assert record["dataloader_lengths"] == record["plan_batches"] == [10, 4, 10]
        assert record["plan_steps"] == [5, 2, 5]
        assert record["global_step"] == record["max_steps"] == 12 and record["last_lr"] == 0.0
        assert record["cache_scored"] == 80  # each process's cache holds the scores of both
    for epoch_start, epoch_end in ((0, 10), (10, 14), (14, 24)):
        mine = [i for batch in rank0["trained"][epoch_start:epoch_end] for i in batch]
        theirs = [i for batch in rank1["trained"][epoch_start:epoch_end] for i in batch]
        assert not set(mine) & set(theirs)  # the processes share each epoch's examples out
        assert len(mine) + len(theirs) == (32 if epoch_start == 10 else 80)


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["select", "cached"])
def test_run_glue_on_two_processes(glue_dir, tmp_path, mode):
    """The script itself under accelerate with 2 CPU processes, MMS sampling plus MMR, on real RTE."""
    result = run_glue_on_rte(
        os.path.join(os.path.dirname(HERE), "run_glue_mmr.py"),
        glue_dir,
        tmp_path / "out",
        "--max_steps",
        "2",
        "--mms_selection",
        mode,
        "--mms_pool_factor",
        "2",
        "--pad_to_max_length",
        "false",
        "--logging_steps",
        "1",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]
    assert all(entry["mmr/penalty"] > 0 for entry in steps)
    if mode == "select":
        assert all("mms/selected_mean" in entry for entry in steps)
        # 2 processes x 4 per device x pool factor 2 = 16 candidates per step: about 2490 / 16 steps per epoch.
        assert steps[0]["epoch"] == pytest.approx(1 / (2490 // 16), rel=0.02)
    else:
        assert all(entry["mms/kept_fraction"] == 1.0 for entry in steps)  # the first epoch is uniform
        assert steps[0]["epoch"] == pytest.approx(1 / (2490 // 8), rel=0.02)


@pytest.fixture(scope="module")
def rte_histories(glue_dir, tmp_path_factory):
    """The rte worker's logged steps on 1 process (batch 8) and on 2 (batch 4 each): {(world, form): steps},
    and under "out" the folder with their margin tables."""
    out = tmp_path_factory.mktemp("rte")
    on_one_and_two_processes("rte_worker.py", glue_dir, str(out))
    histories = {
        (world, form): json.loads((out / f"history{world}_{form}.json").read_text())
        for world in (1, 2)
        for form in ("weights", "margin")
    }
    return {**histories, "out": out}


@pytest.mark.e2e
@pytest.mark.parametrize("form", ["weights", "margin"])
def test_two_processes_agree_with_one_on_the_same_global_batch(rte_histories, form):
    """Loss, radius and penalty of 3 MMR steps on real RTE: 2 x batch 4 vs 1 x batch 8 (same data order).

    Tolerance: relative 1e-4 (the all-reduce sums gradients in another order). The radius is the
    global maximum and the batch means are global (sums and counts all-reduced), so the penalty
    matches the single process up to rounding; for the margin form, R / mean margin, a mean of the
    two local ratios would not. (average_tokens_across_devices is off: with it on, transformers multiplies the
    loss of models that accept **kwargs by the number of processes, a scale that MMRTrainer
    applies to the penalty too.)
    """
    one, two = rte_histories[1, form], rte_histories[2, form]
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for key in ("loss", "mmr/radius", "mmr/penalty", "mms/mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (key, a, b)


@pytest.mark.e2e
@pytest.mark.parametrize("form", ["weights", "margin"])
def test_two_processes_record_the_one_process_margins_table(rte_histories, form):
    """record_margins: every process adds the global batch, so rank 0's table is the single process's."""
    import pandas as pd

    one, two = (pd.read_csv(rte_histories["out"] / f"margins{world}_{form}.csv") for world in (1, 2))
    assert one["seen"].tolist() == two["seen"].tolist() == [1] * 24  # 3 steps of 8, sequential
    assert one["label"].tolist() == two["label"].tolist()
    # Absolute 1e-5: a margin near 0 keeps the float32 rounding of logits of size ~3 after 3 steps in another
    # reduction order (seen: -0.000480 against -0.000477); a real disagreement is orders of magnitude larger.
    for column in ("aum", "logit_aum", "mean_loss", "confidence", "aum_epoch_1"):
        pd.testing.assert_series_equal(one[column], two[column], rtol=1e-4, atol=1e-5)
    probs = [np.load(rte_histories["out"] / f"probs{world}_{form}.npy") for world in (1, 2)]
    np.testing.assert_allclose(probs[0], probs[1], rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def fsdp_records(tmp_path_factory):
    """The fsdp worker's records, whole on 1 process and sharded on 2: {(world, form): record}."""
    out = tmp_path_factory.mktemp("fsdp")
    on_one_and_two_processes("fsdp_worker.py", str(out))
    return {(world, form): torch.load(out / f"{world}_{form}.pt") for world in (1, 2) for form in ("weights", "margin")}


@pytest.mark.parametrize("form", ["weights", "margin"])
def test_fsdp2_sharded_step_equals_the_whole_model(fsdp_records, form):
    """FSDP2 on 2 gloo processes, the classifier its own unit (its weight freed right after its forward).

    One MMR step and one select-mode scoring: penalty, mean loss and select scores equal the whole
    model's on one process (relative 1e-5), the same examples are selected, and every full gradient
    matches (relative 1e-5, with an absolute floor of 1e-5 x the largest gradient for the attention
    key biases, whose true gradient is 0 and whose computed one is rounding noise).
    """
    whole, sharded = fsdp_records[1, form], fsdp_records[2, form]
    assert sharded["penalty"] == pytest.approx(whole["penalty"], rel=1e-5)
    assert sharded["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert sharded["selected"] == whole["selected"] and len(whole["selected"]) == 4
    assert sorted(sharded["scores"]) == list(range(8))
    for index, score in whole["scores"].items():
        assert sharded["scores"][index] == pytest.approx(score, rel=1e-5)
    floor = 1e-5 * max(grad.abs().max().item() for grad in whole["grads"].values())
    assert set(sharded["grads"]) == set(whole["grads"])
    for name, grad in whole["grads"].items():
        torch.testing.assert_close(sharded["grads"][name], grad, rtol=1e-5, atol=floor, msg=name)


@pytest.mark.e2e
def test_a_signal_stops_two_processes_together_and_both_leave_cleanly(glue_dir, tmp_path):
    """SIGTERM on rank 0 only: both ranks save the same checkpoint and exit 128 + SIGTERM, neither aborts.

    torch's launcher ends the ranks still running as soon as one has exited with an error, so a rank that is
    slower to leave after the shared save may be reported as killed by SIGTERM instead; the checkpoint was
    complete before either left.
    """
    driver = tmp_path / "driver.py"
    # One process is told; both must stop at the same step.
    when = "self.is_world_process_zero()"
    driver.write_text(SIGNAL_INSIDE.format(root=os.path.dirname(HERE), method="training_step", when=when, args=None))
    out = tmp_path / "out"
    result = run_glue_on_rte(
        str(driver), glue_dir, out, "--max_steps", "6", "--max_seq_length", "64", "--disable_tqdm", "true"
    )
    assert (out / "checkpoint-3" / COMPLETE_MARKER).is_file(), result.stderr[-4000:]
    # torch's launcher reports each failed rank's exit code; an abort at exit shows as -6 (SIGABRT).
    codes = sorted(int(code) for code in re.findall(r"exitcode\s+:\s+(-?\d+)", result.stderr))
    assert len(codes) == 2 and codes[-1] == 128 + signal.SIGTERM, result.stderr[-4000:]
    assert codes[0] in (-signal.SIGTERM, 128 + signal.SIGTERM), result.stderr[-4000:]
    assert "terminate called" not in result.stderr
