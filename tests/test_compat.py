"""Private Trainer and argparse internals are touched in ``hf_mmr/compat.py`` alone, through named hooks."""

import argparse
import ast
import os
from pathlib import Path

import transformers
from conftest import tiny_model
from datasets import Dataset
from transformers import Trainer

import hf_mmr
from hf_mmr import MMRTrainer, MMRTrainingArguments
from hf_mmr.compat import TrainerHooks, TrainingPlan, group_flags, parser_destinations
from hf_mmr.recording import MarginRecorder
from hf_mmr.recovery import COMPLETE_MARKER

PACKAGE = os.path.dirname(hf_mmr.__file__)


def private_names() -> set[str]:
    """Private names of ``Trainer`` (methods and the attributes it sets) and of argparse's parser."""
    trainer_source = Path(transformers.trainer.__file__).read_text(encoding="utf-8")
    names = {name for name in dir(Trainer) if name.startswith("_") and not name.startswith("__")}
    names |= {node.attr for node in ast.walk(ast.parse(trainer_source)) if isinstance(node, ast.Attribute)}
    parser = argparse.ArgumentParser()
    names |= {name for name in vars(parser) if name.startswith("_")}
    names |= {name for name in vars(parser.add_argument_group("x")) if name.startswith("_")}
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def own_names(tree: ast.AST) -> set[str]:
    """Names a module's own classes define (``self._window`` of MMRTrainer is not the Trainer's)."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            own.add(node.name)
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            own |= {t.attr for t in targets if isinstance(t, ast.Attribute)}
            own |= {t.id for t in targets if isinstance(t, ast.Name)}
    return own


def test_no_private_trainer_or_argparse_attribute_outside_compat():
    private = private_names()
    assert {"_train_batch_size", "_get_dataloader", "_prepare_inputs", "_actions"} <= private  # the scan sees them
    offenders = []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            path = os.path.join(folder, name)
            if not name.endswith(".py") or path == os.path.join(PACKAGE, "compat.py"):
                continue
            tree = ast.parse(Path(path).read_text(encoding="utf-8"))
            own = own_names(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr in private and node.attr not in own:
                    offenders.append(f"{path}:{node.lineno} uses {node.attr}")
                if isinstance(node, ast.FunctionDef) and node.name in dir(Trainer) and node.name in private:
                    offenders.append(f"{path}:{node.lineno} overrides {node.name}")
    assert offenders == []


def test_training_plan_names_what_the_trainer_returns(tmp_path):
    args = MMRTrainingArguments(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4)
    data = Dataset.from_dict({"input_ids": [[1, 2, 3]] * 10, "labels": [0, 1] * 5})
    trainer = Trainer(model=tiny_model("bert"), args=args, train_dataset=data)
    values = trainer.set_initial_training_values(args, trainer.get_train_dataloader())
    plan = TrainingPlan(*values)
    assert plan.steps_in_epoch == 3 and plan.num_examples == 10 and plan.max_steps == 9
    assert plan.total_train_batch_size == 4


def test_the_hooks_are_called_by_the_trainer(tmp_path):
    calls = []

    class Watching(MMRTrainer):
        def begin_epoch(self, epoch):
            calls.append(("epoch", epoch))
            return super().begin_epoch(epoch)

        def plan_training(self, plan, dataloader):
            calls.append(("plan", plan.max_steps))
            return super().plan_training(plan, dataloader)

        def save_checkpoint_state(self, folder):
            calls.append(("save", os.path.basename(folder)))
            super().save_checkpoint_state(folder)

    args = MMRTrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        per_device_train_batch_size=4,
        num_train_epochs=2,
        save_strategy="epoch",
        record_margins=True,
    )
    data = Dataset.from_dict({"input_ids": [[1, 2, 3]] * 8, "labels": [0, 1] * 4})
    Watching(model=tiny_model("bert"), args=args, train_dataset=data).train()
    assert calls == [("plan", 4), ("epoch", 0), ("save", "checkpoint-2"), ("epoch", 1), ("save", "checkpoint-4")]
    assert os.path.exists(tmp_path / "checkpoint-4" / MarginRecorder.FILE_NAME)
    assert os.path.exists(tmp_path / "checkpoint-4" / COMPLETE_MARKER)


def test_group_flags_moves_the_wanted_flags_under_one_heading():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mmr_lambda")
    parser.add_argument("--learning_rate")
    group_flags(parser, "hf-mmr", lambda dest: dest.startswith("mmr_"))
    assert "mmr_lambda" in parser_destinations(parser)
    body = parser.format_help().split("\n\n", 1)[1]  # after the usage line, which names every flag
    assert body.index("hf-mmr:") < body.index("--mmr_lambda") < body.index("options:") < body.index("--learning_rate")


def test_no_hook_shadows_a_trainer_attribute():
    # set_initial_training_values is the one public Trainer method overridden on purpose (it returns the plan).
    hooks = {name for name in vars(TrainerHooks) if not name.startswith("_")} - {"set_initial_training_values"}
    assert {"plan_training", "save_checkpoint_state", "begin_epoch"} <= hooks
    assert sorted(name for name in hooks if hasattr(Trainer, name)) == []  # Trainer.save_state is not ours
