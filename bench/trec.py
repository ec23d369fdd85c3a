#!/usr/bin/env python
"""TREC question classification (Li & Roth 2002, 6 coarse classes) as CSV files for ``--train_file``.

The original files (``train_5500.label``, ``TREC_10.label``) hold one question per line,
``COARSE:fine question text``, in latin-1. This writes ``train.csv`` and ``test.csv`` with the
columns ``text`` and ``label`` (the coarse class name), which run_glue_mmr.py reads as a custom
task, exactly as a user's own data::

    python bench/trec.py --trec_dir ../shared/data/trec --out /tmp/trec_csv
    python run_glue_mmr.py --train_file /tmp/trec_csv/train.csv --validation_file /tmp/trec_csv/test.csv \\
        --do_train --do_eval --output_dir out
"""

from __future__ import annotations

import argparse
import csv
import os

FILES = {"train": "train_5500.label", "test": "TREC_10.label"}
COARSE_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")


def read_trec(path: str) -> list[tuple[str, str]]:
    """(question, coarse class) of every line: the label is the first space-separated token."""
    rows = []
    with open(path, encoding="latin-1") as handle:  # one byte of the training file is not UTF-8
        for line_no, line in enumerate(handle, start=1):
            label, _, text = line.rstrip("\n").partition(" ")
            coarse = label.split(":", 1)[0]
            if coarse not in COARSE_CLASSES or not text:
                raise SystemExit(f"{path}:{line_no}: expected 'COARSE:fine question', got {line[:60]!r}")
            rows.append((text, coarse))
    return rows


def to_csv(trec_dir: str, out_dir: str) -> dict[str, str]:
    """Write ``out_dir/train.csv`` and ``out_dir/test.csv``; return their paths by split."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, name in FILES.items():
        source = os.path.join(trec_dir, name)
        if not os.path.isfile(source):
            raise SystemExit(f"--trec_dir {trec_dir!r} has no {name}")
        paths[split] = os.path.join(out_dir, f"{split}.csv")
        with open(paths[split] + ".part", "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(read_trec(source))
        os.replace(paths[split] + ".part", paths[split])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trec_dir", required=True, help="folder holding train_5500.label and TREC_10.label")
    parser.add_argument("--out", required=True, help="folder for train.csv and test.csv")
    options = parser.parse_args()
    for split, path in to_csv(options.trec_dir, options.out).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
