"""The GLUE TSV reader on the real files, its label ids against the Hub's, and the GLUE metrics."""

import collections
import os

import numpy as np
import pytest

from hf_mmr import GlueDataError
from hf_mmr.glue import TASKS, load_glue_tsv, read_tsv
from hf_mmr.metrics import glue_scores, load_glue_metric

# Label names and ids of the Hub's nyu-mll/glue (features["label"].names).
HUB_LABELS = {
    "cola": ["unacceptable", "acceptable"],
    "sst2": ["negative", "positive"],
    "mrpc": ["not_equivalent", "equivalent"],
    "qqp": ["not_duplicate", "duplicate"],
    "mnli": ["entailment", "neutral", "contradiction"],
    "qnli": ["entailment", "not_entailment"],
    "rte": ["entailment", "not_entailment"],
    "wnli": ["not_entailment", "entailment"],
}

# (task, file, rows, label counts, first row's Hub text columns, first label) as on the Hub.
REAL_FILES = [
    (
        "mrpc",
        "MRPC/train.tsv",
        3668,
        {1: 2474, 0: 1194},
        {
            "sentence1": 'Amrozi accused his brother, whom he called "the witness", of deliberately distorting his evidence.'
        },
        1,
    ),
    ("mrpc", "MRPC/dev.tsv", 408, {1: 279, 0: 129}, {}, None),
    (
        "rte",
        "RTE/train.tsv",
        2490,
        {0: 1249, 1: 1241},
        {
            "sentence1": "No Weapons of Mass Destruction Found in Iraq Yet.",
            "sentence2": "Weapons of Mass Destruction Found in Iraq.",
        },
        1,
    ),
    ("rte", "RTE/dev.tsv", 277, {0: 146, 1: 131}, {}, None),
    (
        "sst2",
        "SST-2/train.tsv",
        67349,
        {1: 37569, 0: 29780},
        {"sentence": "hide new secretions from the parental units "},
        0,
    ),
    ("sst2", "SST-2/dev.tsv", 872, {1: 444, 0: 428}, {}, None),
    (
        "qnli",
        "QNLI/dev.tsv",
        5463,
        {0: 2702, 1: 2761},
        {"question": "What came into force after the new constitution was herald?"},
        0,
    ),
    (
        "mnli",
        "MNLI/dev_matched.sample.tsv",
        5,
        {2: 3, 1: 1, 0: 1},
        {"premise": "The new rights are nice enough", "hypothesis": "Everyone really likes the newest benefits "},
        1,
    ),
    (
        "qqp",
        "QQP/dev.sample.tsv",
        9,
        {0: 5, 1: 4},
        {"question1": "Why are African-Americans so beautiful?", "question2": "Why are hispanics so beautiful?"},
        0,
    ),
]


def test_label_names_are_the_hubs():
    for name, labels in HUB_LABELS.items():
        assert list(TASKS[name].label_names) == labels, name
    assert TASKS["stsb"].is_regression


@pytest.mark.parametrize("task,path,rows,counts,first,first_label", REAL_FILES, ids=[r[1] for r in REAL_FILES])
def test_real_files_read_like_the_hub(glue_dir, task, path, rows, counts, first, first_label):
    data = read_tsv(os.path.join(glue_dir, path), TASKS[task])
    assert len(data["label"]) == rows
    assert dict(collections.Counter(data["label"])) == counts
    assert data["idx"][:3] == [0, 1, 2]
    for column, text in first.items():
        assert data[column][0] == text
    if first_label is not None:
        assert data["label"][0] == first_label


def test_fields_starting_with_a_quote_are_kept_verbatim(glue_dir):
    rte = read_tsv(os.path.join(glue_dir, "RTE/train.tsv"), TASKS["rte"])
    assert rte["sentence1"][2164].startswith('"That film')
    qnli = read_tsv(os.path.join(glue_dir, "QNLI/dev.tsv"), TASKS["qnli"])
    assert all(qnli["sentence"][i].startswith('" ') for i in (694, 3428, 3479, 3529, 4080))


def test_mrpc_bom_does_not_hide_the_label_column(glue_dir):
    path = os.path.join(glue_dir, "MRPC/train.tsv")
    with open(path, "rb") as handle:
        assert handle.read(3) == b"\xef\xbb\xbf"
    assert set(read_tsv(path, TASKS["mrpc"])["label"]) == {0, 1}


def test_load_glue_tsv_has_hub_features(glue_dir):
    data = load_glue_tsv(glue_dir, "RTE", ["train", "validation"])
    assert set(data) == {"train", "validation"}
    assert data["train"].features["label"].names == HUB_LABELS["rte"]
    assert data["validation"].column_names == ["sentence1", "sentence2", "label", "idx"]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_ragged_row_names_file_and_line(tmp_path):
    path = write(tmp_path, "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n")
    with pytest.raises(GlueDataError, match=r"train\.tsv:3: expected 4 tab-separated fields, got 3"):
        read_tsv(path, TASKS["rte"])


def test_unknown_label_names_file_line_and_value(tmp_path):
    path = write(tmp_path, "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(GlueDataError, match=r"dev\.tsv:2: unknown label 'maybe'"):
        read_tsv(path, TASKS["rte"])


def test_wrong_file_for_the_task(tmp_path):
    path = write(tmp_path, "train.tsv", "sentence\tlabel\nfine\t1\n")
    with pytest.raises(GlueDataError, match="no column '#1 String'"):
        read_tsv(path, TASKS["mrpc"])


def test_test_split_has_no_labels(tmp_path):
    path = write(tmp_path, "test.tsv", "index\tsentence\n0\tgood\n1\tbad\n")
    assert read_tsv(path, TASKS["sst2"])["label"] == [-1, -1]


def test_cola_train_is_headerless(tmp_path):
    path = write(
        tmp_path, "train.tsv", "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\ngj04\t0\t*\tThe more.\n"
    )
    data = read_tsv(path, TASKS["cola"])
    assert data["label"] == [1, 0] and data["sentence"][1] == "The more."


@pytest.mark.parametrize(
    "layout,message",
    [("missing", "is not a directory"), ("no_task", "has no RTE/ folder"), ("no_split", "missing .*dev.tsv")],
)
def test_glue_dir_problems_are_named(tmp_path, layout, message):
    if layout != "missing":
        (tmp_path / "glue").mkdir()
    if layout == "no_split":
        (tmp_path / "glue" / "RTE").mkdir()
        write(tmp_path / "glue" / "RTE", "train.tsv", "index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(GlueDataError, match=message):
        load_glue_tsv(str(tmp_path / "glue"), "rte", ["train", "validation"])


def test_metrics_against_hand_computation():
    predictions = np.array([1, 1, 0, 0, 1, 0, 1, 1])
    references = np.array([1, 0, 0, 1, 1, 0, 1, 0])
    # TP = 3, FP = 2, FN = 1, TN = 2
    assert glue_scores("rte", predictions, references) == {"accuracy": 5 / 8}
    assert glue_scores("mrpc", predictions, references) == pytest.approx({"accuracy": 5 / 8, "f1": 6 / 9})
    mcc = (3 * 2 - 2 * 1) / np.sqrt((3 + 2) * (3 + 1) * (2 + 2) * (2 + 1))
    assert glue_scores("cola", predictions, references)["matthews_correlation"] == pytest.approx(mcc)
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([2.0, 1.0, 4.0, 4.0])
    # Pearson by hand: deviations (-1.5, -.5, .5, 1.5) and (-.75, -1.75, 1.25, 1.25)
    pearson = 4.5 / np.sqrt(5.0 * 6.75)
    # Spearman: ranks of y with the tie averaged are (2, 1, 3.5, 3.5), deviations (-.5, -1.5, 1, 1)
    spearman = 3.5 / np.sqrt(5.0 * 4.5)
    scores = glue_scores("stsb", x, y)
    assert scores["pearson"] == pytest.approx(pearson) and scores["spearmanr"] == pytest.approx(spearman)


def test_evaluate_module_works_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = load_glue_metric("mrpc")
    result = metric.compute(predictions=[1, 1, 0, 0], references=[1, 0, 0, 1])
    assert result == pytest.approx({"accuracy": 0.5, "f1": 0.5})
