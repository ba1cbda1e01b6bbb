"""Config-driven preprocessing: raw records (webdataset samples, TFDS examples, text lines) -> model inputs.

A ``Processor`` holds one ``Field`` per input modality. Each field finds its raw value in the record
(``key``: ``"jpg;png;webp"`` tries alternatives, ``"captions/text"`` walks nested features and parses
JSON bytes on the way, e.g. ``"json/label"``), decodes it and returns arrays: ``image`` (+ ``image_mask``
for masked image modelling), ``text``/``text_mask`` (+ ``mlm_targets``), ``label``. A sample that cannot
be used becomes a ``BadSample`` marker, dropped and counted later.

New modalities (video frames, audio spectrograms) are new ``Field`` classes registered in ``FIELDS``
under the config key that selects them; sources and pipelines need no change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from vlfm.data import image_ops
from vlfm.data.bad_data import (BAD_TEXT, BAD_VALUE, EMPTY_TEXT, MISSING_KEY, BadData, BadSample)
from vlfm.data.masking import block_mask, mlm_mask
from vlfm.data.normalization import NORMALIZE, merge
from vlfm.data.tokenizers import build_tokenizer
from vlfm.registry import Registry

FIELDS: Registry[type] = Registry("field")


def lookup(record: Mapping[str, Any], key: str) -> Any:
    """The value at ``key`` (``a;b`` alternatives, ``a/b`` nesting); a missing one raises BadData."""
    for option in key.split(";"):
        node: Any = record
        for part in option.split("/"):
            if isinstance(node, (bytes, str)):
                try:
                    node = json.loads(node)
                except ValueError:
                    raise BadData(BAD_VALUE, f"{option}: not JSON") from None
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            else:
                break
        else:
            return node
    raise BadData(MISSING_KEY, f"no {key!r} in the sample (has {', '.join(sorted(map(str, record)))})")


class Field:
    """One modality of a sample. Subclasses set the output names and implement ``process``."""

    def __init__(self, key: str, train: bool):
        self.key = key
        self.train = train

    def process(self, raw: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """Metadata for the dataset bundle (e.g. the tokenizer)."""
        return {}


@FIELDS.register("image")
class ImageField(Field):
    """Encoded image -> ``image`` HxWx3 uint8; ``mean_std`` is declared in ``info["normalize"]`` and applied
    on the host or in the train step (``vlfm.data.normalization``), as float32.

    Train (``train=True``): ``train_crop`` = ``random_resized_crop`` (``scale``, ``ratio``), ``resize``
    (squash to size) or ``clip``; optional horizontal ``flip`` and ``randaugment=(num_ops, magnitude)``.
    Eval: ``eval_crop`` = ``clip`` (short side bicubic to ``size`` + centre crop: open_clip's transform)
    or ``resize``. ``mean_std``: ``clip``, ``imagenet``, ``half`` or (mean, std). ``mim``: kwargs of
    ``masking.block_mask`` to add a BEiT ``image_mask`` (grid of patches).
    """

    def __init__(self, key: str = "jpg;jpeg;png;webp;image", train: bool = False, size: int = 224,
                 train_crop: str = "random_resized_crop", eval_crop: str = "clip",
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 flip: bool = False, randaugment: tuple[int, int] | None = None,
                 mean_std: str | tuple = "clip", draft: bool = True, mim: Mapping[str, Any] | None = None):
        super().__init__(key, train)
        crops = ("random_resized_crop", "resize", "clip")
        if train_crop not in crops or eval_crop not in crops[1:]:
            raise ValueError(f"image crops: train_crop in {crops}, eval_crop in {crops[1:]}; got {train_crop!r}, "
                             f"{eval_crop!r}")
        self.size = size
        self.crop = train_crop if train else eval_crop
        self.eval_crop = eval_crop
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.flip = flip and train
        self.randaugment = tuple(randaugment) if randaugment and train else None
        self.mean, self.std = image_ops.mean_std(mean_std)
        # JPEG draft decoding changes pixels, so it is only used where augmentation changes them anyway.
        self.draft = draft and train
        self.mim = dict(mim) if mim else None

    def _pil(self, raw: Any):
        if isinstance(raw, (bytes, bytearray)):
            return image_ops.decode_image(bytes(raw), self.size if self.draft else None)
        if isinstance(raw, np.ndarray):  # already decoded (e.g. a TFDS Tensor feature)
            from PIL import Image

            return Image.fromarray(raw.squeeze(-1) if raw.ndim == 3 and raw.shape[-1] == 1 else raw)
        raise BadData(BAD_VALUE, f"image is a {type(raw).__name__}, not bytes or an array")

    def preprocess(self, raw: Any) -> np.ndarray:
        """One image (encoded bytes or an array) as evaluation sees it (``eval_crop``, no augmentation),
        whatever the split: the bundle's ``info["preprocess_image"]`` (e.g. for captioning image files)."""
        image = self._pil(raw)
        if self.eval_crop == "clip":
            image = image_ops.center_crop(image_ops.resize_short_side(image, self.size), self.size)
        else:
            image = image_ops.to_rgb(image).resize((self.size, self.size), image_ops.BICUBIC)
        return image_ops.normalize(image_ops.to_float_array(image), self.mean, self.std, inplace=True)

    def info(self) -> dict[str, Any]:
        return {"preprocess_image": self.preprocess, NORMALIZE: {"image": (self.mean, self.std)}}

    def process(self, raw: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = self._pil(raw)
        if self.crop == "clip":
            image = image_ops.center_crop(image_ops.resize_short_side(image, self.size), self.size)
        else:
            image = image_ops.to_rgb(image)
            if self.crop == "random_resized_crop":
                image = image_ops.random_resized_crop(image, self.size, rng, self.scale, self.ratio)
            else:
                image = image.resize((self.size, self.size), image_ops.BICUBIC)
        if self.randaugment:
            image = image_ops.randaugment(image, rng, *self.randaugment)
        if self.flip and rng.random() < 0.5:
            image = image.transpose(image_ops.Image.Transpose.FLIP_LEFT_RIGHT)
        out = {"image": np.asarray(image_ops.to_rgb(image), dtype=np.uint8)}
        if self.mim is not None:
            out["image_mask"] = block_mask(rng, **self.mim)
        return out


def _as_text(raw: Any, rng: np.random.Generator, train: bool) -> str:
    if isinstance(raw, (list, tuple, np.ndarray)):  # several captions: a random one in training
        items = [r for r in raw if len(r)] or list(raw)
        if not items:
            raise BadData(EMPTY_TEXT, "no captions")
        raw = items[int(rng.integers(len(items)))] if train else items[0]
    if isinstance(raw, (bytes, bytearray, np.bytes_)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadData(BAD_TEXT, str(e)) from None
    if not isinstance(raw, str):
        raise BadData(BAD_VALUE, f"text is a {type(raw).__name__}")
    text = raw.strip()
    if not text:
        raise BadData(EMPTY_TEXT, "empty text")
    return text


@FIELDS.register("text")
class TextField(Field):
    """Caption or document -> ``text`` ids and ``text_mask`` (fixed ``max_len``, specials, padding).

    ``tokenizer``: kwargs of ``tokenizers.build_tokenizer`` (e.g. ``{"kind": "wordpiece", "path": ...}``).
    ``mlm_prob > 0`` adds BERT masking (``mlm_targets``); ``whole_word`` masks whole words.
    """

    def __init__(self, key: str = "txt;text", train: bool = False, tokenizer: Mapping[str, Any] | None = None,
                 max_len: int = 77, mlm_prob: float = 0.0, whole_word: bool = False):
        super().__init__(key, train)
        if tokenizer is None:
            raise ValueError("the text field needs a tokenizer, e.g. {'kind': 'wordpiece', 'path': 'vocab.txt'}")
        self.tokenizer = build_tokenizer(**dict(tokenizer))
        self.max_len = max_len
        self.mlm_prob = mlm_prob
        self.whole_word = whole_word
        if mlm_prob > 0 and getattr(self.tokenizer, "mask_id", None) is None:
            raise ValueError("MLM masking needs a tokenizer with a mask token")
        specials = [getattr(self.tokenizer, a, None) for a in ("pad_id", "bos_id", "eos_id", "cls_id", "sep_id")]
        self.special_ids = np.array(sorted({s for s in specials if s is not None}), np.int32)

    def process(self, raw: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
        text = _as_text(raw, rng, self.train)
        tokens = self.tokenizer.encode_batch([text], self.max_len)
        ids, mask = tokens["ids"][0], tokens["mask"][0]
        out = {"text": ids, "text_mask": mask}
        if self.mlm_prob > 0:
            starts = self.tokenizer.word_starts(ids) if self.whole_word else None
            out["text"], out["mlm_targets"] = mlm_mask(
                ids, rng, mask_id=self.tokenizer.mask_id, vocab_size=self.tokenizer.vocab_size,
                special_ids=self.special_ids, prob=self.mlm_prob, word_starts=starts)
        return out

    def info(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "max_len": self.max_len, "vocab_size": self.tokenizer.vocab_size}


@FIELDS.register("label")
class LabelField(Field):
    """Class index -> ``label`` int32; accepts ints, numeric strings/bytes (webdataset ``.cls``)."""

    def __init__(self, key: str = "cls;label", train: bool = False, num_classes: int | None = None,
                 class_names: list[str] | None = None):
        super().__init__(key, train)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else None

    def process(self, raw: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
        try:
            label = int(raw.decode() if isinstance(raw, (bytes, bytearray)) else raw)
        except (TypeError, ValueError, UnicodeDecodeError):
            raise BadData(BAD_VALUE, f"label {raw!r:.40} is not an integer") from None
        if label < 0 or (self.num_classes is not None and label >= self.num_classes):
            raise BadData(BAD_VALUE, f"label {label} outside [0, {self.num_classes})")
        return {"label": np.int32(label)}

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.num_classes is not None:
            out["num_classes"] = self.num_classes
        if self.class_names:
            out["class_names"] = self.class_names
            out["class_prompts"] = [[f"a photo of a {n}.", f"a picture of a {n}."] for n in self.class_names]
        return out


class Processor:
    """record -> example dict (or ``BadSample``). Picklable, so it runs in grain worker processes."""

    def __init__(self, fields: Mapping[str, Field], name: str):
        if not fields:
            raise ValueError(f"dataset {name}: no fields configured (image, text, label, ...)")
        self.fields = dict(fields)
        self.name = name

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict | BadSample:
        if isinstance(record, BadSample):
            return record
        out: dict[str, np.ndarray] = {}
        try:
            for field in self.fields.values():
                out.update(field.process(lookup(record, field.key), rng))
        except BadData as e:
            return BadSample(e.kind, str(record.get("__url__", self.name)), str(record.get("__key__", "")),
                             e.detail)
        return out

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name}
        for field in self.fields.values():
            field_info = field.info()
            info.update(field_info, **{NORMALIZE: merge(info.get(NORMALIZE), field_info.get(NORMALIZE))})
        if not info[NORMALIZE]:
            del info[NORMALIZE]
        return info


def build_processor(name: str, train: bool, **specs: Any) -> Processor:
    """``specs`` maps a field type (``image``, ``text``, ``label``, or any registered one) to its kwargs;
    None leaves the field out. Field order in the output follows ``specs``."""
    fields = {}
    for kind, spec in specs.items():
        if spec is None:
            continue
        spec = dict(spec)
        fields[kind] = FIELDS.get(kind)(train=train, **spec)
    return Processor(fields, name)
