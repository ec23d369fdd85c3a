"""A user's files are never replaced: the model folder, files no run wrote, edited outputs, another model's checkpoint."""

import json
import os
import shutil

import pandas as pd
import pytest
from test_damaged_checkpoints import in_process
from test_e2e import run_script

from hf_mmr import MMRConfigError, default_model_dir
from hf_mmr.outputs import MANIFEST, check_output_folder, read_manifest, record


def tiny_rte(glue_dir, output_dir, *more):
    """A 2-step MRPC run on 32 pairs with margins recorded, saving nothing but its final outputs."""
    return [
        "--task_name", "mrpc", "--glue_dir", glue_dir, "--do_train", "--output_dir", str(output_dir),
        "--max_steps", "2", "--max_train_samples", "32", "--per_device_train_batch_size", "16",
        "--record_margins", "true", "--save_strategy", "no", "--report_to", "none", *more,
    ]  # fmt: skip


def test_a_users_readme_behind_a_symlink_is_refused_with_overwrite(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    (tmp_path / "link").symlink_to(mine)
    with pytest.raises(MMRConfigError) as error:
        check_output_folder(str(tmp_path / "link"), {}, overwrite=True)
    message = str(error.value)
    assert "holds 'README.md', which no run of hf-mmr wrote there" in message and "\n" not in message
    assert (mine / "README.md").read_text() == "my notes"


@pytest.mark.parametrize("where", ["is", "inside", "contains"])
def test_the_model_folder_is_never_the_output(tmp_path, where):
    model = tmp_path / "models" / "base"
    model.mkdir(parents=True)
    output = {"is": model, "inside": model / "out", "contains": tmp_path / "models"}[where]
    with pytest.raises(MMRConfigError) as error:
        check_output_folder(str(output), {"--model_name_or_path": str(model)}, overwrite=True)
    words = {"is": "is the folder that --model_name_or_path loads", "inside": "lies inside", "contains": "contains"}
    assert words[where] in str(error.value)
    assert str(error.value).count(f"'{output}'") == 1 and "\n" not in str(error.value)  # each path named once


def test_an_edited_run_file_is_kept_as_a_numbered_copy(tmp_path):
    (tmp_path / "train_margins.csv").write_text("index,aum\n0,1.0\n")
    (tmp_path / "notes.txt").write_text("not a run file: never looked at")
    record(str(tmp_path))
    assert set(read_manifest(str(tmp_path))) == {"train_margins.csv"}
    check_output_folder(str(tmp_path), {}, overwrite=False)  # unchanged: nothing to keep
    assert not (tmp_path / "train_margins.1.csv").exists()
    (tmp_path / "train_margins.csv").write_text("index,aum,my_note\n0,1.0,wrong label\n")
    check_output_folder(str(tmp_path), {}, overwrite=True)
    check_output_folder(str(tmp_path), {}, overwrite=True)  # the same edit is kept once more, as .2
    assert (tmp_path / "train_margins.1.csv").read_text() == "index,aum,my_note\n0,1.0,wrong label\n"
    assert (tmp_path / "train_margins.2.csv").exists()


@pytest.mark.e2e
def test_rerunning_a_finished_run_keeps_the_annotated_table_and_replaces_only_run_files(glue_dir, tmp_path, capsys):
    out = tmp_path / "out"
    first = run_script(*tiny_rte(glue_dir, out))
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = read_manifest(str(out))
    assert {"README.md", "config.json", "model.safetensors", "train_margins.csv", "train_probs.npy"} <= set(manifest)
    table = pd.read_csv(out / "train_margins.csv")
    table["my_note"] = "checked"
    table.to_csv(out / "train_margins.csv", index=False)
    (out / "mine.txt").write_text("keep me")
    second = run_script(*tiny_rte(glue_dir, out, "--overwrite_output_dir"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "train_margins.csv in" in second.stdout + second.stderr and "kept as train_margins.1.csv" in second.stdout
    assert "my_note" in pd.read_csv(out / "train_margins.1.csv").columns
    assert "my_note" not in pd.read_csv(out / "train_margins.csv").columns
    assert (out / "mine.txt").read_text() == "keep me" and (out / MANIFEST).is_file()


def test_the_model_folder_as_output_dir_through_the_script(tmp_path, capsys, glue_dir):
    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    before = {name: (model / name).stat().st_mtime_ns for name in os.listdir(model)}
    result = in_process(tiny_rte(glue_dir, model, "--model_name_or_path", str(model), "--overwrite_output_dir"), capsys)
    assert result.returncode == 2 and "is the folder that --model_name_or_path loads" in result.stderr
    assert before == {name: (model / name).stat().st_mtime_ns for name in os.listdir(model)}


@pytest.mark.e2e
@pytest.mark.parametrize("named", [True, False], ids=["resume_from_checkpoint", "automatic"])
def test_another_models_checkpoint_is_not_resumed(glue_dir, tmp_path, capsys, named):
    """A complete-looking checkpoint of a 32-wide 2-layer BERT, resumed into the packaged MiniLM."""
    from test_cli_errors import checkpoint_with_labels

    out = tmp_path / "out"
    shape = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "id2label": {"0": "a", "1": "b"}}
    checkpoint = checkpoint_with_labels(tmp_path, 2)
    (tmp_path / "other" / "checkpoint-5" / "config.json").write_text(json.dumps(shape))
    if named:
        args = tiny_rte(glue_dir, out, "--resume_from_checkpoint", checkpoint)
    else:  # an interrupted run's folder, rerun with another --model_name_or_path
        shutil.copytree(tmp_path / "other", out)
        args = tiny_rte(glue_dir, out)
    result = in_process(args, capsys)
    message = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "was trained from another model (bert, hidden size 32, num hidden layers 2, 2 labels)" in message
    assert "(bert, hidden size 384, num hidden layers 6, 2 labels)" in message and "another --output_dir" in message
    assert ("--resume_from_checkpoint" in message) == named


def test_a_folder_whose_only_checkpoint_was_cut_short_is_named_once(glue_dir, tmp_path, capsys):
    out = tmp_path / "a_rather_long_folder_name_for_the_output_of_this_run"
    (out / "checkpoint-6").mkdir(parents=True)
    (out / "checkpoint-6" / "trainer_state.json").write_text("{}")
    result = in_process(tiny_rte(glue_dir, out), capsys)
    message = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "checkpoint-6 did not finish saving" in message
    assert message.count(str(out)) == 1 and len(message) - len(str(out)) < 280
