"""Choosing MMR's setting with Trainer.hyperparameter_search."""

import json
import os

import pytest
from conftest import search_two_trials

from hf_mmr.search import make_mmr_hp_space

HERE = os.path.dirname(os.path.abspath(__file__))


def test_two_trials_each_train_with_their_own_setting(tmp_path):
    pytest.importorskip("optuna")
    log, best = search_two_trials(tmp_path, per_device_train_batch_size=8)
    assert len(log.trials) == 2
    (first, first_penalty), (second, second_penalty) = log.trials
    assert first != second and all(1e-4 <= value <= 0.1 for value in (first, second))
    # The logs round to 6 digits.
    assert any(best.hyperparameters["mmr_lambda"] == pytest.approx(value, rel=1e-3) for value in (first, second))
    assert first_penalty > 0 and second_penalty > 0  # the penalty was on in each trial


def test_hp_space_fixes_single_choices_and_checks_its_ranges():
    optuna = pytest.importorskip("optuna")
    trial = optuna.trial.FixedTrial({"mmr_lambda": 0.01})
    assert make_mmr_hp_space(forms=["margin"], detach_radius=[True])(trial) == {
        "mmr_lambda": 0.01,
        "mmr_form": "margin",
        "mmr_detach_radius": True,
    }
    for bad in ({"lambda_range": (0.0, 1.0)}, {"lambda_range": (0.1, 0.01)}, {"forms": ["ratio"]}, {"forms": []}):
        with pytest.raises(ValueError):
            make_mmr_hp_space(**bad)


@pytest.mark.e2e
def test_search_on_two_processes(tmp_path):
    pytest.importorskip("optuna")
    from test_distributed import launch

    result = launch(os.path.join(HERE, "distributed", "search_worker.py"), str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert len(rank0["lambdas"]) == 2 and rank0["lambdas"] == rank1["lambdas"]  # both ranks ran the same trials
    assert rank0["lambdas"][0] != rank0["lambdas"][1]
    assert rank0["best"] is not None and rank1["best"] is None  # optuna's study lives on rank 0


def test_search_mmr_setting_holds_out_train_reports_every_trial_and_is_reused(tmp_path):
    import datasets
    from conftest import QUIET, synthetic_dataset, tiny_model

    from hf_mmr import MMRTrainer, MMRTrainingArguments
    from hf_mmr.search import SEARCH_FILE, card_section, search_mmr_setting

    rows = synthetic_dataset(n=20)
    train = datasets.Dataset.from_dict({key: [row[key].tolist() for row in rows] for key in rows[0]})
    made = []

    def make_trainer(args, train_part, heldout):
        made.append((len(train_part), len(heldout), args.output_dir, args.save_strategy))
        return MMRTrainer(
            model_init=lambda: tiny_model("bert", num_labels=3, seed=1),
            args=args,
            train_dataset=train_part,
            eval_dataset=heldout,
            compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
        )

    args = MMRTrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, **QUIET)
    report = search_mmr_setting(make_trainer, args, train, metric="eval_accuracy", n_trials=2, heldout_fraction=0.25)
    assert made == [(15, 5, str(tmp_path / "mmr_search"), "no")]  # a quarter of train held out, nothing saved
    assert [trial["trial"] for trial in report["trials"]] == [0, 1] and report["heldout_examples"] == 5
    best = max(report["trials"], key=lambda trial: (trial["score"], -trial["trial"]))
    assert report["best"] == best and set(best["setting"]) == {"mmr_lambda", "mmr_form", "mmr_detach_radius"}
    assert json.loads((tmp_path / SEARCH_FILE).read_text()) == report
    assert "| trial |" in card_section(report) and "Chosen: trial" in card_section(report)
    again = search_mmr_setting(make_trainer, args, train, metric="eval_accuracy", n_trials=2, resuming=True)
    assert again == report and len(made) == 1  # a resumed run reuses its search
