"""The errors hf-mmr raises: every one derives from ``MMRError``, and its message says what to fix in one line."""

from __future__ import annotations


class MMRError(Exception):
    """Base of every error hf-mmr raises on purpose; ``run_glue_mmr.py`` prints it as one line."""


class MMRConfigError(MMRError, ValueError):
    """A setting that cannot work; the message names the setting and what to change."""


class UsageError(MMRConfigError):
    """A command-line input of run_glue_mmr.py that cannot work (a flag, a file, a folder); one line, no traceback."""


class ArgumentsTypeError(MMRConfigError, TypeError):
    """An argument of the wrong type, such as plain ``TrainingArguments`` where ``MMRTrainingArguments`` is needed."""


class HeadNotFoundError(MMRError, ValueError):
    """The model's logits do not come from a final ``nn.Linear`` that could be found."""


class GlueDataError(MMRError, ValueError):
    """A GLUE task name, folder or TSV file that cannot be read; the message names the file and line."""


class UnknownTaskError(GlueDataError, KeyError):
    """A GLUE task (or metric) name that is not one of the known ones; the message lists them."""

    def __str__(self) -> str:  # KeyError would print the message quoted, as a key
        return str(self.args[0]) if self.args else ""


class CheckpointError(MMRError, ValueError):
    """A checkpoint that cannot be resumed (damaged, incomplete, or of other data); the message names the file."""


class ResumeMismatchError(CheckpointError):
    """A checkpoint resumed with other training data or settings than the run that saved it."""


class NonFiniteLossError(MMRError, RuntimeError):
    """The training loss became nan or inf; the weights and the checkpoints on disk are from before it."""


class RunFolderError(MMRError, ValueError):
    """A run's output folder that the report cannot read (a file missing or damaged); the message names the file."""


class MissingPackageError(MMRError, ImportError):
    """An optional package that a feature needs is not installed; the message names the extra to install."""
