"""Held-out accuracy of a model's own classifier or MLM head."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from vlfm.data.pipeline import build_dataset, eval_examples
from vlfm.evaluators.predict import predict_split
from vlfm.evaluators.registry import EVALUATORS


@EVALUATORS.register("classification")
class ClassificationEvaluator:
    """Top-1 accuracy of ``predict_fns[predict]`` (default ``logits``; PolyViT: ``logits/<task>``) against
    ``label`` on a held-out split."""

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256, predict: str = "logits"):
        if predict not in predict_fns:
            raise KeyError(f"classification: the model has no predict function {predict!r}; it has "
                           f"{', '.join(sorted(predict_fns))}")
        self.predict = predict_fns[predict]
        self.bundle, self.num_examples, self.batch_size = build_dataset(data, split), num_examples, batch_size

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        def predicted(p, b):
            return np.argmax(self.predict(p, {k: v for k, v in b.items() if k != "label"}), -1)

        out = predict_split({"predicted": predicted, "label": lambda p, b: b["label"]}, params,
                            eval_examples(self.bundle, self.num_examples), self.batch_size)
        yield "accuracy", float(np.mean(out["predicted"] == out["label"]))


@EVALUATORS.register("mlm_accuracy")
class MaskedTokenEvaluator:
    """Accuracy of ``predict_fns["mlm_logits"]`` on masked tokens of held-out text.

    The held-out split is masked once, with a fixed seed per example, so every evaluation of a run
    (and of every run, on any number of hosts) scores the same positions. Also reports the unigram
    baseline: the accuracy of always predicting the most frequent masked token of the held-out split.
    """

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256, seed: int = 0):
        self.predict = predict_fns["mlm_logits"]
        self.bundle = build_dataset(data, split)
        if self.bundle.raw_transform is None:
            raise ValueError("mlm_accuracy needs a data config that masks tokens (e.g. mlm_prob > 0)")
        if self.bundle.examples is None:
            raise ValueError("mlm_accuracy needs a random-access data set (its examples are masked by index)")
        n = len(self.bundle.examples)
        self.num_examples = n if num_examples is None else min(num_examples, n)
        self.batch_size, self.seed = batch_size, seed

    def _rows(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """This host's examples (every process_count-th), each masked with its own seed."""
        for i in range(jax.process_index(), self.num_examples, jax.process_count()):
            row = self.bundle.random_transform(self.bundle.examples[i], np.random.default_rng([self.seed, i]))
            yield i, {k: row[k] for k in ("text", "text_mask", "text_type_ids", "mlm_targets") if k in row}

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        def predicted(p, b):
            return np.argmax(self.predict(p, {k: v for k, v in b.items() if k != "mlm_targets"}), -1)

        out = predict_split({"predicted": predicted, "targets": lambda p, b: b["mlm_targets"]}, params,
                            self._rows(), self.batch_size)
        targets = out["targets"]
        valid = targets >= 0
        yield "accuracy", float(np.mean(out["predicted"][valid] == targets[valid]))
        yield "unigram_baseline", unigram_baseline(targets)


def unigram_baseline(targets: np.ndarray) -> float:
    """The accuracy of always predicting the most frequent masked token (targets < 0 are not masked)."""
    _, counts = np.unique(targets[targets >= 0], return_counts=True)
    return float(counts.max() / counts.sum()) if len(counts) else 0.0
