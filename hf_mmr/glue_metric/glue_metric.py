"""GLUE metric for ``evaluate``, computed locally by ``hf_mmr.metrics`` (``evaluate.load("glue")`` needs the Hub)."""

import datasets
import evaluate

from hf_mmr.errors import UnknownTaskError
from hf_mmr.metrics import glue_scores

_CONFIGS = (
    "sst2",
    "mnli",
    "mnli_mismatched",
    "mnli_matched",
    "cola",
    "stsb",
    "mrpc",
    "qqp",
    "qnli",
    "rte",
    "wnli",
    "hans",
    "accuracy",
    "mse",
)


class GlueMetric(evaluate.Metric):
    """accuracy; F1 for MRPC and QQP; Matthews correlation for CoLA; Pearson and Spearman for STS-B; the mean
    squared error for a custom regression task (``mse``, as run_glue.py's ``evaluate.load("mse")``)."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in _CONFIGS:
            raise UnknownTaskError(
                f"unknown GLUE metric config {self.config_name!r}; pick one of {', '.join(_CONFIGS)}"
            )
        dtype = "float32" if self.config_name in ("stsb", "mse") else "int64"
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Wang et al., GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding, 2019",
            inputs_description="predictions and references: label ids (scores for stsb)",
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
        )

    def _compute(self, predictions, references):
        task = None if self.config_name == "accuracy" else self.config_name
        return glue_scores(task, predictions, references)
