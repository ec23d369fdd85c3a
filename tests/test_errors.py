"""Every error hf-mmr raises is an ``MMRError`` that also subclasses the builtin a caller would catch."""

import ast
import os
import sys
from pathlib import Path

import pytest
from conftest import tiny_model
from transformers import TrainingArguments

import hf_mmr
from hf_mmr import (
    ArgumentsTypeError,
    MissingPackageError,
    MMRConfigError,
    MMRError,
    MMRTrainer,
    MMRTrainingArguments,
    UnknownTaskError,
)
from hf_mmr.glue import get_task
from hf_mmr.metrics import load_glue_metric
from hf_mmr.search import require_optuna

PACKAGE = os.path.dirname(hf_mmr.__file__)


def raised_names(path: str) -> list[tuple[str, int]]:
    """The class names of every ``raise Name(...)`` in a source file, with their lines."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
            found.append((node.exc.func.id, node.lineno))
    return found


def test_the_package_raises_no_builtin_exception_directly():
    builtin = {name for name in dir(__import__("builtins")) if name.endswith(("Error", "Exception"))}
    offenders = []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                offenders += [f"{path}:{line} {cls}" for cls, line in raised_names(path) if cls in builtin]
    assert offenders == []


def test_every_exported_error_is_an_mmr_error_and_a_builtin():
    errors = [getattr(hf_mmr, name) for name in hf_mmr.__all__ if name.endswith("Error")]
    assert "RunFolderError" in hf_mmr.__all__
    for error in errors:
        assert issubclass(error, MMRError)
        # a specific builtin as well, so that `except ValueError` (or TypeError, ...) around a call keeps working
        assert error is MMRError or issubclass(error, (ValueError, TypeError, LookupError, ImportError, RuntimeError))


def test_plain_training_arguments_are_a_type_error(tmp_path):
    with pytest.raises(ArgumentsTypeError, match="MMRTrainingArguments") as caught:
        MMRTrainer(model=tiny_model("bert"), args=TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, MMRError)


def test_training_without_a_train_dataset_is_a_config_error(tmp_path):
    args = MMRTrainingArguments(output_dir=str(tmp_path), report_to="none", record_margins=True)
    trainer = MMRTrainer(model=tiny_model("bert"), args=args)
    with pytest.raises(MMRConfigError, match="train_dataset"):
        trainer.get_train_dataloader()


def test_unknown_task_is_a_key_error_with_a_readable_message():
    with pytest.raises(KeyError) as caught:
        get_task("mrcp")
    assert isinstance(caught.value, UnknownTaskError)
    assert str(caught.value).startswith("--task_name 'mrcp' is not a GLUE task")  # not quoted like a key


def test_unknown_metric_config_is_an_unknown_task_error():
    pytest.importorskip("evaluate")
    with pytest.raises(UnknownTaskError, match="unknown GLUE metric config"):
        load_glue_metric("mrcp")


def test_missing_optuna_is_an_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    with pytest.raises(ImportError) as caught:
        require_optuna()
    assert isinstance(caught.value, MissingPackageError)
    assert "pip install" in str(caught.value)


def test_every_error_of_the_package_is_an_mmr_error():
    import run_glue_mmr
    from hf_mmr import errors

    classes = [value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, Exception)]
    assert len(classes) >= 6 and all(issubclass(cls, MMRError) for cls in classes)
    assert issubclass(run_glue_mmr.UsageError, MMRError)
    # The library functions a user calls directly raise it too (still ValueErrors, as they were).
    import numpy as np
    import torch

    from hf_mmr import expected_calibration_error, make_mmr_hp_space, mmr_penalty

    features, weight, labels = torch.ones(2, 3), torch.eye(2, 3), torch.tensor([0, 1])
    for call in (
        lambda: mmr_penalty(features, weight, labels, top_k=2),
        lambda: mmr_penalty(features, weight, labels, form="hinge"),
        lambda: make_mmr_hp_space((0.1, 0.01)),
        lambda: expected_calibration_error(np.ones((2, 2)), np.ones(3)),
    ):
        with pytest.raises(MMRError):
            call()
