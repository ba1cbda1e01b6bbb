"""Multi-label classification by AudioSet's protocol (AST, PANNs): mean average precision and mean ROC
AUC over classes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import scipy.stats

from vlfm.data.pipeline import build_dataset, eval_examples
from vlfm.evaluators.predict import predict_split
from vlfm.evaluators.registry import EVALUATORS


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision of one class: ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds,
    highest first (tied scores enter together), scikit-learn's ``average_precision_score``. NaN when the
    class has no positive."""
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets, bool)
    positives = targets.sum()
    if not positives:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, targets = scores[order], targets[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # the last item of each tie group
    tp = np.cumsum(targets)[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve of one class (the chance that a positive outscores a negative, ties
    counting half). NaN without both positives and negatives."""
    targets = np.asarray(targets, bool)
    p, n = int(targets.sum()), int((~targets).sum())
    if not p or not n:
        return float("nan")
    ranks = scipy.stats.rankdata(np.asarray(scores, np.float64))
    return float((ranks[targets].sum() - p * (p + 1) / 2) / (p * n))


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """``scores``, ``targets``: examples x classes. Classes without a positive in the split are left out
    of the means (their AP is undefined), as AudioSet evaluations do; ``num_classes_scored`` says how
    many remain. ``d_prime`` is AST's ``sqrt(2) * Phi^-1(mAUC)``; ``chance_map`` the mAP of a random
    ranking (each class's share of positives)."""
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets, bool)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be examples x classes")
    ap = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    auc = np.array([roc_auc(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    scored = ~np.isnan(ap)
    if not scored.any():
        raise ValueError("no class has a positive example in the evaluated split")
    mauc = float(np.nanmean(auc)) if (~np.isnan(auc)).any() else float("nan")
    return {"map": float(ap[scored].mean()), "mauc": mauc,
            "d_prime": float(np.sqrt(2.0) * scipy.stats.norm.ppf(mauc)),
            "chance_map": float(targets[:, scored].mean(axis=0).mean()), "num_classes_scored": float(scored.sum())}


@EVALUATORS.register("multilabel_map")
class MultiLabelMapEvaluator:
    """Mean average precision (and mean ROC AUC, d') of ``predict_fns[predict]`` (scores, one column per
    class; logits are fine: AP and AUC depend on the ranking only) against multi-label targets.

    ``targets``: the batch key of the targets: a multi-hot vector per example (AudioSet's 527 tags), or
    an integer class (a single-label set such as the built-in sounds, read as one-hot over the
    prediction's classes). Metrics from ``multilabel_metrics``: ``map``, ``mauc``, ``d_prime``,
    ``chance_map``, ``num_classes_scored``.
    """

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256, predict: str = "logits",
                 targets: str = "label"):
        if predict not in predict_fns:
            raise KeyError(f"multilabel_map: the model has no predict function {predict!r}; it has "
                           f"{', '.join(sorted(predict_fns))}")
        self.predict, self.targets = predict_fns[predict], targets
        self.bundle, self.num_examples, self.batch_size = build_dataset(data, split), num_examples, batch_size

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        def inputs(b):
            if self.targets not in b:
                raise KeyError(f"multilabel_map: no targets {self.targets!r} in the batch; it has "
                               f"{', '.join(sorted(b))}")
            return {k: v for k, v in b.items() if k != self.targets}

        fns = {"scores": lambda p, b: np.asarray(self.predict(p, inputs(b)), np.float32),
               "targets": lambda p, b: b[self.targets]}
        out = predict_split(fns, params, eval_examples(self.bundle, self.num_examples), self.batch_size)
        scores, targets = out["scores"], np.asarray(out["targets"])
        if targets.ndim == 1:  # one class per example
            if not np.issubdtype(targets.dtype, np.integer):
                raise ValueError(f"multilabel_map: targets {self.targets!r} are one {targets.dtype} per example; "
                                 "give integer classes or multi-hot vectors")
            targets = np.eye(scores.shape[1], dtype=bool)[targets]
        yield from multilabel_metrics(scores, targets > 0).items()
