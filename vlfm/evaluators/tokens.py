"""Teacher-forced token accuracy of a generative model on held-out data, against the unigram baseline.

For objectives whose targets the model derives itself (DaVinci's prefix image modelling: image codes
from its frozen tokenizer, the rows to predict fixed in evaluation), so the evaluator cannot read them
from the data: the predict function returns both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from vlfm.data.pipeline import build_dataset, eval_examples
from vlfm.evaluators.classification import unigram_baseline
from vlfm.evaluators.predict import predict_split
from vlfm.evaluators.registry import EVALUATORS


@EVALUATORS.register("token_accuracy")
class TokenAccuracyEvaluator:
    """Accuracy of ``predict_fns[predict]`` -> ``{"predicted", "labels"}`` (int [B, L]) over the label
    positions that are not ``pad_id``. Also reports ``unigram_baseline``: the accuracy of always
    predicting the most frequent label of the evaluated positions (it has seen them: a generous bar)."""

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], predict: str = "image_tokens",
                 split: str = "validation", num_examples: int | None = None, batch_size: int = 128, pad_id: int = 0):
        if predict not in predict_fns:
            raise ValueError(f"token_accuracy: the model offers no predict function {predict!r}; "
                             f"valid: {', '.join(predict_fns)}")
        self.predict = predict_fns[predict]
        self.bundle, self.num_examples, self.batch_size = build_dataset(data, split), num_examples, batch_size
        self.pad_id = pad_id

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        out = predict_split({"tokens": self.predict}, params, eval_examples(self.bundle, self.num_examples),
                            self.batch_size)["tokens"]
        labels, predicted = np.asarray(out["labels"]), np.asarray(out["predicted"])
        real = labels != self.pad_id
        yield "accuracy", float(np.mean(predicted[real] == labels[real])) if real.any() else 0.0
        yield "unigram_baseline", unigram_baseline(np.where(real, labels, -1))
