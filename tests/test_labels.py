"""Label columns read as meant (hf_mmr.labels), and regression trained end to end as run_glue.py trains it."""

import json

import datasets
import pytest
from test_e2e import ROOT

from hf_mmr import MMRConfigError
from hf_mmr.labels import read_labels


def raw_of(**splits):
    """A DatasetDict of ``split -> list of label values`` (text beside them), as a loader would give it."""
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(len(labels))], "label": labels})
            for split, labels in splits.items()
        }
    )


SOURCES = {"train": "train.csv", "validation": "dev.csv", "test": "test.csv"}


@pytest.fixture
def run_main(capsys, monkeypatch):
    """run_glue_mmr.main in this process, offline (no interpreter to start): returns (exit code, stderr)."""
    import run_glue_mmr

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def run(*args: str) -> tuple[int, str]:
        try:
            run_glue_mmr.main(list(args))
        except SystemExit as stop:
            return stop.code, capsys.readouterr().err
        return 0, capsys.readouterr().err

    return run


def test_whole_numbers_are_classes_even_in_a_float_column():
    raw, regression, classes = read_labels(raw_of(train=[1.0, 0.0, 1.0], validation=[0.0]), SOURCES, None)
    assert not regression and classes == [0, 1]
    assert raw["train"]["label"][:] == [1, 0, 1] and raw["train"].features["label"].dtype == "int64"


def test_a_non_whole_number_makes_regression_and_the_flag_overrides_either_way():
    raw, regression, classes = read_labels(raw_of(train=[1.5, 3.0], validation=[2.0]), SOURCES, None)
    assert regression and classes == [] and raw["train"].features["label"].dtype == "float32"
    assert raw["validation"]["label"][:] == [2.0]
    _, regression, _ = read_labels(raw_of(train=[1, 0, 3], validation=[0]), SOURCES, True)
    assert regression
    _, regression, classes = read_labels(raw_of(train=[0.5, 1.5], validation=[0.5]), SOURCES, False)
    assert not regression and classes == [0.5, 1.5]


def test_one_value_spelled_as_number_and_string_is_one_class():
    train = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": ["1", " 1", "0"]})
    raw = datasets.DatasetDict({"train": train, "validation": train.select([0])})
    raw["train"] = raw["train"].cast_column("label", datasets.Value("string"))
    _, regression, classes = read_labels(raw, SOURCES, None)
    assert not regression and classes == [0, 1]


def test_words_are_classes_in_sorted_order_and_unknown_dev_labels_are_named():
    raw, _, classes = read_labels(raw_of(train=["pos", "neg", "pos"], validation=["neg"]), SOURCES, None)
    assert classes == ["neg", "pos"] and raw["train"]["label"][:] == [1, 0, 1]
    with pytest.raises(MMRConfigError, match=r"dev.csv: row 1 has label 'meh', not in the training labels"):
        read_labels(raw_of(train=["pos", "neg"], validation=["meh"]), SOURCES, None)


def test_an_empty_label_is_refused_naming_file_and_row_but_a_test_file_may_lack_labels():
    with pytest.raises(MMRConfigError, match=r"^train.csv: row 3 has no label; fill it in, or remove the row$"):
        read_labels(raw_of(train=[1.0, 0.0, None], validation=[1.0]), SOURCES, None)
    raw, _, _ = read_labels(raw_of(train=[1, 0], validation=[1], test=[None, None]), SOURCES, None)
    assert raw["test"]["label"][:] == [-1, -1]


@pytest.mark.e2e
def test_a_float_label_csv_trains_as_regression_with_mse(tmp_path, run_main):
    rows = "".join(f"sentence number {i},{i % 7 * 0.7:.1f}\n" for i in range(40))
    (tmp_path / "train.csv").write_text("sentence,label\n" + rows)
    (tmp_path / "dev.csv").write_text("sentence,label\n" + rows)
    out = tmp_path / "out"
    code, stderr = run_main(
        "--train_file", str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "dev.csv"),
        "--do_train", "--do_eval", "--output_dir", str(out), "--max_steps", "3", "--report_to", "none",
    )  # fmt: skip
    assert code == 0, stderr[-3000:]
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_mse"] > 0 and "eval_accuracy" not in metrics and "eval_ece" not in metrics
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1


@pytest.mark.e2e
def test_mixed_json_labels_train_as_two_classes(tmp_path, run_main):
    lines = "".join(json.dumps({"sentence": f"s{i}", "label": [1, "1", 0][i % 3]}) + "\n" for i in range(30))
    (tmp_path / "train.jsonl").write_text(lines)
    out = tmp_path / "out"
    code, stderr = run_main(
        "--train_file", str(tmp_path / "train.jsonl"), "--validation_file", str(tmp_path / "train.jsonl"),
        "--do_train", "--do_eval", "--output_dir", str(out), "--max_steps", "2", "--report_to", "none",
    )  # fmt: skip
    if int(datasets.__version__.split(".")[0]) < 5:  # its JSON loader refuses a column of numbers and strings
        assert code == 2 and "changed from number to string" in stderr.strip().splitlines()[-1]
        return
    assert code == 0, stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "0", "1": "1"}


@pytest.mark.e2e
@pytest.mark.parametrize(
    "config,metrics,absent",
    [
        ("stsb.yaml", ("eval_pearson", "eval_spearmanr"), ("eval_ece", "eval_mms_median")),
        ("cola.yaml", ("eval_matthews_correlation", "eval_ece", "eval_mms_median"), ()),
    ],
)
def test_real_stsb_and_cola_train_and_evaluate(glue_dir, tmp_path, run_main, config, metrics, absent):
    out = tmp_path / "out"
    code, stderr = run_main(
        f"{ROOT}/configs/{config}", "--glue_dir", glue_dir, "--output_dir", str(out), "--max_steps", "4",
        "--max_train_samples", "256", "--max_eval_samples", "128", "--save_strategy", "no", "--report_to", "none",
        "--pad_to_max_length", "false",  # dynamic padding: the short sentences of both tasks train fast
    )  # fmt: skip
    assert code == 0, stderr[-3000:]
    results = json.loads((out / "eval_results.json").read_text())
    assert all(name in results for name in metrics) and not any(name in results for name in absent)
    if config == "stsb.yaml":
        assert (
            -1 <= results["eval_pearson"] <= 1 and len(json.loads((out / "config.json").read_text())["id2label"]) == 1
        )
    else:
        assert (out / "train_margins.csv").is_file()
    assert "split: validation" in (out / "README.md").read_text()  # the model-index names the split
