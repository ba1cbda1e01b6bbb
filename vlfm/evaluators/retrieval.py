"""Zero-shot image-text retrieval (R@1/5/10; one caption per image, or the COCO / Flickr30k rule with several)
and zero-shot classification for dual encoders."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from vlfm.data.pipeline import build_dataset, eval_examples
from vlfm.evaluators.predict import predict_all, predict_split
from vlfm.evaluators.registry import EVALUATORS


def batch_value(batch: Mapping[str, Any], key: str, option: str) -> Any:
    """``batch[key]``, failing with the option that named the key and the batch's keys when it has none."""
    if key not in batch:
        raise KeyError(f"{option}: no {key!r} in the evaluation batch; it has {', '.join(sorted(batch))}")
    return batch[key]


def media(batch: Mapping[str, Any], input_key: str) -> dict[str, Any]:
    """``{input_key: batch[input_key]}``: what an ``encode_image`` predict function reads (images, or
    videos for a video tower)."""
    return {input_key: batch_value(batch, input_key, "input_key")}


def recall_at_k(similarity: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@k as ``r{k}``: row i's correct column is i; R@k is the share of rows whose correct column ranks
    in the top k. Ties count against the model: the rank is the number of other columns scoring at least as
    high as the correct one (a collapsed model with equal scores everywhere ranks last, not first)."""
    n = len(similarity)
    correct = similarity[np.arange(n), np.arange(n)]
    rank = (similarity >= correct[:, None]).sum(axis=1) - 1
    return {f"r{k}": float(np.mean(rank < k)) for k in ks}


def top1_attribute_agreement(similarity: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Text->image: the share of captions whose top-ranked image (their own image included) has the same
    ``values`` (an attribute such as colour) as the caption's own image, and that share for a ranking at
    random (the mean share of the other images that have the caption's value).
    What retrieval matches when R@1 is low: a model that reads only the colour agrees on colour, not shape.
    """
    similarity, values = np.asarray(similarity), np.asarray(values)
    n = len(values)
    if similarity.shape != (n, n):
        raise ValueError(f"similarity {similarity.shape} is not images x captions for {n} values")
    top = np.argmax(similarity, axis=0)  # the best image of each caption (similarity: images x captions)
    same = values[:, None] == values[None, :]
    chance = (same.sum(axis=1) - 1) / max(n - 1, 1)
    return float(np.mean(values[top] == values)), float(np.mean(chance))


def multi_caption_recall(similarity: np.ndarray, caption_image: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@k with several captions per image (the COCO 5k / Flickr30k 1k rule).

    ``similarity``: images x captions; ``caption_image[j]``: the image caption j describes. Image to text
    (``i2t_r{k}``): an image is a hit when ANY of its captions ranks in its top k, i.e. when its best-ranked
    caption does. Text to image (``t2i_r{k}``): a caption is a hit when its own image ranks in its top k.
    Ties count against the model, as in ``recall_at_k``: a correct item's rank is the number of wrong
    items scoring at least as high (for image to text, the wrong captions scoring at least as high as
    the image's best caption).
    """
    similarity = np.asarray(similarity, np.float32)
    caption_image = np.asarray(caption_image)
    n_images, n_captions = similarity.shape
    if caption_image.shape != (n_captions,):
        raise ValueError(f"caption_image has shape {caption_image.shape}, want ({n_captions},)")
    own = caption_image[None, :] == np.arange(n_images)[:, None]  # images x captions
    if not own.any(axis=1).all():
        raise ValueError(f"images {np.flatnonzero(~own.any(axis=1))[:5].tolist()} have no caption")
    best = np.where(own, similarity, -np.inf).max(axis=1)
    i2t_rank = ((similarity >= best[:, None]) & ~own).sum(axis=1)
    correct = similarity[caption_image, np.arange(n_captions)]
    t2i_rank = (similarity >= correct[None, :]).sum(axis=0) - 1
    out = {f"i2t_r{k}": float(np.mean(i2t_rank < k)) for k in ks}
    out.update({f"t2i_r{k}": float(np.mean(t2i_rank < k)) for k in ks})
    return out


@EVALUATORS.register("multi_caption_retrieval")
class MultiCaptionRetrievalEvaluator:
    """Image-text retrieval with every caption of each image (COCO 5k Karpathy test: 5,000 images and
    25,010 captions; Flickr30k 1k: 1,000 and 5,000), by ``multi_caption_recall``.

    The data gives images with an ``index`` and ``info["reference_captions"](index, num)``: the
    ``karpathy_captions`` dataset (``captions_per_image=None``: all of each image's captions) or the
    built-in shapes data in its ``captions`` view (``num`` independent wordings per image; the default
    5). Captions are tokenised with the data's tokenizer and ``max_len``. ``view``: the data view to read
    (the shapes ``captions`` view by default; None for datasets without views, such as Karpathy's).

    Metrics: ``i2t_r1/5/10`` (an image is a hit when any of its captions is in its top k),
    ``t2i_r1/5/10``, ``i2t_mean`` / ``t2i_mean`` (mean of the three), ``mean_recall`` (mean of all six,
    ALBEF's ``r_mean``), ``rsum`` (the sum of all six in percent, as VSE++-style tables report it; at
    most 600), ``num_images``, ``num_captions`` and ``chance_r1`` (1 / images, both ways).

    ``input_key``: the batch key of what ``encode_image`` encodes (``video`` for a video-text dual encoder).
    """

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256, captions_per_image: int | None = 5,
                 view: str | None = "captions", input_key: str = "image"):
        if captions_per_image is not None and captions_per_image < 1:
            raise ValueError(f"captions_per_image must be >= 1 or None (all), got {captions_per_image}")
        self.encode_image = predict_fns["encode_image"]
        self.encode_text = predict_fns["encode_text"]
        self.bundle = build_dataset(dict(data) if view is None else dict(data, view=view), split)
        if "reference_captions" not in self.bundle.info or "tokenizer" not in self.bundle.info:
            raise ValueError(f"multi_caption_retrieval needs data with info['reference_captions'] and a tokenizer "
                             f"(karpathy_captions with a text spec, or shapes); {self.bundle.name} has "
                             f"{', '.join(sorted(self.bundle.info))}")
        self.num_examples, self.batch_size, self.captions_per_image = num_examples, batch_size, captions_per_image
        self.input_key = input_key

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        out = predict_split({"zi": lambda p, b: self.encode_image(p, media(b, self.input_key)),
                             "index": lambda p, b: b["index"]}, params,
                            eval_examples(self.bundle, self.num_examples), self.batch_size)
        info = self.bundle.info
        captions, caption_image = [], []
        for row, index in enumerate(out["index"]):
            refs = info["reference_captions"](int(index), self.captions_per_image)
            captions += refs
            caption_image += [row] * len(refs)
        tokens = info["tokenizer"].encode_batch(captions, int(info.get("max_len", 77)))
        zt = predict_all(self.encode_text, params, {"text": tokens["ids"], "text_mask": tokens["mask"]},
                         self.batch_size)
        sim = out["zi"].astype(np.float32) @ zt.astype(np.float32).T
        recalls = multi_caption_recall(sim, np.asarray(caption_image))
        yield from recalls.items()
        for direction in ("i2t", "t2i"):
            yield f"{direction}_mean", float(np.mean([v for k, v in recalls.items() if k.startswith(direction)]))
        yield "mean_recall", float(np.mean(list(recalls.values())))
        yield "rsum", 100.0 * float(sum(recalls.values()))
        yield "num_images", float(len(sim))
        yield "num_captions", float(len(captions))
        yield "chance_r1", 1.0 / len(sim)


@EVALUATORS.register("retrieval")
class RetrievalEvaluator:
    """Image->text and text->image recall over held-out pairs (one caption per image). ``input_key``: the
    batch key of what ``encode_image`` encodes (``video`` for video-text retrieval: R@1/5/10 of clips
    and captions, ``i2t`` being video to text).

    ``attribute_keys``: batch keys of attributes the captions name (the built-in data's ``color``,
    ``shape``, ``direction``); for each, ``t2i_top1_{key}`` is the share of captions whose top-ranked image
    has the caption's value and ``chance_top1_{key}`` that share at random (``top1_attribute_agreement``):
    which words retrieval matches."""

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256, input_key: str = "image",
                 attribute_keys: Sequence[str] = ()):
        self.encode_image = predict_fns["encode_image"]
        self.encode_text = predict_fns["encode_text"]
        self.bundle, self.num_examples, self.batch_size = build_dataset(data, split), num_examples, batch_size
        self.input_key, self.attribute_keys = input_key, tuple(attribute_keys)

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        fns = {"zi": lambda p, b: self.encode_image(p, media(b, self.input_key)),
               "zt": lambda p, b: self.encode_text(p, {"text": b["text"], "text_mask": b["text_mask"]})}
        for key in self.attribute_keys:
            fns[key] = lambda p, b, key=key: batch_value(b, key, "attribute_keys")
        out = predict_split(fns, params, eval_examples(self.bundle, self.num_examples), self.batch_size)
        sim = out["zi"].astype(np.float32) @ out["zt"].astype(np.float32).T
        for name, value in recall_at_k(sim).items():
            yield f"i2t_{name}", value
        for name, value in recall_at_k(sim.T).items():
            yield f"t2i_{name}", value
        yield "chance_r1", 1.0 / len(sim)
        for key in self.attribute_keys:
            agreement, chance = top1_attribute_agreement(sim, out[key])
            yield f"t2i_top1_{key}", agreement
            yield f"chance_top1_{key}", chance


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
