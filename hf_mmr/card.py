"""What ``MMRTrainer`` adds to the Trainer's model card: every MMR/MMS setting, the formula, the search."""

from __future__ import annotations

import re
from typing import Any

from .search import card_section

# Every MMR and MMS setting, as recorded in the model card.
MMR_SETTINGS = (
    "mmr_lambda",
    "mmr_lambda_start",
    "mmr_lambda_warmup_ratio",
    "mmr_form",
    "mmr_top_k",
    "mmr_detach_radius",
    "mmr_head",
    "mms_selection",
    "mms_pool_factor",
    "mms_scoring_batch_size",
    "mms_warmup_steps",
    "mms_keep_quantile",
    "mms_keep_fraction",
    "mms_anneal_epochs",
    "record_margins",
    "calibration",
    "calibration_split",
)

# How the model card states each form of the penalty.
CARD_FORMULAS = {
    "weights": "= mean_i mean_{j in J_i} R² · ||w_{y_i} − w_j||² (J_i: the strongest wrong classes)",
    "margin": "= R / mean_i m_i (m_i: distance of h_i to the nearest decision boundaries of its predicted class)",
}

# The Trainer writes this heading even when no evaluation ran during training, with nothing under it.
EMPTY_RESULTS = re.compile(r"\n### Training results\n\s*\n(?=\n?### )")


def mmr_card_text(
    text: str,
    args: Any,
    head_path: str | None,
    search_report: dict | None,
    version: str,
    calibration: dict | None = None,
) -> str:
    """The Trainer's card ``text`` with its empty "Training results" section explained and the MMR sections added.

    ``head_path`` is the classifier head that was found (the card shows it instead of ``mmr_head=None``);
    ``calibration`` is ``MMRTrainer.calibration_report`` of a calibrated model.
    """
    text = EMPTY_RESULTS.sub(
        "\n### Training results\n\nNo evaluation ran during training (the evaluation set's results are above).\n\n",
        text,
    )
    found = {"mmr_head": head_path} if head_path is not None else {}
    rows = "\n".join(f"| `{name}` | {found.get(name, getattr(args, name))} |" for name in MMR_SETTINGS)
    formula = CARD_FORMULAS[args.mmr_form] if args.mmr_enabled else "off (λ = 0)"
    text += (
        f"\n## Multi-margin regularization\n\nTrained with hf-mmr {version} (`MMRTrainer`): loss = "
        f"classification loss + λ_t · MMR, MMR {formula}.\n\n"
        f"| setting | value |\n|---|---|\n{rows}\n"
    )
    if search_report is not None:
        text += card_section(search_report)
    if calibration is not None:
        text += (
            f"\n## Calibration\n\nThe classifier head's weight and bias were divided by the temperature "
            f"T = {calibration['calibration_temperature']:.4f}, fitted after training on "
            f"{calibration['calibration_examples']} held-out training examples (minimum NLL; Guo et al. 2017), so "
            "this checkpoint's probabilities are calibrated as it loads; its predictions are those of the model "
            f"before. On those examples: ECE {calibration['calibration_ece_before']:.4f} → "
            f"{calibration['calibration_ece_after']:.4f}, NLL {calibration['calibration_nll_before']:.4f} → "
            f"{calibration['calibration_nll_after']:.4f}.\n"
        )
    return text
