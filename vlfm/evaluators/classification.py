"""Held-out accuracy of a model's own classifier or MLM head."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from vlfm.data.pipeline import batches, build_dataset, eval_arrays
from vlfm.evaluators.registry import EVALUATORS


@EVALUATORS.register("classification")
class ClassificationEvaluator:
    """Top-1 accuracy of ``predict_fns["logits"]`` against ``label`` on a held-out split."""

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256):
        self.predict = predict_fns["logits"]
        self.arrays = eval_arrays(build_dataset(data, split), num_examples)
        self.batch_size = batch_size

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        n = len(self.arrays["label"])
        logits = np.concatenate([np.asarray(self.predict(params, {k: v for k, v in b.items() if k != "label"}))
                                 for b in batches(self.arrays, self.batch_size)])[:n]
        yield "accuracy", float(np.mean(np.argmax(logits, -1) == self.arrays["label"]))
