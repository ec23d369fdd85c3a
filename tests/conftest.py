"""Shared fixtures: tiny models built from configs (no download) and the real GLUE directory."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

GLUE_DIR = os.environ.get("GLUE_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "glue"))

# model_type -> path of the final linear layer of its sequence-classification head
HEAD_PATHS = {
    "bert": "classifier",
    "roberta": "classifier.out_proj",
    "xlm-roberta": "classifier.out_proj",
    "electra": "classifier.out_proj",
    "distilbert": "classifier",
    "deberta-v2": "classifier",
    "albert": "classifier",
    "mpnet": "classifier.out_proj",
    "modernbert": "classifier",
}

_SIZES = {
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 37},
    "albert": {"embedding_size": 16},
    "modernbert": {"global_attn_every_n_layers": 1, "local_attention": 16},
}


def tiny_model(model_type: str, num_labels: int = 3, seed: int = 0, **overrides) -> torch.nn.Module:
    """A randomly initialised 2-layer classifier of the given architecture, small enough for unit tests."""
    sizes = {
        "vocab_size": 100,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
        "num_labels": num_labels,
        "pad_token_id": 0,
    }
    sizes.update(_SIZES.get(model_type, {}))
    sizes.update(overrides)
    config = AutoConfig.for_model(model_type, **sizes)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config)


def available_model_types() -> list[str]:
    from transformers import CONFIG_MAPPING

    return [model_type for model_type in HEAD_PATHS if model_type in CONFIG_MAPPING]


@pytest.fixture(scope="session")
def glue_dir() -> str:
    if not os.path.isdir(os.path.join(GLUE_DIR, "MRPC")):
        pytest.fail(f"real GLUE data not found in {GLUE_DIR}: set GLUE_DIR to the folder holding MRPC/, RTE/, ...")
    return GLUE_DIR
