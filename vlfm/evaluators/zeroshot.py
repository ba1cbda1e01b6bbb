"""Zero-shot classification by CLIP's protocol: prompt-ensembled class embeddings, top-1 / top-5."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from vlfm.data.pipeline import build_dataset, eval_examples
from vlfm.data.tokenizers import build_tokenizer
from vlfm.evaluators.imagenet_metadata import CLIP_IMAGENET_TEMPLATES, IMAGENET_CLASS_NAMES
from vlfm.evaluators.predict import predict_all, predict_split
from vlfm.evaluators.registry import EVALUATORS
from vlfm.evaluators.retrieval import media

CLASS_NAME_SETS: dict[str, Sequence[str]] = {"imagenet": IMAGENET_CLASS_NAMES}
# The 7 of the 80 that CLIP's prompt-engineering notebook recommends.
CLIP_IMAGENET_SIMPLE_TEMPLATES: tuple[str, ...] = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.",
                                                   "a photo of the large {}.", "a {} in a video game.",
                                                   "art of the {}.", "a photo of the small {}.")
TEMPLATE_SETS: dict[str, Sequence[str]] = {"clip_imagenet": CLIP_IMAGENET_TEMPLATES,
                                           "clip_imagenet_simple": CLIP_IMAGENET_SIMPLE_TEMPLATES}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ensemble_class_embeddings(prompt_embeddings: np.ndarray) -> np.ndarray:
    """CLIP's prompt ensemble: classes x templates x dim -> classes x dim. Each prompt embedding is
    normalised, the class's prompts are averaged, the mean is normalised again (a prompt with a large
    norm does not outweigh the others)."""
    return _unit(_unit(np.asarray(prompt_embeddings, np.float32)).mean(axis=1))


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the k highest logits; ties count against the model (the
    label's rank is the number of other classes scoring at least as high)."""
    correct = logits[np.arange(len(labels)), labels]
    rank = (logits >= correct[:, None]).sum(axis=1) - 1
    return float(np.mean(rank < k))


@EVALUATORS.register("clip_zeroshot")
class ClipZeroShotEvaluator:
    """Zero-shot classification with prompt-ensembled class embeddings (CLIP, Radford et al. 2021).

    Every class name is put into every template; the prompts' text embeddings are combined by
    ``ensemble_class_embeddings`` (normalise each, average, renormalise); an image is classified by
    cosine similarity to the class embeddings.

    ``class_names``: ``"imagenet"`` (the 1,000 names shipped in ``imagenet_metadata``, in TFDS
    ``imagenet2012`` label order, also right for ``imagenet_v2`` and ``imagenet_a``-style relabelings
    that keep the 1,000 indices), ``"data"`` (the data's ``info["class_names"]``) or a list.
    ``templates``: ``"clip_imagenet"`` (CLIP's 80), ``"clip_imagenet_simple"`` (the 7 of CLIP's notebook),
    a list of format strings (``{}`` = the class name) or ``"data"`` (the data's own
    ``info["class_prompts"]``, e.g. the shapes data's, with ``class_names="data"``). ``tokenizer``:
    ``build_tokenizer`` kwargs when the data has no text field (TFDS ``imagenet2012``); ``max_len``
    defaults to the data's, else 77. ``view``: the data view (the shapes ``image_label`` view by
    default; None for datasets without views). ``input_key``: the batch key ``encode_image`` encodes
    (``video`` for zero-shot video classification, e.g. the ``moving_shapes`` ``video_label`` view with
    its own class names and prompts). ``label_key``: the batch key of the class index (``label``; e.g.
    ``position`` for the shapes ``pairs`` view classified by where the object is, with the position names
    as ``class_names``; the data's own ``num_classes`` is then not checked).

    Metrics: ``accuracy`` (top-1), ``top5_accuracy`` (ties count against the model), ``chance``
    (1 / classes), ``num_classes``, ``num_templates``.
    """

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256,
                 class_names: str | Sequence[str] = "data", templates: str | Sequence[str] = "clip_imagenet",
                 tokenizer: Mapping[str, Any] | None = None, max_len: int | None = None,
                 view: str | None = "image_label", input_key: str = "image", label_key: str = "label"):
        self.encode_image = predict_fns["encode_image"]
        self.input_key, self.label_key = input_key, label_key
        self.encode_text = predict_fns["encode_text"]
        self.bundle = build_dataset(dict(data) if view is None else dict(data, view=view), split)
        info = self.bundle.info
        names = self._class_names(class_names, info)
        if label_key == "label" and "num_classes" in info and int(info["num_classes"]) != len(names):
            raise ValueError(f"the data has {info['num_classes']} classes but class_names gives {len(names)}")
        if templates == "data":
            if class_names != "data" or "class_prompts" not in info:
                raise ValueError("templates='data' uses the data's own class_prompts: it needs class_names='data' "
                                 "and data that gives info['class_prompts']")
            prompts = [list(p) for p in info["class_prompts"]]
        else:
            if isinstance(templates, str):
                if templates not in TEMPLATE_SETS:
                    raise ValueError(f"unknown templates {templates!r}; valid: {', '.join(TEMPLATE_SETS)}, data, "
                                     "or a list of format strings")
                templates = TEMPLATE_SETS[templates]
            prompts = [[t.format(name) for t in templates] for name in names]
        if len({len(p) for p in prompts}) != 1:
            raise ValueError("every class needs the same number of prompts")
        if tokenizer is not None:
            tok = build_tokenizer(**dict(tokenizer))
        elif "tokenizer" in info:
            tok = info["tokenizer"]
        else:
            raise ValueError(f"the data {self.bundle.name} has no tokenizer: give the evaluator "
                             "tokenizer=dict(kind=...)")
        max_len = int(max_len or info.get("max_len") or 77)
        tokens = tok.encode_batch([p for per_class in prompts for p in per_class], max_len)
        self.prompts = {"text": tokens["ids"], "text_mask": tokens["mask"]}
        self.num_classes, self.num_templates = len(prompts), len(prompts[0])
        self.num_examples, self.batch_size = num_examples, batch_size

    @staticmethod
    def _class_names(class_names: str | Sequence[str], info: Mapping[str, Any]) -> list[str]:
        if isinstance(class_names, str):
            if class_names == "data":
                if "class_names" not in info:
                    raise ValueError("class_names='data' needs data that gives info['class_names']")
                return list(info["class_names"])
            if class_names not in CLASS_NAME_SETS:
                raise ValueError(f"unknown class_names {class_names!r}; valid: data, "
                                 f"{', '.join(CLASS_NAME_SETS)}, or a list")
            return list(CLASS_NAME_SETS[class_names])
        return list(class_names)

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        zt = predict_all(self.encode_text, params, self.prompts, self.batch_size)
        zt = np.asarray(zt, np.float32).reshape(self.num_classes, self.num_templates, -1)
        classes = ensemble_class_embeddings(zt)
        out = predict_split({"zi": lambda p, b: self.encode_image(p, media(b, self.input_key)),
                             "label": lambda p, b: b[self.label_key]}, params,
                            eval_examples(self.bundle, self.num_examples), self.batch_size)
        logits = _unit(out["zi"].astype(np.float32)) @ classes.T
        yield "accuracy", topk_accuracy(logits, out["label"], 1)
        yield "top5_accuracy", topk_accuracy(logits, out["label"], 5)
        yield "chance", 1.0 / self.num_classes
        yield "num_classes", float(self.num_classes)
        yield "num_templates", float(self.num_templates)
