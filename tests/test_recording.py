"""record_margins: per-example training margins from the training forward, against a hand-written loop."""

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from cleanlab.count import num_label_issues
from conftest import make_trainer, synthetic_dataset, tiny_model

from hf_mmr import MMRTrainer, label_margins
from hf_mmr.recording import TABLE_COLUMNS
from hf_mmr.sampling import INDEX_KEY
from hf_mmr.suspects import normalized


def test_label_margins_match_a_loop_over_classes():
    g = torch.Generator().manual_seed(0)
    h, weight = torch.randn(9, 5, generator=g), torch.randn(4, 5, generator=g)
    logits, labels = h @ weight.T, torch.randint(0, 4, (9,), generator=g)
    geometric, logit = label_margins(logits, weight, labels)
    for i in range(9):
        y = int(labels[i])
        others = [j for j in range(4) if j != y]
        distances = [float((logits[i, y] - logits[i, j]) / (weight[y] - weight[j]).norm()) for j in others]
        assert geometric[i].item() == pytest.approx(min(distances), rel=1e-5)
        assert logit[i].item() == pytest.approx(float(logits[i, y] - max(logits[i, j] for j in others)), rel=1e-5)
        # Negative exactly when another class wins.
        assert (geometric[i] < 0) == (logits[i].argmax() != y)


class Replaying(MMRTrainer):
    """Keeps each trained micro-batch's indices, logits, head weight and labels, as the forward saw them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen_batches = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        indices = inputs.get(INDEX_KEY)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if model.training:
            weight = model.classifier.weight.detach().clone()
            batch = (indices.clone(), outputs.logits.detach().clone(), weight, inputs["labels"], self._epoch)
            self.seen_batches.append(batch)
        return (loss, outputs) if return_outputs else loss


def by_hand(batches, n):
    """The table's scores, from a plain loop over examples and batches."""
    rows = {i: [] for i in range(n)}
    for indices, logits, weight, labels, epoch in batches:
        for row, index in enumerate(indices.tolist()):
            z, y = logits[row].double(), int(labels[row])
            others = [j for j in range(len(z)) if j != y]
            w = weight.double()
            geometric = min(float((z[y] - z[j]) / (w[y] - w[j]).norm()) for j in others)
            p = F.softmax(z, dim=0)
            rows[index].append(
                (
                    geometric,
                    float(z[y] - max(z[j] for j in others)),
                    float(-p[y].log()),
                    float(p[y]),
                    y,
                    int(z.argmax()),
                    p.numpy(),
                    epoch,
                )
            )
    return rows


@pytest.mark.parametrize("mode,accumulation", [("none", 1), ("none", 2), ("cached", 1), ("select", 1)])
def test_table_is_the_mean_over_every_time_an_example_was_trained_on(tmp_path, mode, accumulation):
    settings = {
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": accumulation,
        "num_train_epochs": 3,
        "mmr_lambda": 0.1,
        "mms_selection": mode,
        "mms_anneal_epochs": 1,
        "record_margins": True,
        "seed": 3,
    }
    trainer = make_trainer(tmp_path, None, synthetic_dataset(n=20, length=8), Replaying, **settings)
    trainer.train()
    table = trainer.train_margins
    epochs = [f"aum_epoch_{e}" for e in (1, 2, 3)]
    assert list(table.columns) == [*TABLE_COLUMNS, *epochs] and table["index"].tolist() == list(range(20))
    rows = by_hand(trainer.seen_batches, 20)
    for index, visits in rows.items():
        row = table.iloc[index]
        assert row["seen"] == len(visits)
        if not visits:  # select mode trains on part of each pool
            assert math.isnan(row["aum"]) and pd.isna(row["suspect"]) and np.isnan(trainer.train_probs[index]).all()
            continue
        margins, logit_margins, losses, ps, labels, predictions, vectors, visit_epochs = zip(*visits)
        np.testing.assert_allclose(trainer.train_probs[index], np.mean(vectors, axis=0), rtol=1e-5, atol=1e-7)
        for e, column in enumerate(epochs):
            in_epoch = [m for m, at in zip(margins, visit_epochs) if at == e]
            if in_epoch:
                assert row[column] == pytest.approx(np.mean(in_epoch), rel=1e-4, abs=1e-6)
            else:
                assert math.isnan(row[column])
        assert row["aum"] == pytest.approx(np.mean(margins), rel=1e-4, abs=1e-6)
        assert row["logit_aum"] == pytest.approx(np.mean(logit_margins), rel=1e-4, abs=1e-6)
        assert row["mean_loss"] == pytest.approx(np.mean(losses), rel=1e-4)
        assert row["confidence"] == pytest.approx(np.mean(ps), rel=1e-4)
        assert row["variability"] == pytest.approx(np.std(ps), rel=1e-3, abs=1e-6)
        assert row["label"] == labels[-1] and row["last_prediction"] == predictions[-1]
        assert row["label_quality"] == row["aum"]
    # suspect: the k lowest aum, k cleanlab's calibrated estimate of the label errors in the recorded probabilities
    trained = sorted(index for index, visits in rows.items() if visits)
    aum = {index: np.mean([visit[0] for visit in rows[index]]) for index in trained}
    k = num_label_issues(
        table["label"][trained].to_numpy(dtype=int),
        normalized(trainer.train_probs[trained]),
        estimation_method="off_diagonal_calibrated",
    )
    flagged = sorted(trained, key=aum.get)[:k]
    assert sorted(table.index[table["suspect"].fillna(False).astype(bool)]) == sorted(flagged)
    if mode == "select":
        assert (table["seen"] == 0).any()  # the test covered never-trained examples too


@pytest.mark.parametrize("mode", ["none", "cached", "select"])
def test_recording_leaves_the_training_bit_for_bit_unchanged(tmp_path, mode):
    settings = {"per_device_train_batch_size": 4, "max_steps": 6, "mmr_lambda": 0.1, "seed": 5, "mms_selection": mode}
    plain = make_trainer(tmp_path / "off", tiny_model("bert", num_labels=3, seed=1), **settings)
    plain.train()
    recorded = make_trainer(tmp_path / "on", tiny_model("bert", num_labels=3, seed=1), record_margins=True, **settings)
    recorded.train()
    for (name, a), (_, b) in zip(plain.model.state_dict().items(), recorded.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert plain.train_margins is None and recorded.train_margins["seen"].sum() > 0


@pytest.mark.parametrize("mode", ["none", "cached"])
def test_a_resumed_run_gives_the_uninterrupted_table(tmp_path, mode):
    settings = {
        "per_device_train_batch_size": 4,
        "num_train_epochs": 3,
        "mmr_lambda": 0.1,
        "seed": 5,
        "mms_selection": mode,
        "mms_anneal_epochs": 1,
        "record_margins": True,
        "save_strategy": "steps",
        "save_steps": 7,
    }
    dataset = synthetic_dataset(n=24, length=8)
    full = make_trainer(tmp_path / "full", tiny_model("bert", num_labels=3, seed=1), dataset, **settings)
    full.train()
    resumed = make_trainer(tmp_path / "full", tiny_model("bert", num_labels=3, seed=9), dataset, **settings)
    full_probs = np.load(os.path.join(tmp_path, "full", "train_probs.npy"))
    resumed.train(resume_from_checkpoint=os.path.join(tmp_path, "full", "checkpoint-7"))
    pd.testing.assert_frame_equal(full.train_margins, resumed.train_margins)
    assert "aum_epoch_3" in resumed.train_margins.columns
    np.testing.assert_array_equal(full_probs, np.load(os.path.join(tmp_path, "full", "train_probs.npy")))
    assert os.path.isfile(os.path.join(tmp_path, "full", "checkpoint-7", "margins_state.pt"))


def test_the_table_is_written_as_csv_with_empty_scores_for_unseen_examples(tmp_path):
    trainer = make_trainer(tmp_path, per_device_train_batch_size=4, max_steps=2, record_margins=True)
    trainer.train()
    path = os.path.join(tmp_path, "train_margins.csv")
    written = pd.read_csv(path)
    assert list(written.columns) == [*TABLE_COLUMNS, "aum_epoch_1"] and len(written) == 32
    probs = np.load(os.path.join(tmp_path, "train_probs.npy"))
    assert probs.shape == (32, 3) and probs.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(probs).all(axis=1), (written["seen"] == 0).to_numpy())
    np.testing.assert_allclose(probs[written["seen"] > 0].sum(axis=1), 1.0, rtol=1e-6)
    assert (written["seen"] > 0).sum() == 8  # 2 steps of 4
    unseen = written[written["seen"] == 0]
    assert unseen["aum"].isna().all() and unseen["suspect"].isna().all()
    trainer.save_train_margins({"text": [f"example {i}" for i in range(32)]}, ["a", "b", "c"])
    named = pd.read_csv(path)
    assert named.columns[:2].tolist() == ["index", "text"] and named["text"][5] == "example 5"
    seen = named[named["seen"] > 0]
    assert (seen["label_name"] == seen["label"].map({0: "a", 1: "b", 2: "c"})).all()


def test_logit_aum_equals_the_aum_packages_on_the_same_logits(tmp_path):
    """Pleiss et al.'s own AUMCalculator, fed every trained micro-batch's logits, labels and ids."""
    from aum import AUMCalculator

    settings = {"per_device_train_batch_size": 4, "num_train_epochs": 2, "record_margins": True, "seed": 2}
    trainer = make_trainer(tmp_path, None, synthetic_dataset(n=20, length=8), Replaying, **settings)
    trainer.train()
    calculator = AUMCalculator(str(tmp_path / "aum"))
    for indices, logits, _, labels, _ in trainer.seen_batches:
        calculator.update(logits.double(), labels, indices.tolist())
    calculator.finalize()
    theirs = pd.read_csv(tmp_path / "aum" / "aum_values.csv").set_index("sample_id")["aum"].sort_index()
    ours = trainer.train_margins.set_index("index")["logit_aum"]
    assert theirs.index.tolist() == list(range(20))
    np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), rtol=0, atol=1e-6)
