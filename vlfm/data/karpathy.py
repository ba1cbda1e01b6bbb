"""COCO and Flickr30k captions in Karpathy's split files (``dataset_coco.json``, ``dataset_flickr30k.json``).

The format: ``{"dataset": "coco", "images": [{"filepath": "val2014", "filename": "COCO_val2014_...jpg",
"split": "train" | "restval" | "val" | "test", "sentences": [{"raw": "A man ...", "tokens": [...]}, ...],
"cocoid": 391895, ...}, ...]}`` (Flickr30k has no ``filepath``). The test splits are the standard
retrieval and captioning benchmarks: COCO 5k (5,000 images, 25,010 captions: a few images have more than
five) and Flickr30k 1k (1,000 images, 5,000 captions).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np
from etils import epath

from vlfm.data.pipeline import DATASETS, DatasetBundle
from vlfm.data.preprocess import build_processor

# vlfm split -> Karpathy splits. "train" takes restval too, as the retrieval papers (and the 113k COCO
# training set) do.
KARPATHY_SPLITS: dict[str, tuple[str, ...]] = {"train": ("train", "restval"), "validation": ("val",),
                                              "val": ("val",), "test": ("test",)}


def read_karpathy(path: str, split: str) -> list[dict]:
    """The image entries of one split of a Karpathy split file, in file order."""
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"unknown Karpathy split {split!r}; valid: {', '.join(KARPATHY_SPLITS)}")
    images = json.loads(epath.Path(path).read_text())["images"]
    return [im for im in images if im["split"] in KARPATHY_SPLITS[split]]


class _Record:
    """index -> raw record (image bytes, first caption, index); picklable for grain workers."""

    def __init__(self, entries: list[dict], image_root: str):
        self.entries, self.image_root = entries, image_root

    def __call__(self, index: int) -> dict:
        entry = self.entries[index]
        path = epath.Path(os.path.join(self.image_root, entry.get("filepath", ""), entry["filename"]))
        return {"image": path.read_bytes(), "caption": entry["sentences"][0]["raw"], "index": np.int32(index),
                "__key__": entry["filename"], "__url__": str(path)}


class _Transform:
    def __init__(self, processor):
        self.processor = processor

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        out = self.processor(record, rng)
        if isinstance(out, dict):
            out["index"] = record["index"]
        return out


@DATASETS.register("karpathy_captions")
def karpathy_captions(split: str, annotations: str, images: str, image: Mapping[str, Any] | None = None,
                      text: Mapping[str, Any] | None = None, augment: bool | None = None) -> DatasetBundle:
    """One image per example (``image``, ``index``; with a ``text`` spec also its first caption as
    ``text``/``text_mask``). ``info["reference_captions"](index, num=None)`` gives the image's captions
    (all of them, or the first ``num``), so retrieval and captioning evaluators score every caption.

    ``annotations``: the Karpathy JSON; ``images``: the folder holding ``filepath/filename`` (COCO:
    the folder with ``train2014/`` and ``val2014/``; Flickr30k: the image folder itself).
    """
    entries = read_karpathy(annotations, split)
    if not entries:
        raise ValueError(f"{annotations} has no image in Karpathy split {split!r}")
    train = split.startswith("train") if augment is None else augment
    processor = build_processor("karpathy_captions", train, image=dict(image or {}, key="image"),
                                text=None if text is None else dict(text, key="caption"))
    captions = [[s["raw"] for s in e["sentences"]] for e in entries]

    def reference_captions(index: int, num: int | None = None) -> list[str]:
        return captions[int(index)] if num is None else captions[int(index)][:num]

    examples = grain.MapDataset.range(len(entries)).map(_Record(entries, images))
    info = dict(processor.info(), name="karpathy_captions", reference_captions=reference_captions,
                num_examples=len(entries), num_captions=sum(len(c) for c in captions))
    return DatasetBundle(examples, _Transform(processor), info)
