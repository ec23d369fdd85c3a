"""``python -m hf_mmr.report``: a missing or damaged file of a run, or no matplotlib, is one line naming it."""

import sys

import pytest


def report_error(argv: list[str], capsys) -> str:
    """The one-line error with which ``python -m hf_mmr.report`` stops (exit code 2)."""
    from hf_mmr.report import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_report_names_a_missing_run(tmp_path, capsys):
    assert "trainer_state.json" in report_error([str(tmp_path)], capsys)


@pytest.mark.parametrize(
    "name,content,words",
    [
        ("trainer_state.json", '{"log_history": [', "is not valid JSON"),
        ("trainer_state.json", '{"log_history": {}}', "has no log_history list"),
        ("eval_mms.npy", "cut", "cannot be read"),
        ("train_margins.csv", "index,label\n0,1\n", "lacks the column 'seen'"),
    ],
)
def test_report_names_a_damaged_file_of_the_run(tmp_path, capsys, name, content, words):
    (tmp_path / "trainer_state.json").write_text('{"log_history": []}')
    (tmp_path / name).write_text(content)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    error = report_error([str(tmp_path), "--suspects", "3"], capsys)
    assert str(tmp_path / name) in error and words in error
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before  # nothing written or removed


def test_report_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    """`pip install hf-mmr` has no matplotlib: the report says in one line how to get it."""
    (tmp_path / "trainer_state.json").write_text('{"log_history": []}')
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without matplotlib sees
    error = report_error([str(tmp_path)], capsys)
    assert error.endswith('plotting needs matplotlib: pip install "hf-mmr[plot]"')
