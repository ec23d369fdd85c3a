"""The one module that touches private attributes of ``transformers.Trainer`` and of ``argparse``.

``TrainerHooks`` overrides the Trainer's private methods that hf-mmr needs and turns each into a
named hook with a stable signature (defaults change nothing), so the rest of the package reads no
private attribute. Each use says why. Checked against transformers 5.19.0 (the declared floor,
tested by ``.ci/run``) through 5.25.0; before 5.19 ``loss_is_scaled_for_ga`` and the four-argument
``set_initial_training_values`` did not exist, so setup.cfg starts there.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


class TrainingPlan(NamedTuple):
    """What ``Trainer.set_initial_training_values`` returns, by name (the Trainer unpacks it by position)."""

    num_train_epochs: int
    num_update_steps_per_epoch: int
    num_examples: int
    num_train_samples: int
    total_train_batch_size: int
    steps_in_epoch: int
    max_steps: int


class TrainerHooks(Trainer):
    """``Trainer`` whose private steps call the hooks below; a subclass overrides the hooks only."""

    # ------------------------------------------------------------------ hooks (the defaults are the Trainer's)
    def extra_signature_columns(self) -> tuple[str, ...]:
        """Dataset columns that unused-column removal must keep although the model's forward does not take them."""
        return ()

    def train_sampler(self) -> torch.utils.data.Sampler | None:
        """The training sampler; None keeps the Trainer's own."""
        return None

    def plan_training(self, plan: TrainingPlan, dataloader: Any) -> TrainingPlan:
        """The run's epochs, steps and lengths, as computed by the Trainer, possibly changed."""
        return plan

    def resume_position(self, epochs_trained: int, steps_to_skip: int) -> tuple[int, int]:
        """Where a resumed run stands: (epochs done, micro-batches to skip in the current epoch)."""
        return epochs_trained, steps_to_skip

    def begin_epoch(self, epoch: int) -> dict[str, int]:
        """Called as an epoch starts; may override its ``steps_in_epoch`` and ``num_update_steps_per_epoch``."""
        return {}

    def count_items(self, num_items: torch.Tensor | int | None, batch_samples: list) -> torch.Tensor | int | None:
        """``num_items_in_batch`` of an accumulated step, as the Trainer counted it, possibly changed."""
        return num_items

    def save_checkpoint_state(self, folder: str) -> None:
        """Write extra state into a checkpoint folder the Trainer has just saved (on processes that save)."""

    def load_checkpoint_state(self, folder: str) -> None:
        """Restore extra state when training resumes from a checkpoint folder."""

    # ------------------------------------------------------------------ what the hooks may use
    @property
    def train_batch_size(self) -> int:
        """The per-process training batch size (``auto_find_batch_size`` may have lowered the argument)."""
        return self._train_batch_size

    def loss_is_scaled(self, num_items_in_batch: torch.Tensor | int | None) -> bool:
        """Whether ``training_step`` takes this step's loss as normalized over the accumulated batch already
        (otherwise it divides by the accumulation steps): the Trainer's own rule, in ``training_step``."""
        if self.loss_is_scaled_for_ga is not None:
            return self.loss_is_scaled_for_ga
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    def prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A batch moved to the device as ``training_step`` moves it."""
        return self._prepare_inputs(inputs)

    def model_columns(self, dataset: Any) -> Any:
        """``dataset`` without the columns the model's forward does not take, as the Trainer's DataLoader drops them."""
        if _is_datasets_dataset(dataset):
            return self._remove_unused_columns(dataset, description="training")
        return dataset

    def training_dataloader(self, dataset: Any, batch_size: int, collator: Callable) -> torch.utils.data.DataLoader:
        """The Trainer's training DataLoader (workers, seeding, sharding, accelerate) over ``dataset``."""
        kept, self.data_collator = self.data_collator, collator  # _get_dataloader reads the collator from self
        try:
            return self._get_dataloader(
                dataset=dataset,
                description="Training",
                batch_size=batch_size,
                sampler_fn=self._get_train_sampler,
                is_training=True,
            )
        finally:
            self.data_collator = kept

    # ------------------------------------------------------------------ the private overrides
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        for column in self.extra_signature_columns():
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        return self.train_sampler() or super()._get_train_sampler(train_dataset)

    def set_initial_training_values(self, args: Any, dataloader: Any) -> tuple:
        plan = TrainingPlan(*super().set_initial_training_values(args, dataloader))
        return tuple(self.plan_training(plan, dataloader))

    def _init_training_state(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return self.resume_position(*super()._init_training_state(*args, **kwargs))

    def _run_epoch(self, *args: Any, epoch: int, **kwargs: Any) -> Any:
        return super()._run_epoch(*args, epoch=epoch, **{**kwargs, **self.begin_epoch(epoch)})

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        return self.count_items(super()._get_num_items_in_batch(batch_samples, device), batch_samples)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self.save_checkpoint_state(os.path.join(self._get_output_dir(trial=trial), name))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if model is None:  # the resume path (with a model, it loads the best one at the end)
            self.load_checkpoint_state(resume_from_checkpoint)


def _is_datasets_dataset(dataset: Any) -> bool:
    """Whether ``dataset`` is a ``datasets.Dataset`` (datasets is optional for the Trainer)."""
    from transformers.utils import is_datasets_available

    if not is_datasets_available():
        return False
    import datasets

    return isinstance(dataset, datasets.Dataset)


# ---------------------------------------------------------------------- argparse
def parser_destinations(parser: argparse.ArgumentParser) -> set[str]:
    """Every destination the parser fills (argparse keeps the list only in ``_actions``)."""
    return {action.dest for action in parser._actions}


def set_choices(parser: argparse.ArgumentParser, dest: str, choices: list[str], help_text: str) -> None:
    """Give the flag of ``dest`` its choices and help after the parser was built from a dataclass (whose field
    cannot know them: they come from a registry); argparse finds actions only through ``_actions``."""
    action = next(action for action in parser._actions if action.dest == dest)
    action.choices, action.help = choices, help_text


def group_flags(parser: argparse.ArgumentParser, title: str, wanted: Callable[[str], bool]) -> None:
    """Move the flags whose destination is ``wanted`` under their own ``--help`` heading, right after the
    positional arguments (argparse has no public way to move an action between groups)."""
    group = parser.add_argument_group(title)
    for action in parser._actions:
        if wanted(action.dest):
            for other in parser._action_groups:
                if other is not group and action in other._group_actions:
                    other._group_actions.remove(action)
            group._group_actions.append(action)
    parser._action_groups.insert(1, parser._action_groups.pop())
