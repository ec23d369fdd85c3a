"""MMRTrainer against the plain Trainer on tiny models and synthetic data."""

import math

import pytest
import torch
from conftest import NO_DROPOUT, make_trainer, step_logs, synthetic_dataset, tiny_model
from transformers import Trainer, TrainingArguments

from hf_mmr import MMRConfigError, MMRTrainer, MMRTrainingArguments, minimal_margin_scores, mmr_penalty
from hf_mmr.diagnostics import DiagnosticWindow


def train(trainer_cls, args_cls, tmp_path, model_type="bert", num_labels=3, model_overrides=None, **kwargs):
    settings = {"per_device_train_batch_size": 8, "max_steps": 4, "seed": 7, **kwargs}
    model = tiny_model(model_type, num_labels=num_labels, seed=1, **(model_overrides or {}))
    trainer = make_trainer(tmp_path, model, trainer_cls=trainer_cls, args_cls=args_cls, **settings)
    trainer.train()
    return trainer


def test_lambda_zero_is_bit_for_bit_the_plain_trainer(tmp_path):
    plain = train(Trainer, TrainingArguments, tmp_path / "plain", gradient_accumulation_steps=2)
    mmr = train(MMRTrainer, MMRTrainingArguments, tmp_path / "mmr", gradient_accumulation_steps=2)
    assert [e["loss"] for e in step_logs(plain)] == [e["loss"] for e in step_logs(mmr)]
    for (name, a), (_, b) in zip(plain.model.state_dict().items(), mmr.model.state_dict().items()):
        assert torch.equal(a, b), name
    # The diagnostics are logged even with the penalty off (the baseline's radius growth is worth seeing).
    assert all(e["mmr/lambda"] == 0 and e["mmr/radius"] > 0 for e in step_logs(mmr))


def test_loss_is_classification_loss_plus_lambda_times_penalty(tmp_path):
    plain = train(Trainer, TrainingArguments, tmp_path / "plain", max_steps=1)
    mmr = train(MMRTrainer, MMRTrainingArguments, tmp_path / "mmr", max_steps=1, mmr_lambda=0.5)
    (first_plain,), (first_mmr,) = step_logs(plain), step_logs(mmr)
    assert first_mmr["mmr/penalty"] > 0 and math.isfinite(first_mmr["mmr/penalty"])
    expected = first_plain["loss"] + 0.5 * first_mmr["mmr/penalty"]
    assert first_mmr["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("form", ["weights", "margin"])
def test_logged_penalty_and_mms_match_the_formulas_on_the_batch(tmp_path, form):
    trainer = train(
        MMRTrainer,
        MMRTrainingArguments,
        tmp_path,
        max_steps=1,
        mmr_lambda=0.5,
        mmr_top_k=2,
        mmr_form=form,
        model_overrides=NO_DROPOUT,
    )
    # Recompute on the same first batch with the initial weights (no update yet, no dropout).
    torch.manual_seed(trainer.args.seed)
    batch = next(iter(trainer.get_train_dataloader()))
    model = tiny_model("bert", num_labels=3, seed=1, **NO_DROPOUT)
    captured = {}
    model.classifier.register_forward_pre_hook(lambda m, a: captured.update(h=a[0]))
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    weight = model.classifier.weight
    penalty = mmr_penalty(captured["h"], weight, batch["labels"], logits, top_k=2, form=form)
    (logged,) = step_logs(trainer)
    assert logged["mmr/penalty"] == pytest.approx(penalty.item(), rel=1e-4)
    assert logged["mmr/radius"] == pytest.approx(captured["h"].norm(dim=1).max().item(), rel=1e-4)
    assert logged["mms/mean"] == pytest.approx(minimal_margin_scores(logits, weight).mean().item(), rel=1e-4)


def test_evaluation_reports_the_margins_of_the_eval_set_from_its_own_forward_pass(tmp_path):
    trainer = train(MMRTrainer, MMRTrainingArguments, tmp_path, max_steps=2, per_device_eval_batch_size=5)
    eval_set = synthetic_dataset(n=13, seed=3)
    model = trainer.model.eval()
    calls = []
    handle = model.register_forward_hook(lambda m, a, kw_out=None: calls.append(1))
    metrics = trainer.evaluate(eval_dataset=eval_set)
    handle.remove()
    assert len(calls) == 3  # ceil(13 / 5) batches: no second pass for the margins
    captured = {}
    model.classifier.register_forward_pre_hook(lambda m, a: captured.update(h=a[0]))
    with torch.no_grad():
        logits = model(input_ids=torch.stack([e["input_ids"] for e in eval_set])).logits
    mms = minimal_margin_scores(logits, model.classifier.weight)
    radius = captured["h"].norm(dim=1).max()
    assert metrics["eval_mms_median"] == pytest.approx(mms.median().item(), rel=1e-5)
    assert metrics["eval_relative_margin_median"] == pytest.approx((mms.median() / radius).item(), rel=1e-5)
    assert len(trainer.eval_margins["mms"]) == 13 and trainer.eval_margins["radius"] == pytest.approx(radius.item())
    assert trainer.state.log_history[-1]["eval_mms_median"] == metrics["eval_mms_median"]  # reaches every logger


def test_lambda_schedule_by_global_step(tmp_path):
    args = MMRTrainingArguments(
        output_dir=str(tmp_path), mmr_lambda=0.1, mmr_lambda_start=1e-4, mmr_lambda_warmup_ratio=0.5
    )
    assert args.mmr_lambda_at(0, 100) == pytest.approx(1e-4)
    assert args.mmr_lambda_at(25, 100) == pytest.approx(1e-4 + (0.1 - 1e-4) * 0.5)
    assert args.mmr_lambda_at(50, 100) == pytest.approx(0.1)
    assert args.mmr_lambda_at(99, 100) == pytest.approx(0.1)
    constant = MMRTrainingArguments(output_dir=str(tmp_path), mmr_lambda=0.3)
    assert constant.mmr_lambda_start == 0.3 and constant.mmr_lambda_at(0, 10) == 0.3

    trainer = train(
        MMRTrainer,
        MMRTrainingArguments,
        tmp_path / "run",
        max_steps=4,
        mmr_lambda=0.2,
        mmr_lambda_start=0.0,
        mmr_lambda_warmup_ratio=0.5,
    )
    # Step s (logged after it) used lambda at global_step s - 1: 0, 0.1, then 0.2.
    assert [e["mmr/lambda"] for e in step_logs(trainer)] == pytest.approx([0.0, 0.1, 0.2, 0.2])


def test_diagnostics_are_averaged_over_the_logging_window(tmp_path):
    every = train(
        MMRTrainer,
        MMRTrainingArguments,
        tmp_path / "a",
        max_steps=4,
        mmr_lambda=0.2,
        mmr_lambda_start=0.0,
        mmr_lambda_warmup_ratio=0.5,
    )
    window = train(
        MMRTrainer,
        MMRTrainingArguments,
        tmp_path / "b",
        max_steps=4,
        mmr_lambda=0.2,
        mmr_lambda_start=0.0,
        mmr_lambda_warmup_ratio=0.5,
        logging_steps=2,
    )
    per_step = [e["mmr/radius"] for e in step_logs(every)]
    assert [e["mmr/radius"] for e in step_logs(window)] == pytest.approx(
        [(per_step[0] + per_step[1]) / 2, (per_step[2] + per_step[3]) / 2], rel=1e-5
    )
    assert [e["mmr/lambda"] for e in step_logs(window)] == pytest.approx([0.05, 0.2])


@pytest.mark.parametrize("model_type", ["roberta", "distilbert", "deberta-v2"])
def test_trains_with_other_heads(tmp_path, model_type):
    trainer = train(
        MMRTrainer, MMRTrainingArguments, tmp_path, model_type=model_type, max_steps=2, mmr_lambda=0.1, num_labels=2
    )
    assert all(e["mmr/penalty"] > 0 and math.isfinite(e["loss"]) for e in step_logs(trainer))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("mmr_lambda", -0.1, "--mmr_lambda"),
        ("mmr_lambda", float("nan"), "--mmr_lambda"),
        ("mmr_lambda_start", float("inf"), "--mmr_lambda_start"),
        ("mmr_lambda_warmup_ratio", 1.5, "--mmr_lambda_warmup_ratio"),
        ("mmr_top_k", 0, "--mmr_top_k"),
        ("mmr_form", "ratio", "--mmr_form must be one of weights, margin"),
        ("mmr_head", " ", "--mmr_head"),
        ("mmr_head", 3, "--mmr_head must be a module path .*got 3"),
        ("mmr_detach_radius", "false", "--mmr_detach_radius must be True or False, got 'false'"),
        ("record_margins", "yes", "--record_margins must be True or False"),
    ],
)
def test_invalid_arguments_fail_at_construction(tmp_path, field, value, message):
    with pytest.raises(MMRConfigError, match=message):
        MMRTrainingArguments(output_dir=str(tmp_path), **{field: value})


def test_top_k_must_leave_a_wrong_class(tmp_path):
    args = MMRTrainingArguments(output_dir=str(tmp_path), mmr_lambda=0.1, mmr_top_k=3, report_to="none")
    with pytest.raises(MMRConfigError, match="--mmr_top_k must be <= num_labels - 1 = 2"):
        MMRTrainer(model=tiny_model("bert", num_labels=3), args=args)


@pytest.mark.parametrize("num_labels,problem_type", [(1, None), (3, "multi_label_classification")])
def test_regression_and_multi_label_are_refused(tmp_path, num_labels, problem_type):
    model = tiny_model("bert", num_labels=num_labels, problem_type=problem_type)
    args = MMRTrainingArguments(output_dir=str(tmp_path), mmr_lambda=0.1, report_to="none")
    with pytest.raises(MMRConfigError, match="single-label classification"):
        MMRTrainer(model=model, args=args)
    # Without the penalty the same model trains as with the plain Trainer.
    MMRTrainer(model=model, args=MMRTrainingArguments(output_dir=str(tmp_path), report_to="none"))


def test_needs_mmr_training_arguments(tmp_path):
    with pytest.raises(TypeError, match="MMRTrainingArguments"):  # ArgumentsTypeError (tests/test_errors.py)
        MMRTrainer(model=tiny_model("bert"), args=TrainingArguments(output_dir=str(tmp_path), report_to="none"))


def test_the_diagnostic_window_averages_and_restarts():
    window = DiagnosticWindow()
    window.add("a", torch.tensor(1.0))
    window.add("a", 3.0)
    window.add("b", torch.tensor(2.0))
    assert window and window.pop_means() == {"a": 2.0, "b": 2.0} and not window
    window.add("a", 5.0)
    assert window.pop_means(lambda means: means * 2) == {"a": 10.0}
