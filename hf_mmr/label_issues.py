"""cleanlab on the probabilities a run recorded: ``find_label_issues(OUTPUT_DIR)`` writes ``label_issues.csv``.

cleanlab (Northcutt et al. 2021, ``cleanlab.filter.find_label_issues`` and
``cleanlab.rank.get_label_quality_scores``) ranks label issues from predicted class probabilities,
usually out-of-sample ones from K-fold cross-validation: K more fine-tunes. Here it reads the mean
probability vector that ``record_margins`` kept for every training example during the one ordinary
run (``train_probs.npy``), beside hf-mmr's own scores (``train_margins.csv``). Examples never trained
on (possible in ``select`` mode) have empty cells.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import MissingPackageError, RunFolderError
from .outputs import record
from .recording import PROBS_FILE, text_columns
from .suspects import normalized

# Written into the run's folder: one row per training example.
ISSUES_FILE = "label_issues.csv"


def load_probabilities(output_dir: str, num_examples: int) -> np.ndarray:
    """The run's ``train_probs.npy``, checked against the table's length; ``RunFolderError`` names what is wrong."""
    path = os.path.join(output_dir, PROBS_FILE)
    if not os.path.isfile(path):
        raise RunFolderError(f"{output_dir} has no {PROBS_FILE}; train with --record_margins true (hf-mmr >= 0.2)")
    try:
        probs = np.load(path)
    except (OSError, ValueError, EOFError) as error:
        raise RunFolderError(f"{path} cannot be read ({error}); rerun the training to write it again") from None
    if probs.ndim != 2 or len(probs) != num_examples:
        raise RunFolderError(f"{path} has shape {probs.shape}, not one row per each of the {num_examples} examples")
    return probs


def find_label_issues(output_dir: str, write: bool = True) -> Any:
    """cleanlab's label issues of a run's training examples, as a DataFrame (and ``OUTPUT_DIR/label_issues.csv``).

    Columns: ``index``, the texts, ``label`` (given), ``suggested_label`` (the class with the highest mean
    probability), ``label_quality_score`` (cleanlab's, lower = likelier an error), hf-mmr's ``label_quality``
    and ``suspect`` (``suspects.py``), ``is_label_issue`` (cleanlab's ``find_label_issues``, pruning by its
    estimated noise rate), with the label names beside the ids where the run wrote them.
    """
    try:
        from cleanlab.filter import find_label_issues as cleanlab_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise MissingPackageError(
            'finding label issues with cleanlab needs it: pip install "hf-mmr[cleanlab]"'
        ) from None
    import pandas as pd

    from .report import load_margins

    table = load_margins(output_dir)
    if table is None:
        raise RunFolderError(f"{output_dir} has no train_margins.csv; train with --record_margins true")
    probs = load_probabilities(output_dir, len(table)).astype(np.float64)
    trained = (table["seen"] > 0).to_numpy()
    labels = table.loc[trained, "label"].astype(int).to_numpy()
    seen_probs = normalized(probs[trained])
    quality = np.full(len(table), np.nan)
    issue = pd.array([None] * len(table), dtype="boolean")
    suggested = pd.array([None] * len(table), dtype="Int64")
    quality[trained] = get_label_quality_scores(labels, seen_probs)
    issue[trained] = cleanlab_issues(labels, seen_probs)
    suggested[trained] = seen_probs.argmax(axis=1)
    columns = {"index": table["index"], **{name: table[name] for name in text_columns(table)}}
    columns["label"] = table["label"]
    names = None
    if "label_name" in table.columns:
        columns["label_name"] = table["label_name"]
        known = table[["label", "label_name"]].dropna()
        names = dict(zip(known["label"].astype(int), known["label_name"]))
    columns["suggested_label"] = suggested
    if names is not None:
        columns["suggested_label_name"] = pd.Series(suggested).map(names)
    columns.update(label_quality_score=quality, label_quality=table["label_quality"], suspect=table["suspect"])
    columns["is_label_issue"] = issue
    issues = pd.DataFrame(columns)
    if write:
        issues.to_csv(os.path.join(output_dir, ISSUES_FILE), index=False)
        record(output_dir, [ISSUES_FILE])  # the folder's own file: a later run into it may replace it
    return issues
