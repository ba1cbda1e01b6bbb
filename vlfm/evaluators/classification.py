"""Held-out accuracy of a model's own classifier or MLM head."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from vlfm.data.pipeline import build_dataset, eval_arrays, predict_all
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
        inputs = {k: v for k, v in self.arrays.items() if k != "label"}
        logits = predict_all(self.predict, params, inputs, self.batch_size)
        yield "accuracy", float(np.mean(np.argmax(logits, -1) == self.arrays["label"]))


@EVALUATORS.register("mlm_accuracy")
class MaskedTokenEvaluator:
    """Accuracy of ``predict_fns["mlm_logits"]`` on masked tokens of held-out text.

    The held-out split is masked once, with a fixed seed per example, so every evaluation of a run
    (and of every run) scores the same positions. Also reports the unigram baseline: the accuracy of
    always predicting the most frequent masked token of the training split's distribution estimate.
    """

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256, seed: int = 0):
        self.predict = predict_fns["mlm_logits"]
        bundle = build_dataset(data, split)
        if bundle.random_transform is None:
            raise ValueError("mlm_accuracy needs a data config that masks tokens (e.g. mlm_prob > 0)")
        n = len(bundle.examples) if num_examples is None else min(num_examples, len(bundle.examples))
        rows = [bundle.random_transform(bundle.examples[i], np.random.default_rng([seed, i])) for i in range(n)]
        keys = [k for k in ("text", "text_mask", "text_type_ids", "mlm_targets") if k in rows[0]]
        self.arrays = {k: np.stack([r[k] for r in rows]) for k in keys}
        self.batch_size = batch_size
        targets = self.arrays["mlm_targets"]
        values, counts = np.unique(targets[targets >= 0], return_counts=True)
        self.unigram = float(counts.max() / counts.sum()) if len(counts) else 0.0

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        targets = self.arrays["mlm_targets"]
        inputs = {k: v for k, v in self.arrays.items() if k != "mlm_targets"}
        logits = predict_all(self.predict, params, inputs, self.batch_size)
        valid = targets >= 0
        yield "accuracy", float(np.mean(np.argmax(logits, -1)[valid] == targets[valid]))
        yield "unigram_baseline", self.unigram
