"""GLUE tasks: column names and label ids of the Hub's ``nyu-mll/glue``, and a reader for the original TSV files.

A dataset read from ``--glue_dir`` has the same columns, label names and label ids as
``load_dataset("nyu-mll/glue", task)``, so models trained from either are interchangeable.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import datasets

from .errors import GlueDataError, UnknownTaskError


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is laid out on the Hub and in the original TSV files."""

    folder: str  # folder name under the GLUE directory
    text_columns: tuple[str, ...]  # Hub column names, in order
    tsv_text_columns: tuple[str, ...]  # the matching TSV header names
    tsv_label_column: str
    label_names: tuple[str, ...] = ()  # empty for regression
    # TSV label string -> label id (defaults to the label's index in label_names)
    tsv_labels: dict[str, int] = field(default_factory=dict)
    # Hub split name -> TSV file name
    files: dict[str, str] = field(
        default_factory=lambda: {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
    )
    # Header of headerless TSV files (CoLA's train and dev)
    headerless: tuple[str, ...] = ()

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def eval_splits(self) -> list[str]:
        return [split for split in self.files if split.startswith("validation")]

    @property
    def test_splits(self) -> list[str]:
        return [split for split in self.files if split.startswith("test")]

    def label_id(self, value: str) -> int:
        if self.tsv_labels:
            return self.tsv_labels[value]
        return self.label_names.index(value)


_BINARY = {"0": 0, "1": 1}
_NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        "CoLA",
        ("sentence",),
        ("sentence",),
        "label",
        ("unacceptable", "acceptable"),
        _BINARY,
        headerless=("source", "label", "original_label", "sentence"),
    ),
    "sst2": GlueTask("SST-2", ("sentence",), ("sentence",), "label", ("negative", "positive"), _BINARY),
    "mrpc": GlueTask(
        "MRPC",
        ("sentence1", "sentence2"),
        ("#1 String", "#2 String"),
        "Quality",
        ("not_equivalent", "equivalent"),
        _BINARY,
    ),
    "qqp": GlueTask(
        "QQP",
        ("question1", "question2"),
        ("question1", "question2"),
        "is_duplicate",
        ("not_duplicate", "duplicate"),
        _BINARY,
    ),
    "stsb": GlueTask("STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score"),
    "mnli": GlueTask(
        "MNLI",
        ("premise", "hypothesis"),
        ("sentence1", "sentence2"),
        "gold_label",
        ("entailment", "neutral", "contradiction"),
        files={
            "train": "train.tsv",
            "validation_matched": "dev_matched.tsv",
            "validation_mismatched": "dev_mismatched.tsv",
            "test_matched": "test_matched.tsv",
            "test_mismatched": "test_mismatched.tsv",
        },
    ),
    "qnli": GlueTask("QNLI", ("question", "sentence"), ("question", "sentence"), "label", _NLI2),
    "rte": GlueTask("RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", _NLI2),
    "wnli": GlueTask(
        "WNLI",
        ("sentence1", "sentence2"),
        ("sentence1", "sentence2"),
        "label",
        ("not_entailment", "entailment"),
        _BINARY,
    ),
}


def get_task(name: str) -> GlueTask:
    """The task called ``name`` (case-insensitive), or a clear error listing the known ones."""
    task = TASKS.get(name.lower())
    if task is None:
        raise UnknownTaskError(f"--task_name {name!r} is not a GLUE task; pick one of {', '.join(TASKS)}")
    return task


def task_features(task: GlueTask, with_labels: bool = True) -> datasets.Features:
    """The Hub's features of a task: text columns, ``label`` (ClassLabel or float) and ``idx``."""
    columns = {name: datasets.Value("string") for name in task.text_columns}
    if task.is_regression:
        columns["label"] = datasets.Value("float32")
    else:
        columns["label"] = datasets.ClassLabel(names=list(task.label_names))
    columns["idx"] = datasets.Value("int32")
    return datasets.Features(columns)


def read_tsv(path: str, task: GlueTask) -> dict[str, list]:
    """``_read_tsv``, with a file that is not UTF-8 reported by its first bad line."""
    try:
        return _read_tsv(path, task)
    except UnicodeDecodeError as error:
        with open(path, "rb") as handle:
            for line_no, line in enumerate(handle, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    break
        raise GlueDataError(
            f"{path}: line {line_no} is not UTF-8 ({error.reason}); GLUE files are UTF-8: re-save the file as UTF-8"
        ) from None


def _read_tsv(path: str, task: GlueTask) -> dict[str, list]:
    """Read one original GLUE TSV file into Hub-layout columns.

    Fields are tab-separated with no quoting (``csv.QUOTE_NONE``): GLUE sentences contain bare
    quote characters. A UTF-8 BOM (MRPC) is dropped. Test files have no label column; their
    ``label`` is -1, as on the Hub. A ragged row or unknown label raises ``GlueDataError``
    naming the file, line and value.
    """
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = None if task.headerless and os.path.basename(path) != "test.tsv" else next(rows, None)
        if header is None and not task.headerless:
            raise GlueDataError(f"{path} is empty; expected a GLUE TSV file with a header line")
        names = list(task.headerless if header is None else header)
        first_line = 1 if header is None else 2
        missing = [column for column in task.tsv_text_columns if column not in names]
        if missing:
            raise GlueDataError(f"{path}: header has no column {missing[0]!r}; is this the {task.folder} file?")
        text_at = [names.index(column) for column in task.tsv_text_columns]
        label_at = names.index(task.tsv_label_column) if task.tsv_label_column in names else None
        out: dict[str, list] = {name: [] for name in (*task.text_columns, "label", "idx")}
        for line_no, row in enumerate(rows, start=first_line):
            if not row:
                continue
            if len(row) != len(names):
                raise GlueDataError(f"{path}:{line_no}: expected {len(names)} tab-separated fields, got {len(row)}")
            for column, at in zip(task.text_columns, text_at):
                out[column].append(row[at])
            out["label"].append(-1 if label_at is None else _parse_label(task, row[label_at], path, line_no))
            out["idx"].append(len(out["idx"]))
    if not out["idx"]:
        raise GlueDataError(f"{path} has no data rows")
    return out


def _parse_label(task: GlueTask, value: str, path: str, line_no: int) -> float | int:
    try:
        return float(value) if task.is_regression else task.label_id(value)
    except (KeyError, ValueError):
        expected = (
            "a number" if task.is_regression else " or ".join(repr(v) for v in task.tsv_labels or task.label_names)
        )
        raise GlueDataError(f"{path}:{line_no}: unknown label {value!r}, expected {expected}") from None


def split_path(glue_dir: str, task: GlueTask, split: str) -> str:
    return os.path.join(glue_dir, task.folder, task.files[split])


def check_glue_dir(glue_dir: str, task: GlueTask, splits: list[str]) -> None:
    """Fail early, naming the missing directory or file, before anything is loaded."""
    if not os.path.isdir(glue_dir):
        raise GlueDataError(f"--glue_dir {glue_dir!r} is not a directory")
    folder = os.path.join(glue_dir, task.folder)
    if not os.path.isdir(folder):
        raise GlueDataError(f"--glue_dir {glue_dir!r} has no {task.folder}/ folder (expected the original GLUE layout)")
    for split in splits:
        path = split_path(glue_dir, task, split)
        if not os.path.isfile(path):
            raise GlueDataError(f"missing {path} for the {split} split; put the GLUE TSV file there")


def load_glue_tsv(glue_dir: str, task_name: str, splits: list[str]) -> datasets.DatasetDict:
    """Read ``splits`` of a task from ``glue_dir`` (``<glue_dir>/MRPC/train.tsv``, ...) as a DatasetDict."""
    task = get_task(task_name)
    check_glue_dir(glue_dir, task, splits)
    return datasets.DatasetDict(
        {
            # The split's name travels with it: the model card's model-index names the evaluation split.
            split: datasets.Dataset.from_dict(
                read_tsv(split_path(glue_dir, task, split), task), task_features(task), split=datasets.NamedSplit(split)
            )
            for split in splits
        }
    )
