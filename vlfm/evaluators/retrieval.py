"""Zero-shot image-text retrieval (R@1/5/10) and zero-shot classification for dual encoders."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from vlfm.data.pipeline import build_dataset, eval_examples
from vlfm.evaluators.predict import predict_all, predict_split
from vlfm.evaluators.registry import EVALUATORS


def recall_at_k(similarity: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@k as ``r{k}``: row i's correct column is i; R@k is the share of rows whose correct column ranks
    in the top k. Ties count against the model: the rank is the number of other columns scoring at least as
    high as the correct one (a collapsed model with equal scores everywhere ranks last, not first)."""
    n = len(similarity)
    correct = similarity[np.arange(n), np.arange(n)]
    rank = (similarity >= correct[:, None]).sum(axis=1) - 1
    return {f"r{k}": float(np.mean(rank < k)) for k in ks}


@EVALUATORS.register("retrieval")
class RetrievalEvaluator:
    """Image->text and text->image recall over held-out pairs (one caption per image)."""

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256):
        self.encode_image = predict_fns["encode_image"]
        self.encode_text = predict_fns["encode_text"]
        self.bundle, self.num_examples, self.batch_size = build_dataset(data, split), num_examples, batch_size

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        fns = {"zi": lambda p, b: self.encode_image(p, {"image": b["image"]}),
               "zt": lambda p, b: self.encode_text(p, {"text": b["text"], "text_mask": b["text_mask"]})}
        out = predict_split(fns, params, eval_examples(self.bundle, self.num_examples), self.batch_size)
        sim = out["zi"].astype(np.float32) @ out["zt"].astype(np.float32).T
        for name, value in recall_at_k(sim).items():
            yield f"i2t_{name}", value
        for name, value in recall_at_k(sim.T).items():
            yield f"t2i_{name}", value
        yield "chance_r1", 1.0 / len(sim)


@EVALUATORS.register("zeroshot_classification")
class ZeroShotClassificationEvaluator:
    """Classifies held-out images by similarity to each class's prompt embeddings (averaged)."""

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256):
        self.encode_image = predict_fns["encode_image"]
        self.encode_text = predict_fns["encode_text"]
        self.bundle = build_dataset(dict(data, view="image_label"), split)
        self.num_examples = num_examples
        tokenizer, max_len = self.bundle.info["tokenizer"], self.bundle.info["max_len"]
        prompts = self.bundle.info["class_prompts"]
        self.num_classes, self.num_templates = len(prompts), len(prompts[0])
        flat = [p for per_class in prompts for p in per_class]
        tokens = tokenizer.encode_batch(flat, max_len)
        self.prompts = {"text": tokens["ids"], "text_mask": tokens["mask"]}
        self.batch_size = batch_size

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        zt = predict_all(self.encode_text, params, self.prompts, self.batch_size)
        zt = zt.astype(np.float32).reshape(self.num_classes, self.num_templates, -1).mean(axis=1)
        zt /= np.linalg.norm(zt, axis=-1, keepdims=True)
        out = predict_split({"zi": lambda p, b: self.encode_image(p, {"image": b["image"]}),
                             "label": lambda p, b: b["label"]}, params,
                            eval_examples(self.bundle, self.num_examples), self.batch_size)
        logits = out["zi"].astype(np.float32) @ zt.T
        top5, labels = np.argsort(-logits, axis=1)[:, :5], out["label"]
        yield "accuracy", float(np.mean(top5[:, 0] == labels))
        yield "top5_accuracy", float(np.mean((top5 == labels[:, None]).any(axis=1)))
        yield "chance", 1.0 / self.num_classes
