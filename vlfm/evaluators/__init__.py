"""Pluggable evaluators, chosen by name in ``config.evals``."""

from vlfm.evaluators import captioning, classification, retrieval, tokens  # noqa: F401  (registers the evaluators)
from vlfm.evaluators import fusion  # noqa: F401  (registers the fusion-model evaluators)
from vlfm.evaluators import feature_regression, flow  # noqa: F401  (Visual Parsing's MFR and IMF)
from vlfm.evaluators import multilabel, probe, vqav2, zeroshot  # noqa: F401  (standard protocols)
from vlfm.evaluators.registry import EVALUATORS

__all__ = ["EVALUATORS"]
