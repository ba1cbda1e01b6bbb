"""Held-out masked feature regression (Visual Parsing's MFR): the model's error on the masked tokens
against the bars a model must get below."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from vlfm.data.pipeline import build_dataset, eval_examples
from vlfm.evaluators.predict import eval_batches, process_sum
from vlfm.evaluators.registry import EVALUATORS

INPUT_KEYS = ("image", "text", "text_mask")


@EVALUATORS.register("masked_feature_regression")
class MaskedFeatureRegressionEvaluator:
    """Mean squared error (over features, then over the masked tokens of the split) of the ``mfr``
    predict function's ``mfr_pred`` against ``mfr_target`` where ``mfr_mask``, and of three baselines:
    ``mean_baseline`` (the split's mean masked feature everywhere), ``visible_mean_baseline`` (each
    example's mean visible feature) and, when the model gives ``mfr_copy``, ``copy_baseline`` (copying
    the most similar visible token). Masks are the model's own at evaluation (a fixed key), so a config
    override of the masking (e.g. random instead of grouped) is evaluated on the same weights. Streams
    the split: per batch only sums are kept. Also ``masked_fraction``."""

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 128, predict: str = "mfr"):
        if predict not in predict_fns:
            raise ValueError(f"masked_feature_regression: the model offers no predict function {predict!r}; "
                             f"valid: {', '.join(predict_fns)}")
        self.predict = predict_fns[predict]
        self.bundle, self.num_examples, self.batch_size = build_dataset(data, split), num_examples, batch_size

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        sums: dict[str, float] = {}
        target_sum = target_sq = None

        def add(name: str, value: float) -> None:
            sums[name] = sums.get(name, 0.0) + float(value)

        for batch, index in eval_batches(eval_examples(self.bundle, self.num_examples), self.batch_size):
            keep = index >= 0
            out = self.predict(params, {k: batch[k] for k in INPUT_KEYS if k in batch})
            target = np.asarray(out["mfr_target"], np.float64)[keep]
            mask = np.asarray(out["mfr_mask"], bool)[keep]
            error = lambda pred: np.mean(np.square(pred - target), -1)[mask].sum()  # noqa: E731
            add("loss", error(np.asarray(out["mfr_pred"], np.float64)[keep]))
            if "mfr_copy" in out:
                add("copy_baseline", error(np.asarray(out["mfr_copy"], np.float64)[keep]))
            visible = (~mask)[..., None]
            visible_mean = (target * visible).sum(1, keepdims=True) / np.maximum(visible.sum(1, keepdims=True), 1)
            add("visible_mean_baseline", error(np.broadcast_to(visible_mean, target.shape)))
            add("num_masked", mask.sum())
            add("num_tokens", mask.size)
            masked = target[mask]
            target_sum = masked.sum(0) + (0.0 if target_sum is None else target_sum)
            target_sq = np.square(masked).sum() + (0.0 if target_sq is None else target_sq)
        totals = {k: float(process_sum(np.asarray(v))) for k, v in sums.items()}
        target_sum, target_sq = process_sum(np.asarray(target_sum)), float(process_sum(np.asarray(target_sq)))
        n = max(totals["num_masked"], 1.0)
        mean = target_sum / n
        yield "loss", totals["loss"] / n
        yield "mean_baseline", (target_sq - n * float(np.square(mean).sum())) / (n * len(mean))
        yield "visible_mean_baseline", totals["visible_mean_baseline"] / n
        if "copy_baseline" in totals:
            yield "copy_baseline", totals["copy_baseline"] / n
        yield "masked_fraction", n / max(totals["num_tokens"], 1.0)
