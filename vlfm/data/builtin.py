"""The built-in shapes dataset as a pipeline source (image-caption pairs, images, text, image-label)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import grain
import numpy as np
from PIL import Image

from vlfm.data import image_ops, shapes
from vlfm.data.masking import block_mask, mlm_mask
from vlfm.data.normalization import NORMALIZE
from vlfm.data.pipeline import DATASETS, DatasetBundle
from vlfm.data.tokenizers import WordTokenizer

IMAGE_MEAN, IMAGE_STD = 0.5, 0.5


class _ArraySource(grain.sources.RandomAccessDataSource):
    """Random access over a dict of equally long arrays, one example dict per index."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self._len = len(next(iter(arrays.values())))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self.arrays.items()}


def _scale(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) / 255.0 - IMAGE_MEAN) / IMAGE_STD


def preprocess_image(data: bytes, image_size: int) -> np.ndarray:
    """An encoded image file as the model sees shapes images: RGB, squashed to ``image_size`` square
    (bicubic), scaled to [-1, 1] (float32 [S, S, 3])."""
    rgb = image_ops.to_rgb(image_ops.decode_image(data))
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return _scale(np.asarray(rgb, np.uint8))


def _mlm_transform(example: dict, rng: np.random.Generator, *, tokenizer: WordTokenizer, prob: float) -> dict:
    special = np.array([tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id], np.int32)
    ids, targets = mlm_mask(example["text"], rng, mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                            special_ids=special, prob=prob)
    return dict(example, text=ids, mlm_targets=targets)


def _mim_transform(example: dict, rng: np.random.Generator, *, then: Callable | None,
                   mim: dict[str, Any]) -> dict:
    out = dict(example, image_mask=block_mask(rng, **mim))
    return then(out, rng) if then is not None else out


def _references(split: str, max_objects: int, index: int, num: int) -> list[str]:
    return shapes.reference_captions(split, int(index), num, max_objects)


@DATASETS.register("shapes")
def shapes_dataset(split: str, num_examples: int = 20_000, image_size: int = 32, max_objects: int = 2,
                   view: str = "pairs", max_len: int = 16, mlm_prob: float = 0.0,
                   mim: Mapping[str, Any] | None = None, cache_dir: str | None = None) -> DatasetBundle:
    """Examples with ``image`` (uint8, scaled to [-1, 1] float32 by ``info["normalize"]``), ``text``/``text_mask`` (word ids),
    ``label`` and the main object's attributes, restricted to the keys of ``view``. With
    ``mlm_prob > 0`` the text is masked per example (80/10/10) and ``mlm_targets`` added. ``mim``
    (kwargs of ``masking.block_mask``, e.g. ``grid=(4, 4), num_masked=6, min_block=2``) adds a BEiT
    block mask per example, ``image_mask`` (bool [h, w], True = masked), for masked image modelling.

    The ``captions`` view adds ``index`` (int32, the example's number in the split): captioning evaluators
    look up every reference wording of it with ``info["reference_captions"](index, num)``, so no string
    goes through the batch. ``info["preprocess_image"]`` turns an encoded image file into a model input."""
    if view not in shapes.VIEWS:
        raise ValueError(f"unknown shapes view {view!r}; valid views: {', '.join(shapes.VIEWS)}")
    data = shapes.load(split, num_examples, image_size, max_objects, cache_dir=cache_dir)
    tokenizer = WordTokenizer.for_shapes()
    arrays: dict[str, np.ndarray] = {}
    keys = shapes.VIEWS[view]
    if "image" in keys:
        arrays["image"] = data["image"]  # uint8; scaled per example so large datasets stay small in memory
    if "caption" in keys:
        tokens = tokenizer.encode_batch(list(data["caption"]), max_len)
        arrays["text"], arrays["text_mask"] = tokens["ids"], tokens["mask"]
    if view == "captions":
        arrays["index"] = np.arange(len(data["caption"]), dtype=np.int32)
    if "label" in keys or view == "pairs":
        for k in ("label", "shape", "color", "size", "position"):
            arrays[k] = data[k]
    transform = None
    if mlm_prob > 0:
        if "text" not in arrays:
            raise ValueError(f"mlm_prob needs a view with captions, not {view!r}")
        transform = functools.partial(_mlm_transform, tokenizer=tokenizer, prob=mlm_prob)
    if mim:
        if "image" not in arrays:
            raise ValueError(f"mim needs a view with images, not {view!r}")
        transform = functools.partial(_mim_transform, then=transform, mim=dict(mim))
    prompts = shapes.class_prompts()
    info = dict(name="shapes", tokenizer=tokenizer, max_len=max_len, class_names=list(shapes.CLASS_NAMES),
                class_prompts=prompts, num_classes=len(shapes.CLASS_NAMES), vocab_size=tokenizer.vocab_size,
                reference_captions=functools.partial(_references, split, max_objects),
                preprocess_image=functools.partial(preprocess_image, image_size=image_size))
    if "image" in arrays:  # uint8 in the pipeline; scaled on the host or in the train step
        info[NORMALIZE] = {"image": ((IMAGE_MEAN,) * 3, (IMAGE_STD,) * 3)}
    return DatasetBundle(grain.MapDataset.source(_ArraySource(arrays)), transform, info)
