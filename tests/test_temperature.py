"""Temperature scaling: the fit minimizes the held-out NLL, the head folds it, the saved model is calibrated."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from conftest import QUIET, make_trainer, subprocess_env, synthetic_dataset, tiny_model
from test_distributed import launch
from test_e2e import run_script
from transformers import TrainerCallback

from hf_mmr import MMRConfigError, MMRTrainer, MMRTrainingArguments, expected_calibration_error
from hf_mmr.calibration import TEMPERATURE_RANGE, fit_temperature, fold_temperature, stratified_split, temperature_nll

HERE = os.path.dirname(os.path.abspath(__file__))


def learnable_dataset(n, seed=0, num_labels=3, length=10):
    """Synthetic sequences whose label is their first token's class: a tiny model learns it in a few steps."""
    data = synthetic_dataset(n=n, num_labels=num_labels, length=length, seed=seed)
    for example in data:
        example["labels"] = torch.tensor(int(example["input_ids"][0]) % num_labels)
    return data


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_fitted_temperature_minimizes_the_nll_of_a_tiny_models_logits(tmp_path):
    trainer = make_trainer(tmp_path, dataset=learnable_dataset(96), max_steps=30, per_device_train_batch_size=16)
    trainer.train()
    output = trainer.predict(learnable_dataset(200, seed=3))
    logits, labels = output.predictions.astype(np.float64), output.label_ids
    fitted = fit_temperature(logits, labels)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    losses = [temperature_nll(logits, labels, t) for t in grid]
    assert grid[0] < fitted < grid[-1]
    assert temperature_nll(logits, labels, fitted) <= min(losses) + 1e-12
    assert abs(np.log(fitted) - np.log(grid[int(np.argmin(losses))])) <= np.log(grid[1] / grid[0])


def test_separable_and_uninformative_logits_stop_at_the_bounds():
    separated = np.array([[5.0, -5.0], [-5.0, 5.0]] * 30)
    assert fit_temperature(separated, [0, 1] * 30) == TEMPERATURE_RANGE[0]
    constant = np.zeros((60, 3))
    assert fit_temperature(constant, [0, 1, 2] * 20) == TEMPERATURE_RANGE[1]


def test_the_folded_head_gives_the_logits_divided_by_t_and_the_same_argmax():
    model = tiny_model("bert", num_labels=3, seed=2).eval()
    batch = torch.randint(1, 100, (16, 9))
    with torch.no_grad():
        before = model(input_ids=batch).logits
        fold_temperature(model.classifier, 2.5)
        after = model(input_ids=batch).logits
    torch.testing.assert_close(after, before / 2.5, rtol=1e-6, atol=1e-6)
    assert torch.equal(after.argmax(dim=1), before.argmax(dim=1))


def test_the_split_is_stratified_seeded_and_keeps_the_order():
    labels = [0] * 70 + [1] * 30
    kept, held = stratified_split(labels, 0.1, seed=4)
    assert sorted(kept + held) == list(range(100)) and kept == sorted(kept)
    assert [labels[i] for i in held].count(0) == 7 and [labels[i] for i in held].count(1) == 3
    assert stratified_split(labels, 0.1, seed=4) == (kept, held)
    assert stratified_split(labels, 0.1, seed=5)[1] != held


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny BERT trained on 540 of 600 examples, then calibrated on the other 60, saved and evaluated."""
    out = tmp_path_factory.mktemp("calibrated")
    trainer = make_trainer(
        out,
        dataset=learnable_dataset(600),
        max_steps=20,
        per_device_train_batch_size=16,
        calibration="temperature",
        record_margins=True,
    )
    trainer.eval_dataset = learnable_dataset(120, seed=7)
    output = trainer.train()
    trainer.save_model()
    metrics = trainer.evaluate()
    return trainer, output, metrics, out


def test_calibration_holds_out_a_slice_and_reports_the_fit(calibrated):
    trainer, output, _, _ = calibrated
    assert len(trainer.train_dataset) == 540 and len(trainer.calibration_dataset) == 60
    assert len(trainer.train_rows) == 540 and len(trainer.train_margins) == 540
    report = trainer.calibration_report
    assert report["calibration_examples"] == 60
    assert report["calibration_temperature"] == trainer.temperature != 1.0
    assert report["calibration_nll_after"] <= report["calibration_nll_before"]
    for key, value in report.items():
        assert output.metrics[key] == value  # train_results.json
    logged = [entry for entry in trainer.state.log_history if "calibration_temperature" in entry]
    assert len(logged) == 1  # the logs, every report_to


def test_eval_ece_is_the_calibrated_models_and_the_uncalibrated_one_stands_beside_it(calibrated):
    trainer, _, metrics, _ = calibrated
    output = trainer.predict(trainer.eval_dataset)
    labels = output.label_ids
    calibrated_probs = torch.tensor(output.predictions).softmax(dim=1).double().numpy()
    raw_probs = (torch.tensor(output.predictions) * trainer.temperature).softmax(dim=1).double().numpy()
    assert metrics["eval_ece"] == pytest.approx(expected_calibration_error(calibrated_probs, labels), abs=1e-6)
    assert metrics["eval_ece_uncalibrated"] == pytest.approx(expected_calibration_error(raw_probs, labels), abs=1e-6)
    assert metrics["eval_ece"] != metrics["eval_ece_uncalibrated"]


def test_the_saved_model_is_calibrated_as_plain_transformers_loads_it(calibrated):
    """A process without hf_mmr loads the folder and reproduces the reported eval_ece."""
    trainer, _, metrics, out = calibrated
    ids = torch.stack([e["input_ids"] for e in trainer.eval_dataset]).tolist()
    labels = [int(e["labels"]) for e in trainer.eval_dataset]
    code = f"""
import json, sys
import torch
from transformers import AutoModelForSequenceClassification
assert "hf_mmr" not in sys.modules
model = AutoModelForSequenceClassification.from_pretrained({str(out)!r}).eval()
with torch.no_grad():
    logits = model(input_ids=torch.tensor({ids})).logits
print(json.dumps(logits.tolist()))
"""
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=subprocess_env()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    probs = torch.tensor(json.loads(result.stdout)).softmax(dim=1).double().numpy()
    assert expected_calibration_error(probs, np.array(labels)) == pytest.approx(metrics["eval_ece"], abs=1e-6)


def test_the_model_card_states_the_temperature(calibrated):
    trainer, _, _, out = calibrated
    trainer.create_model_card()
    text = (out / "README.md").read_text()
    assert f"T = {trainer.temperature:.4f}" in text and "## Calibration" in text
    report = trainer.calibration_report
    assert f"ECE {report['calibration_ece_before']:.4f} → {report['calibration_ece_after']:.4f}" in text
    assert "| `calibration` | temperature |" in text


def test_a_resumed_run_calibrates_once_to_the_uninterrupted_runs_temperature(tmp_path):
    def trainer_for(folder, **settings):
        settings = {"max_steps": 12, "per_device_train_batch_size": 16, "calibration": "temperature", **settings}
        return make_trainer(folder, dataset=learnable_dataset(600), **settings)

    whole = trainer_for(tmp_path / "whole")
    whole.train()
    first = trainer_for(tmp_path / "resumed", save_strategy="steps", save_steps=6)
    first.add_callback(StopAt(6))  # interrupted after its checkpoint at step 6, with the 12-step schedule
    first.train()
    assert first.state.global_step == 6
    resumed = trainer_for(tmp_path / "resumed", save_strategy="steps", save_steps=6)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-6"))
    assert resumed.temperature == pytest.approx(whole.temperature, rel=1e-6)
    assert sum("calibration_temperature" in entry for entry in resumed.state.log_history) == 1


@pytest.mark.parametrize("mode", ["select", "cached"])
def test_the_best_checkpoint_is_calibrated_once_with_mmr_a_selection_mode_and_bf16(tmp_path, mode):
    """With MMR, a selection mode, bf16 and load_best_model_at_end, T is fitted on the best model and folded once:
    the saved model gives the best checkpoint's logits / T."""
    args = MMRTrainingArguments(
        output_dir=str(tmp_path),
        **{
            **QUIET,
            "max_steps": 12,
            "per_device_train_batch_size": 16,
            "calibration": "temperature",
            "mmr_lambda": 0.1,
            "mmr_form": "weights",
            "mms_selection": mode,
            "bf16": True,
            "use_cpu": True,
            "eval_strategy": "steps",
            "eval_steps": 4,
            "save_strategy": "steps",
            "save_steps": 4,
            "load_best_model_at_end": True,
            "metric_for_best_model": "loss",
            "greater_is_better": True,  # the worst checkpoint is "best": it differs from the last one
        },
    )
    trainer = MMRTrainer(
        model=tiny_model("bert", num_labels=3, seed=1),
        args=args,
        train_dataset=learnable_dataset(600),
        eval_dataset=learnable_dataset(60, seed=5),
    )
    output = trainer.train()
    assert output.metrics["calibration_temperature"] == trainer.temperature != 1.0
    assert not trainer.state.best_model_checkpoint.endswith("checkpoint-12")
    assert sum("calibration_temperature" in entry for entry in trainer.state.log_history) == 1
    trainer.save_model(str(tmp_path / "final"))  # loaded back in float32: accelerate's bf16 autocast stays behind
    best = type(trainer.model).from_pretrained(trainer.state.best_model_checkpoint).eval()
    final = type(trainer.model).from_pretrained(str(tmp_path / "final")).eval()
    batch = torch.stack([e["input_ids"] for e in trainer.calibration_dataset])
    with torch.no_grad():
        expected = best(input_ids=batch).logits / trainer.temperature
        got = final(input_ids=batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def test_calibrate_by_hand_on_a_given_set(tmp_path):
    trainer = make_trainer(tmp_path, dataset=learnable_dataset(96), max_steps=10, per_device_train_batch_size=16)
    trainer.train()
    assert trainer.temperature is None
    held = learnable_dataset(80, seed=9)
    before = trainer.predict(held).predictions
    report = trainer.calibrate(held)
    after = trainer.predict(held).predictions
    np.testing.assert_allclose(after, before / report["calibration_temperature"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "settings,words",
    [
        ({"calibration_split": 0.0}, "--calibration_split must be a finite number in (0, 0.5]"),
        ({"calibration_split": 0.6}, "--calibration_split must be a finite number in (0, 0.5]"),
        ({"calibration": "platt"}, "--calibration must be one of none, temperature"),
    ],
)
def test_bad_calibration_settings_are_refused_in_one_line(tmp_path, settings, words):
    with pytest.raises(MMRConfigError) as error:
        MMRTrainingArguments(output_dir=str(tmp_path), **settings)
    assert words in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "n,num_labels,words",
    [
        (300, 3, "has 31 examples; fitting a temperature needs at least 50"),
        (600, 7, "has no example of class"),  # labels 0..2 only: the model's classes 3..6 never occur
    ],
)
def test_a_calibration_slice_too_small_or_missing_a_class_is_refused(tmp_path, n, num_labels, words):
    with pytest.raises(MMRConfigError) as error:
        make_trainer(
            tmp_path,
            model=tiny_model("bert", num_labels=num_labels),
            dataset=learnable_dataset(n),
            calibration="temperature",
        )
    assert words in str(error.value) and "\n" not in str(error.value)


def test_regression_and_the_eval_set_as_calibration_set_are_refused(tmp_path):
    regression = tiny_model("bert", num_labels=1)
    with pytest.raises(MMRConfigError, match="--calibration temperature needs single-label classification"):
        make_trainer(tmp_path, model=regression, dataset=learnable_dataset(100), calibration="temperature")
    evaluation = learnable_dataset(100, seed=2)
    args = MMRTrainingArguments(output_dir=str(tmp_path), calibration="temperature", **QUIET)
    with pytest.raises(MMRConfigError, match="calibration_dataset is the eval_dataset"):
        MMRTrainer(
            model=tiny_model("bert"),
            args=args,
            train_dataset=learnable_dataset(100),
            eval_dataset=evaluation,
            calibration_dataset=evaluation,
        )


def test_two_processes_fit_the_one_process_temperature_on_the_whole_slice(tmp_path):
    worker = os.path.join(HERE, "distributed", "calibration_worker.py")
    import subprocess

    single = subprocess.run(
        [sys.executable, worker, str(tmp_path / "one")],
        check=False,
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert single.returncode == 0, single.stderr[-3000:]
    double = launch(worker, str(tmp_path / "two"))
    assert double.returncode == 0, double.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    two = [json.loads((tmp_path / "two" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert one["world_size"] == 1 and two[0]["world_size"] == 2
    for report in two:
        assert report["calibration_examples"] == one["calibration_examples"] == 60
        assert report["calibration_temperature"] == pytest.approx(one["calibration_temperature"], rel=1e-6)


@pytest.mark.e2e
def test_the_script_calibrates_and_the_outputs_say_so(glue_dir, tmp_path):
    out = tmp_path / "out"
    result = run_script(
        "--task_name", "mrpc", "--glue_dir", glue_dir, "--do_train", "--do_eval", "--output_dir", str(out),
        "--max_train_samples", "600", "--max_eval_samples", "64", "--max_steps", "8",
        "--per_device_train_batch_size", "16", "--calibration", "temperature", "--record_margins", "true",
        "--report_to", "none", "--save_strategy", "no",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    train = json.loads((out / "train_results.json").read_text())
    evaluation = json.loads((out / "eval_results.json").read_text())
    assert train["calibration_examples"] == 60 and train["train_samples"] == 540
    assert train["calibration_temperature"] > 0 and "eval_ece_uncalibrated" in evaluation
    assert "## Calibration" in (out / "README.md").read_text()
    header = (out / "train_margins.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["index", "row", "sentence1"]
