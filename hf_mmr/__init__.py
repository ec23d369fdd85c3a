"""Multi-margin regularization and minimal margin scores for Hugging Face classifiers."""

from .arguments import MMRConfigError, MMRTrainingArguments
from .head import FeatureCapture, HeadNotFoundError, find_classifier_head
from .margins import minimal_margin_scores, mmr_penalty, squared_radius
from .recovery import NonFiniteLossError, SaveOnSignal, last_complete_checkpoint
from .search import make_mmr_hp_space, mmr_hp_space
from .trainer import MMRTrainer

__version__ = "0.1.0"

__all__ = [
    "FeatureCapture",
    "HeadNotFoundError",
    "MMRConfigError",
    "MMRTrainer",
    "MMRTrainingArguments",
    "NonFiniteLossError",
    "SaveOnSignal",
    "find_classifier_head",
    "last_complete_checkpoint",
    "make_mmr_hp_space",
    "minimal_margin_scores",
    "mmr_hp_space",
    "mmr_penalty",
    "squared_radius",
]
