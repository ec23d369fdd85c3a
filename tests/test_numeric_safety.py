"""Numeric safety: equal class rows, zero features, one class, fp16 overflow, a zero weight, non-finite losses."""

import math

import pytest
import torch
from conftest import make_trainer, synthetic_dataset, tiny_model

from hf_mmr import NonFiniteLossError


def two_steps(tmp_path, model, dataset=None, **kwargs):
    settings = {"per_device_train_batch_size": 8, "max_steps": 2, "mmr_lambda": 0.5, **kwargs}
    trainer = make_trainer(tmp_path, model, dataset or synthetic_dataset(n=16), **settings)
    trainer.train()
    return trainer


def assert_finite(trainer):
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and all(
        math.isfinite(entry[key]) for entry in logs for key in ("loss", "mmr/penalty", "mmr/radius", "mms/mean")
    )
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_identical_class_rows(tmp_path):
    model = tiny_model("bert", num_labels=3)
    with torch.no_grad():
        model.classifier.weight[1] = model.classifier.weight[0]
        model.classifier.bias[1] = model.classifier.bias[0]
    assert_finite(two_steps(tmp_path, model))


def test_all_zero_features(tmp_path):
    model = tiny_model("bert", num_labels=3)
    with torch.no_grad():  # the pooler gives tanh(0) = 0 for every example
        model.bert.pooler.dense.weight.zero_()
        model.bert.pooler.dense.bias.zero_()
    trainer = two_steps(tmp_path, model, mmr_detach_radius=False)
    assert_finite(trainer)
    assert next(e["mmr/radius"] for e in trainer.state.log_history if "loss" in e) < 1e-5


@pytest.mark.parametrize("form", ["weights", "margin"])
def test_single_class_in_the_batch(tmp_path, form):
    """Every label is class 2 and every prediction too: the rival classes must still be the other two (a
    penalty that let the label be its own rival would be 0 in the weights form), and no margin is 0."""
    dataset = synthetic_dataset(n=16)
    for item in dataset:
        item["labels"] = torch.tensor(2)
    model = tiny_model("bert", num_labels=3)
    with torch.no_grad():
        model.classifier.bias[2] = 10.0  # class 2 wins every example, so it is every label's strongest logit
    trainer = two_steps(tmp_path, model, dataset=dataset, mmr_form=form, learning_rate=1e-5)
    assert_finite(trainer)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(entry["mmr/penalty"] > 1e-3 and entry["mms/mean"] > 0 for entry in logs)


def test_large_features_under_fp16(tmp_path):
    """float16 autocast (CPU supports it): features around 1e3 fit float16, but R^2 (around 1e7) does not."""
    model = tiny_model("bert", num_labels=3)
    with torch.no_grad():
        model.bert.pooler.dense.weight.mul_(1e4)
    model.bert.pooler.activation = torch.nn.Identity()
    trainer = two_steps(tmp_path, model, fp16=True, use_cpu=True, learning_rate=1e-5, mmr_lambda=1e-6)
    assert trainer.accelerator.mixed_precision == "fp16"
    assert_finite(trainer)
    first = next(e for e in trainer.state.log_history if "loss" in e)
    assert first["mmr/radius"] ** 2 > torch.finfo(torch.float16).max  # computed in float32, not overflowed


def test_lambda_warmup_from_zero(tmp_path):
    trainer = two_steps(tmp_path, tiny_model("bert", num_labels=3), mmr_lambda_start=0.0, mmr_lambda_warmup_ratio=1.0)
    assert_finite(trainer)
    assert [e["mmr/lambda"] for e in trainer.state.log_history if "loss" in e] == [0.0, 0.25]


def test_non_finite_loss_stops_before_the_update(tmp_path):
    model = tiny_model("bert", num_labels=3)
    with torch.no_grad():
        model.classifier.bias[0] = float("nan")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(NonFiniteLossError, match="nan at step 0.*--learning_rate or --mmr_lambda"):
        two_steps(tmp_path, model)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) or name == "classifier.bias", name
