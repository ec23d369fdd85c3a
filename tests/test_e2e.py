"""run_glue_mmr.py end to end on real MRPC with the packaged MiniLM, through the real command line."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, run_script


@pytest.fixture(scope="module")
def mrpc_run(glue_dir, tmp_path_factory):
    """30 MMR steps on real MRPC, configured by a YAML file whose mmr_lambda a flag overrides."""
    work = tmp_path_factory.mktemp("mrpc")
    config = work / "mrpc.yaml"
    config.write_text(
        f"task_name: mrpc\nglue_dir: {glue_dir}\ndo_train: true\ndo_eval: true\noutput_dir: {work / 'out'}\n"
        "max_steps: 30\nper_device_train_batch_size: 16\nlearning_rate: 5.0e-5\npad_to_max_length: false\n"
        "max_eval_samples: 96\nlogging_steps: 10\nsave_steps: 15\nseed: 42\nmmr_lambda: 0.0\nreport_to: tensorboard\n"
        "record_margins: true\nmax_train_samples: 400\n"
    )
    result = run_script(str(config), "--mmr_lambda", "0.1", "--mmr_top_k", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (work / "run.log").write_text(result.stdout + result.stderr)
    return work / "out"


@pytest.mark.e2e
def test_outputs_like_run_glue(mrpc_run):
    for name in (
        "train_results.json",
        "eval_results.json",
        "all_results.json",
        "trainer_state.json",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "README.md",
    ):
        assert (mrpc_run / name).is_file(), name
    assert (mrpc_run / "checkpoint-15").is_dir() and (mrpc_run / "checkpoint-30").is_dir()
    results = json.loads((mrpc_run / "all_results.json").read_text())
    assert results["eval_samples"] == 96
    # The dev set's margins, from the evaluation forward, beside the GLUE metrics.
    assert results["eval_relative_margin_median"] > 0 and results["eval_mms_median"] > 0
    # 30 steps leave MiniLM near MRPC's majority class (0.6875 of these 96 dev pairs): a broken training
    # (labels ignored, loss not applied) lands well below it, and its loss does not fall.
    assert results["eval_accuracy"] >= 0.6875 - 0.05 and 0.0 <= results["eval_f1"] <= 1.0
    steps = [e for e in json.loads((mrpc_run / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert steps[-1]["loss"] < steps[0]["loss"]
    config = json.loads((mrpc_run / "config.json").read_text())
    assert config["id2label"] == {"0": "not_equivalent", "1": "equivalent"}


@pytest.mark.e2e
def test_flag_overrides_config_file_and_diagnostics_are_logged(mrpc_run):
    history = json.loads((mrpc_run / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in steps] == [10, 20, 30]
    for entry in steps:
        assert entry["mmr/lambda"] == 0.1
        assert entry["mmr/penalty"] > 0 and entry["mmr/radius"] > 0 and entry["mms/mean"] >= 0


@pytest.mark.e2e
def test_saved_model_reloads_without_hf_mmr(mrpc_run, glue_dir):
    """A plain transformers process reproduces the eval accuracy from the saved folder."""
    code = f"""
import csv, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained({str(mrpc_run)!r}).eval()
tokenizer = AutoTokenizer.from_pretrained({str(mrpc_run)!r})
with open({os.path.join(glue_dir, "MRPC", "dev.tsv")!r}, encoding="utf-8-sig") as f:
    rows = list(csv.reader(f, delimiter="\\t", quoting=csv.QUOTE_NONE))[1:97]
batch = tokenizer([r[3] for r in rows], [r[4] for r in rows], truncation=True, max_length=128, padding=True,
                  return_tensors="pt")
with torch.no_grad():
    predicted = model(**batch).logits.argmax(-1).tolist()
assert "hf_mmr" not in sys.modules
print(sum(int(p == int(r[0])) for p, r in zip(predicted, rows)) / len(rows))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd="/", timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(result.stdout.strip().splitlines()[-1])
    expected = json.loads((mrpc_run / "eval_results.json").read_text())["eval_accuracy"]
    assert accuracy == pytest.approx(expected, abs=1e-9)


@pytest.mark.e2e
def test_default_config_runs_the_margin_form(glue_dir, tmp_path):
    """The README's default config, offline, with the authors' BERT form of the penalty."""
    out = tmp_path / "out"
    result = run_script(
        os.path.join(ROOT, "configs", "default.yaml"),
        "--glue_dir",  # the config's ../shared/data/glue is where the README runs it; tests take $GLUE_DIR
        glue_dir,
        "--mmr_form",
        "margin",
        "--max_steps",
        "3",
        "--logging_steps",
        "1",
        "--max_eval_samples",
        "32",
        "--save_strategy",
        "no",
        "--output_dir",
        str(out),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(steps) == 3 and all(e["mmr/penalty"] > 0 for e in steps)
    assert "MMR = R / mean_i m_i" in (out / "README.md").read_text()


@pytest.mark.e2e
def test_search_chooses_the_setting_then_trains_with_it(glue_dir, tmp_path):
    """--mmr_search_trials on real MRPC read from GLUE_DIR (no --glue_dir), a tiny budget."""
    out = tmp_path / "out"
    result = run_script(
        "--task_name",
        "mrpc",
        "--do_train",
        "--max_train_samples",
        "100",
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "16",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--mmr_search_trials",
        "2",
        "--output_dir",
        str(out),
        env={"HF_HUB_OFFLINE": "1", "GLUE_DIR": glue_dir},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Reading mrpc from the GLUE TSV files in {glue_dir}" in result.stdout + result.stderr
    search = json.loads((out / "mmr_search.json").read_text())
    assert len(search["trials"]) == 2 and search["heldout_examples"] == 20 and search["train_examples"] == 80
    assert (result.stdout + result.stderr).count("MMR search trial") == 2
    best = search["best"]["setting"]
    steps = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(steps) == 3 and all(e["mmr/lambda"] == pytest.approx(best["mmr_lambda"], abs=1e-6) for e in steps)
    card = (out / "README.md").read_text()
    assert "### Choosing the MMR setting" in card and f"| `mmr_form` | {best['mmr_form']} |" in card


def test_non_empty_output_dir_is_refused_and_untouched(glue_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_script("--task_name", "mrpc", "--glue_dir", glue_dir, "--do_train", "--output_dir", str(tmp_path))
    assert result.returncode == 2
    assert "--output_dir" in result.stderr and "--overwrite_output_dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


# Offline mode, and a Hub endpoint that refuses connections (a closed local port), so the probe
# itself is exercised the same way on any machine, with or without a network.
@pytest.mark.parametrize(
    "env",
    [
        {"HF_HUB_OFFLINE": "1", "GLUE_DIR": ""},
        {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "GLUE_DIR": ""},
    ],
    ids=["offline", "probe"],
)
def test_unreachable_hub_fails_fast_naming_local_options(tmp_path, env):
    start = time.monotonic()
    result = run_script("--task_name", "mrpc", "--do_train", "--output_dir", str(tmp_path / "out"), env=env)
    assert result.returncode == 2 and "--glue_dir" in result.stderr and "--train_file" in result.stderr
    assert time.monotonic() - start < 60
    assert not (tmp_path / "out").exists()


def test_unreachable_model_names_a_local_path(glue_dir, tmp_path):
    result = run_script(
        "--task_name",
        "rte",
        "--glue_dir",
        glue_dir,
        "--do_eval",
        "--output_dir",
        str(tmp_path),
        "--model_name_or_path",
        "some-org/not-cached-model",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2 and "local model path" in result.stderr, result.stderr[-2000:]


@pytest.mark.e2e
def test_model_card_records_the_run(mrpc_run):
    card = (mrpc_run / "README.md").read_text()
    for text in (
        "- hf-mmr",
        "- text-classification",
        "base_model: sentence-transformers/all-MiniLM-L6-v2",
        "GLUE MRPC",
        "model-index",
        "hf-mmr 0.",
        "| `mmr_lambda` | 0.1 |",
        "| `mmr_form` | weights |",
        "MMR = mean_i mean_{j in J_i} R² · ||w_{y_i} − w_j||²",
        "| `mms_selection` | none |",
        "| `mmr_head` | classifier |",  # the head found, not the setting's None
        "No evaluation ran during training",  # instead of an empty "Training results" section
        "Mms Median",  # the Trainer's results table carries the dev margins
    ):
        assert text in card, text


@pytest.mark.e2e
def test_tensorboard_receives_the_margin_scalars(mrpc_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [
        os.path.join(root, name)
        for root, _, names in os.walk(mrpc_run)
        for name in names
        if name.startswith("events.out.tfevents")
    ]
    assert events, "no TensorBoard event file"
    tags = set()
    for path in events:
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        tags.update(accumulator.Tags()["scalars"])
    for tag in ("train/mmr/penalty", "train/mmr/radius", "train/mmr/lambda", "train/mms/mean", "train/mms/p50"):
        assert tag in tags, sorted(tags)


@pytest.mark.e2e
def test_eval_mms_saved_and_report_draws_it(mrpc_run, tmp_path):
    import numpy as np

    scores = np.load(mrpc_run / "eval_mms.npy")
    assert scores.shape == (96,) and np.isfinite(scores).all() and (scores >= 0).all()
    result = subprocess.run(
        [sys.executable, "-m", "hf_mmr.report", str(mrpc_run), "--out", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("mmr_training.png", "mmr_eval_mms.png"):
        png = tmp_path / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.e2e
def test_train_margins_table_and_the_suspects_report(mrpc_run, tmp_path):
    import pandas as pd

    from hf_mmr.recording import TABLE_COLUMNS

    table = pd.read_csv(mrpc_run / "train_margins.csv")
    assert len(table) == 400 and table["index"].tolist() == list(range(400))
    texts_and_names = {"sentence1", "sentence2", "label_name", "last_prediction_name", "aum_epoch_1", "aum_epoch_2"}
    assert set(TABLE_COLUMNS) | texts_and_names == set(table.columns)
    assert (
        table["seen"].sum() == 30 * 16
    )  # 30 steps of 16 (1.2 epochs), each example counted each time it was trained on
    seen = table[table["seen"] > 0]
    assert set(seen["label_name"]) <= {"equivalent", "not_equivalent"} and seen["aum"].notna().all()
    assert (seen["label_quality"] == seen["aum"]).all()
    # suspect: the k lowest label_quality, k cleanlab's calibrated estimate of the label errors in train_probs.npy
    from cleanlab.count import num_label_issues

    from hf_mmr.suspects import normalized

    probs = normalized(np.load(mrpc_run / "train_probs.npy")[seen["index"]])
    k = num_label_issues(seen["label"].to_numpy(), probs, estimation_method="off_diagonal_calibrated")
    flagged = seen.sort_values("label_quality", kind="stable").head(k)["index"]
    assert k > 0 and sorted(seen.loc[seen["suspect"].astype(bool), "index"]) == sorted(flagged)
    metrics = json.loads((mrpc_run / "eval_results.json").read_text())
    assert 0 <= metrics["eval_ece"] <= 1 and metrics["eval_nll"] > 0
    result = subprocess.run(
        [sys.executable, "-m", "hf_mmr.report", str(mrpc_run), "--out", str(tmp_path), "--suspects", "5"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    lowest = seen.sort_values("label_quality", kind="stable").head(5)
    share, disagreed = k / len(seen), (seen["last_prediction"] != seen["label"]).mean()
    assert lines[0].startswith(f"{k} of {len(seen)} trained examples ({share:.1%}) are suspects")
    assert f"disagreed with {disagreed:.1%} of the given labels" in lines[0]
    assert lines[1].split()[:2] == ["index", "quality"] and len(lines) >= 7
    assert [int(line.split()[0]) for line in lines[2:7]] == lowest["index"].tolist()
    assert lowest.iloc[0]["sentence1"][:40] in lines[2]
    png = tmp_path / "mmr_train_margins.png"
    assert png.is_file() and png.stat().st_size > 10_000


@pytest.mark.e2e
def test_cleanlab_label_issues_of_the_real_run_carry_the_texts_and_names(mrpc_run):
    from hf_mmr import find_label_issues

    issues = find_label_issues(str(mrpc_run))
    assert issues.columns[:3].tolist() == ["index", "sentence1", "sentence2"]
    trained = issues[issues["is_label_issue"].notna()]
    assert len(trained) == (issues["label_quality"].notna()).sum() > 0
    assert trained["suspect"].notna().all() and issues.loc[issues["is_label_issue"].isna(), "suspect"].isna().all()
    assert set(trained["suggested_label_name"]) <= {"equivalent", "not_equivalent"}
    assert (trained["label_quality_score"].between(0, 1)).all()


@pytest.mark.e2e
def test_pipeline_loads_the_output_without_hf_mmr(mrpc_run):
    code = f"""
import sys
from transformers import pipeline
classify = pipeline("text-classification", model={str(mrpc_run)!r})
result = classify({{"text": "The cat sat on the mat.", "text_pair": "A cat was sitting on the mat."}})
assert "hf_mmr" not in sys.modules
print(result)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd="/", timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "equivalent" in result.stdout
