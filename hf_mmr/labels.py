"""A custom task's label column, read as the user meant it: classes or real numbers, every cell checked.

A loader infers a column's type from its cells: one empty cell makes a 0/1 CSV column float, and a
JSON file whose labels mix ``1`` and ``"1"`` gets a JSON-typed column. So the kind of task is not
taken from that type. ``read_labels`` decides it from ``--do_regression`` when given, and otherwise
from the values: regression when some label is a number that is not whole, classification when
every label is a word or a whole number. An empty label is refused naming its file and row; the
same value spelled as a number and as a string (``1``, ``1.0``, ``"1"``) is one class; numbers mixed
with words are refused naming both spellings.
"""

from __future__ import annotations

import math
from typing import Any

from .checks import is_number
from .errors import MMRConfigError

LABEL = "label"


def _canonical(value: Any) -> Any:
    """One spelling per value: a whole float or a numeric string becomes an int; other strings are stripped."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, str):
        text = value.strip()
        for kind in (int, float):
            try:
                return _canonical(kind(text))
            except ValueError:
                continue
        return text
    if hasattr(value, "item"):  # numpy scalars
        return _canonical(value.item())
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def read_labels(raw: Any, sources: dict[str, str], do_regression: bool | None) -> tuple[Any, bool, list]:
    """(``raw`` with an int64 ``label`` column of class ids or a float32 one of targets, regression?, class list).

    ``raw`` is a ``DatasetDict`` whose splits may have a ``label`` column (a test split may have none, or
    empty cells, which become -1 or NaN). Labels of the other splits must be among the training labels.
    """
    import datasets

    values: dict[str, list] = {}
    for split, dataset in raw.items():
        if LABEL not in dataset.column_names:
            continue
        cells = list(dataset[LABEL])
        if split != "test":
            row = next((i for i, cell in enumerate(cells, start=1) if _missing(cell)), None)
            if row is not None:
                raise MMRConfigError(f"{sources[split]}: row {row} has no label; fill it in, or remove the row")
        values[split] = [None if _missing(cell) else _canonical(cell) for cell in cells]
    numbers = [(s, v) for s, column in values.items() for v in column if is_number(v)]
    words = [(s, v) for s, column in values.items() for v in column if isinstance(v, str)]
    if numbers and words:
        (number_split, number), (word_split, word) = numbers[0], words[0]
        raise MMRConfigError(
            f"labels mix numbers and words ({number!r} in {sources[number_split]}, {word!r} in "
            f"{sources[word_split]}); spell every label one way"
        )
    is_regression = do_regression if do_regression is not None else any(isinstance(v, float) for _, v in numbers)
    if is_regression:
        if words:
            raise MMRConfigError(
                f"--do_regression needs numeric labels, but {sources[words[0][0]]} has {words[0][1]!r}"
            )
        columns = {split: [math.nan if v is None else float(v) for v in column] for split, column in values.items()}
        feature, label_list = datasets.Value("float32"), []
    else:
        label_list = sorted({v for v in values["train"] if v is not None}, key=lambda v: (isinstance(v, str), v))
        ids = {label: i for i, label in enumerate(label_list)}
        for split, column in values.items():
            unknown = next((i for i, v in enumerate(column, start=1) if v is not None and v not in ids), None)
            if unknown is not None and split != "train":
                raise MMRConfigError(
                    f"{sources[split]}: row {unknown} has label {column[unknown - 1]!r}, not in the training labels "
                    f"({', '.join(map(repr, label_list))})"
                )
        columns = {split: [ids.get(v, -1) for v in column] for split, column in values.items()}
        feature = datasets.Value("int64")
    for split, column in columns.items():
        raw[split] = raw[split].remove_columns(LABEL).add_column(LABEL, column).cast_column(LABEL, feature)
    return raw, is_regression, label_list
