"""Zero-shot image-text retrieval (R@1/5/10) and zero-shot classification for dual encoders."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from vlfm.data.pipeline import build_dataset, eval_arrays, predict_all
from vlfm.evaluators.registry import EVALUATORS


def recall_at_k(similarity: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@k as ``r{k}``: row i's correct column is i; R@k is the share of rows whose correct column ranks in the top k."""
    correct = similarity[np.arange(len(similarity)), np.arange(len(similarity))]
    rank = (similarity > correct[:, None]).sum(axis=1)
    return {f"r{k}": float(np.mean(rank < k)) for k in ks}


@EVALUATORS.register("retrieval")
class RetrievalEvaluator:
    """Image->text and text->image recall over held-out pairs (one caption per image)."""

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256, to_device: Callable | None = None):
        self.encode_image = predict_fns["encode_image"]
        self.encode_text = predict_fns["encode_text"]
        arrays = eval_arrays(build_dataset(data, split), num_examples)
        self.images = {"image": arrays["image"]}
        self.texts = {k: arrays[k] for k in ("text", "text_mask")}
        self.batch_size = batch_size
        self.chance = 1.0 / len(arrays["image"])

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        zi = predict_all(self.encode_image, params, self.images, self.batch_size)
        zt = predict_all(self.encode_text, params, self.texts, self.batch_size)
        sim = zi @ zt.T
        for name, value in recall_at_k(sim).items():
            yield f"i2t_{name}", value
        for name, value in recall_at_k(sim.T).items():
            yield f"t2i_{name}", value
        yield "chance_r1", self.chance


@EVALUATORS.register("zeroshot_classification")
class ZeroShotClassificationEvaluator:
    """Classifies held-out images by similarity to each class's prompt embeddings (averaged)."""

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256):
        self.encode_image = predict_fns["encode_image"]
        self.encode_text = predict_fns["encode_text"]
        bundle = build_dataset(dict(data, view="image_label"), split)
        arrays = eval_arrays(bundle, num_examples)
        self.images, self.labels = {"image": arrays["image"]}, arrays["label"]
        tokenizer, max_len = bundle.info["tokenizer"], bundle.info["max_len"]
        prompts = bundle.info["class_prompts"]
        self.num_classes, self.num_templates = len(prompts), len(prompts[0])
        flat = [p for per_class in prompts for p in per_class]
        tokens = tokenizer.encode_batch(flat, max_len)
        self.prompts = {"text": tokens["ids"], "text_mask": tokens["mask"]}
        self.batch_size = batch_size

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        zt = predict_all(self.encode_text, params, self.prompts, self.batch_size)
        zt = zt.reshape(self.num_classes, self.num_templates, -1).mean(axis=1)
        zt /= np.linalg.norm(zt, axis=-1, keepdims=True)
        zi = predict_all(self.encode_image, params, self.images, self.batch_size)
        logits = zi @ zt.T
        top5 = np.argsort(-logits, axis=1)[:, :5]
        yield "accuracy", float(np.mean(top5[:, 0] == self.labels))
        yield "top5_accuracy", float(np.mean((top5 == self.labels[:, None]).any(axis=1)))
        yield "chance", 1.0 / self.num_classes
