"""Plot the margins of one or more runs: ``python -m hf_mmr.report OUTPUT_DIR [OUTPUT_DIR ...]``.

Reads each run's ``trainer_state.json`` (written by the Trainer) and, if present, its
``eval_mms.npy`` (written by ``run_glue_mmr.py --do_eval``), and writes into the first
directory (or ``--out``):

* ``mmr_training.png``: training loss and MMR penalty, feature radius R, the MMR weight
  lambda, and the quantiles (10/50/90 %) of the training batches' MMS, against the step;
* ``mmr_eval_mms.png``: the distribution (histogram and CDF) of the evaluation set's MMS,
  one curve per run, which is where larger margins show;
* ``mmr_train_margins.png``, for a run with ``train_margins.csv`` (``--record_margins``): the
  histogram of the training examples' AUM and dataset cartography's map (mean confidence against
  its variability), coloured by AUM.

``--suspects`` prints the first run's suspects (the examples its ``suspect`` column flags: as many of the
lowest ``label_quality`` as the estimated number of label errors), ``--suspects K`` its K lowest, with their
text, given label, last predicted label and ``label_quality``. ``--cleanlab`` runs
cleanlab on the first run's recorded probabilities and writes its ``label_issues.csv``
(``hf_mmr.label_issues``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from .errors import MMRError, RunFolderError

FLAGGED = "flagged"  # --suspects without K


def count(text: str) -> int | str:
    """``--suspects``' value: a number of examples (or ``FLAGGED``, its value without K)."""
    return text if text == FLAGGED else int(text)


def training_series(state: dict) -> dict[str, tuple[list[int], list[float]]]:
    """``name -> (steps, values)`` of every numeric training-log entry."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for entry in state.get("log_history", []):
        if "loss" not in entry:
            continue
        for name, value in entry.items():
            if name != "step" and isinstance(value, (int, float)):
                steps, values = series.setdefault(name, ([], []))
                steps.append(entry["step"])
                values.append(value)
    return series


def load_run(output_dir: str) -> tuple[dict, np.ndarray | None]:
    """A run's ``trainer_state.json`` and, if saved, its evaluation MMS; ``RunFolderError`` names a damaged file."""
    path = os.path.join(output_dir, "trainer_state.json")
    if not os.path.isfile(path):
        raise RunFolderError(f"{output_dir} has no trainer_state.json; point to a finished run's --output_dir")
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{path} is not valid JSON ({error}); it was cut short or edited") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history", []), list):
        raise RunFolderError(f"{path} has no log_history list; is it a Trainer's trainer_state.json?")
    mms_path = os.path.join(output_dir, "eval_mms.npy")
    if not os.path.isfile(mms_path):
        return state, None
    try:
        return state, np.load(mms_path)
    except (OSError, ValueError, EOFError) as error:
        raise RunFolderError(f"{mms_path} cannot be read ({error}); delete it to plot without it") from None


def plot_training(runs: dict[str, dict], path: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    panels = [
        (axes[0, 0], "training loss and MMR penalty", ["loss", "mmr/penalty"]),
        (axes[0, 1], "feature radius R", ["mmr/radius"]),
        (axes[1, 0], "MMR weight lambda", ["mmr/lambda"]),
        (axes[1, 1], "training-batch MMS (10/50/90 %)", ["mms/p10", "mms/p50", "mms/p90"]),
    ]
    for ax, title, names in panels:
        for label, state in runs.items():
            series = training_series(state)
            for name in names:
                if name in series:
                    steps, values = series[name]
                    ax.plot(steps, values, label=f"{label}: {name}" if len(runs) > 1 else name)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_eval_mms(
    scores: dict[str, np.ndarray], path: str, quantity: str = "MMS (distance to the nearest decision boundary)"
) -> None:
    import matplotlib.pyplot as plt

    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    upper = max(float(np.quantile(s, 0.99)) for s in scores.values())
    bins = np.linspace(0, upper, 40)
    for label, values in scores.items():
        hist.hist(values, bins=bins, alpha=0.5, label=f"{label} (median {np.median(values):.3g})")
        ordered = np.sort(values)
        cdf.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered), label=label)
    hist.set_title("evaluation-set minimal margin score")
    hist.set_xlabel(quantity)
    cdf.set_title("CDF")
    cdf.set_xlabel(quantity)
    cdf.set_xlim(0, upper)
    hist.legend(fontsize=8)
    cdf.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_margins(output_dir: str):
    """The run's ``train_margins.csv`` as a DataFrame, or None if it recorded none."""
    from .recording import MARGINS_FILE, TABLE_COLUMNS

    path = os.path.join(output_dir, MARGINS_FILE)
    if not os.path.isfile(path):
        return None
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise RunFolderError(f"{path} cannot be read as CSV ({str(error).strip()})") from None
    missing = [column for column in TABLE_COLUMNS if column not in table.columns]
    if missing:
        raise RunFolderError(
            f"{path} lacks the column {missing[0]!r}: not a train_margins.csv of this hf-mmr version; "
            "train again with --record_margins true"
        )
    return table


def suspects(table, k: int | None = None) -> str:
    """The flagged suspects (``k`` None) or the ``k`` trained examples with the lowest ``label_quality``,
    likeliest first, one line each: index, labels, ``label_quality`` and the text."""
    from .recording import text_columns

    texts = text_columns(table)
    given = "label_name" if "label_name" in table.columns else "label"
    predicted = "last_prediction_name" if "last_prediction_name" in table.columns else "last_prediction"
    trained = table[table["seen"] > 0]
    flagged = int(trained["suspect"].astype(bool).sum())
    lowest = trained.sort_values("label_quality", kind="stable").head(flagged if k is None else k)
    count = max(len(trained), 1)
    share = flagged / count
    # The estimate counts what the model confidently disagrees with: where it has not fit the data, that
    # includes its own mistakes, so the reader sees the two rates side by side.
    disagreed = int((trained["last_prediction"] != trained["label"]).sum()) / count
    first = (
        f"{flagged} of {len(trained)} trained examples ({share:.1%}) are suspects, the estimated number of label "
        f"errors; the model's last predictions in training disagreed with {disagreed:.1%} of the given labels "
        "(an estimate near that rate may count the model's own mistakes)"
    )
    lines = [
        first,
        f"{'index':>7}  {'quality':>8}  given -> predicted  text",
    ]
    for _, row in lowest.iterrows():
        text = " | ".join(str(row[c]) for c in texts)
        lines.append(f"{row['index']:>7}  {row['label_quality']:>8.3f}  {row[given]} -> {row[predicted]}  {text[:160]}")
    return "\n".join(lines)


def plot_train_margins(table, path: str) -> None:
    import matplotlib.pyplot as plt

    trained = table[table["seen"] > 0]
    fig, (hist, carto) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    hist.hist(trained["label_quality"], bins=50)
    flagged = trained[trained["suspect"].astype(bool)]
    if len(flagged):
        cutoff = flagged["label_quality"].max()
        hist.axvline(cutoff, color="red", linestyle=":", label=f"suspects: the {len(flagged)} at or below {cutoff:.3f}")
        hist.legend(fontsize=8)
    hist.set_title("training examples' label_quality (= aum, mean signed margin of the given label)")
    hist.set_xlabel("label_quality")
    points = carto.scatter(trained["variability"], trained["confidence"], c=trained["aum"], s=4, cmap="coolwarm_r")
    fig.colorbar(points, ax=carto, label="aum")
    carto.set_title("dataset cartography, coloured by AUM")
    carto.set_xlabel("variability (spread of p_y)")
    carto.set_ylabel("confidence (mean p_y)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(
        prog="python -m hf_mmr.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output_dirs", nargs="+", help="run directories (compare several: baseline and MMR)")
    parser.add_argument("--out", help="where to write the PNGs (default: the first run directory)")
    parser.add_argument("--labels", nargs="+", help="a label per run (default: the directory names)")
    parser.add_argument(
        "--suspects",
        type=count,
        nargs="?",
        const=FLAGGED,  # no K: the rows the suspect column flags
        metavar="K",
        help="print the first run's suspects, or with K its K examples of lowest label_quality",
    )
    parser.add_argument(
        "--cleanlab",
        action="store_true",
        help="write the first run's label_issues.csv with cleanlab (hf-mmr[cleanlab])",
    )
    options = parser.parse_args(argv)
    labels = options.labels or [os.path.basename(os.path.normpath(d)) for d in options.output_dirs]
    if len(labels) != len(options.output_dirs):
        parser.error("--labels needs one label per output directory")
    try:
        loaded = {label: load_run(d) for label, d in zip(labels, options.output_dirs)}
        margins = load_margins(options.output_dirs[0])
    except RunFolderError as error:
        parser.error(str(error))
    if options.suspects is not None:
        k = None if options.suspects == FLAGGED else options.suspects
        if k is not None and k < 1:
            parser.error(f"--suspects K needs K >= 1, got {k}")
        if margins is None:
            parser.error(f"{options.output_dirs[0]} has no train_margins.csv; train with --record_margins true")
        print(suspects(margins, k))
    if options.cleanlab:
        from .label_issues import ISSUES_FILE, find_label_issues

        try:
            issues = find_label_issues(options.output_dirs[0])
        except MMRError as error:
            parser.error(str(error))
        print(
            f"{int(issues['is_label_issue'].sum())} label issues among {int(issues['is_label_issue'].notna().sum())} "
            f"trained examples (cleanlab): {os.path.join(options.output_dirs[0], ISSUES_FILE)}"
        )
    try:
        import matplotlib
    except ImportError:
        parser.error('plotting needs matplotlib: pip install "hf-mmr[plot]"')

    matplotlib.use("Agg")
    out = options.out or options.output_dirs[0]
    os.makedirs(out, exist_ok=True)
    written = [os.path.join(out, "mmr_training.png")]
    plot_training({label: state for label, (state, _) in loaded.items()}, written[0])
    scores = {label: mms for label, (_, mms) in loaded.items() if mms is not None}
    if scores:
        written.append(os.path.join(out, "mmr_eval_mms.png"))
        plot_eval_mms(scores, written[1])
    if margins is not None:
        written.append(os.path.join(out, "mmr_train_margins.png"))
        plot_train_margins(margins, written[-1])
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
