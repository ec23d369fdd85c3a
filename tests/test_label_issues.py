"""cleanlab on a run's recorded probabilities: label_issues.csv, the report's --cleanlab, and the missing extra."""

import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_trainer, synthetic_dataset

from hf_mmr import MissingPackageError, find_label_issues
from hf_mmr.report import main as report_main


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """A tiny BERT trained on a learnable task with 10 of 120 labels flipped, margins recorded."""
    out = tmp_path_factory.mktemp("issues")
    data = synthetic_dataset(n=120, length=8, seed=3)
    for i, example in enumerate(data):
        clean = int(example["input_ids"][0]) % 3
        example["labels"] = torch.tensor((clean + 1) % 3 if i < 10 else clean)
    trainer = make_trainer(out, None, data, per_device_train_batch_size=8, num_train_epochs=4, record_margins=True)
    trainer.train()
    trainer.save_state()  # the report reads trainer_state.json, as of any finished run
    return out, trainer


def test_label_issues_are_cleanlabs_on_the_recorded_probabilities(recorded_run):
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_scores

    out, trainer = recorded_run
    issues = find_label_issues(str(out))
    written = pd.read_csv(out / "label_issues.csv")
    assert written.columns.tolist() == issues.columns.tolist() == [
        "index", "label", "suggested_label", "label_quality_score", "label_quality", "suspect", "is_label_issue",
    ]  # fmt: skip
    probs = trainer.train_probs.astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    labels = trainer.train_margins["label"].astype(int).to_numpy()
    np.testing.assert_allclose(written["label_quality_score"], get_label_quality_scores(labels, probs), atol=1e-12)
    assert written["is_label_issue"].tolist() == cleanlab_issues(labels, probs).tolist()
    assert written["suggested_label"].tolist() == probs.argmax(axis=1).tolist()
    np.testing.assert_allclose(written["label_quality"], trainer.train_margins["aum"])
    assert written["suspect"].tolist() == trainer.train_margins["suspect"].tolist()
    assert written["suspect"].sum() > 0  # the 10 flips give the estimate something to count


def test_the_report_writes_label_issues_and_says_how_many(recorded_run, capsys):
    out, _ = recorded_run
    (out / "label_issues.csv").unlink(missing_ok=True)
    report_main([str(out), "--cleanlab"])
    printed = capsys.readouterr().out
    assert "label issues among 120 trained examples (cleanlab)" in printed
    assert (out / "label_issues.csv").is_file()


def test_without_cleanlab_one_line_names_the_extra(recorded_run, monkeypatch, capsys):
    out, _ = recorded_run
    monkeypatch.setitem(sys.modules, "cleanlab", None)
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)
    with pytest.raises(MissingPackageError, match=r'pip install "hf-mmr\[cleanlab\]"'):
        find_label_issues(str(out))
    with pytest.raises(SystemExit):
        report_main([str(out), "--cleanlab"])
    assert 'pip install "hf-mmr[cleanlab]"' in capsys.readouterr().err


def test_a_run_without_recorded_probabilities_is_named(tmp_path, capsys):
    trainer = make_trainer(tmp_path, per_device_train_batch_size=8, max_steps=2, record_margins=True)
    trainer.train()
    trainer.save_state()
    (tmp_path / "train_probs.npy").unlink()
    with pytest.raises(SystemExit):
        report_main([str(tmp_path), "--cleanlab"])
    assert "has no train_probs.npy; train with --record_margins true" in capsys.readouterr().err


def test_the_report_prints_the_flagged_suspects_or_the_k_lowest(recorded_run, capsys):
    out, trainer = recorded_run
    table = trainer.train_margins
    flagged = table[table["suspect"].astype(bool)].sort_values("label_quality", kind="stable")["index"].tolist()
    report_main([str(out), "--suspects"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{len(flagged)} of 120 trained examples ({len(flagged) / 120:.1%}) are suspects")
    assert [int(line.split()[0]) for line in lines[2 : 2 + len(flagged)]] == flagged
    report_main([str(out), "--suspects", "3"])
    lines = capsys.readouterr().out.splitlines()
    lowest = table.sort_values("label_quality", kind="stable")["index"].head(3).tolist()
    assert [int(line.split()[0]) for line in lines[2:5]] == lowest
    assert not lines[5].split()[0].isdigit()  # then the plots' paths: exactly K rows
    with pytest.raises(SystemExit):
        report_main([str(out), "--suspects", "0"])
    assert "--suspects K needs K >= 1, got 0" in capsys.readouterr().err
