"""Multi-margin regularization and minimal margin scores for Hugging Face classifiers."""

from .arguments import MMRTrainingArguments
from .errors import (
    ArgumentsTypeError,
    CheckpointError,
    GlueDataError,
    HeadNotFoundError,
    MissingPackageError,
    MMRConfigError,
    MMRError,
    NonFiniteLossError,
    ResumeMismatchError,
    RunFolderError,
    UnknownTaskError,
)
from .head import FeatureCapture, find_classifier_head
from .label_issues import find_label_issues
from .margins import label_margins, minimal_margin_scores, mmr_penalty, squared_radius
from .metrics import expected_calibration_error
from .model import default_model_dir
from .recording import MarginRecorder
from .recovery import SaveOnSignal, last_complete_checkpoint
from .search import make_mmr_hp_space, mmr_hp_space
from .trainer import MMRTrainer

__version__ = "0.1.0"

__all__ = [
    "ArgumentsTypeError",
    "CheckpointError",
    "FeatureCapture",
    "GlueDataError",
    "HeadNotFoundError",
    "MMRConfigError",
    "MMRError",
    "MMRTrainer",
    "MMRTrainingArguments",
    "MarginRecorder",
    "MissingPackageError",
    "NonFiniteLossError",
    "ResumeMismatchError",
    "RunFolderError",
    "SaveOnSignal",
    "UnknownTaskError",
    "default_model_dir",
    "expected_calibration_error",
    "find_classifier_head",
    "find_label_issues",
    "label_margins",
    "last_complete_checkpoint",
    "make_mmr_hp_space",
    "minimal_margin_scores",
    "mmr_hp_space",
    "mmr_penalty",
    "squared_radius",
]
