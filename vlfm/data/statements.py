"""NLVR2 and SNLI-VE as released: one or two images and a statement to judge.

NLVR2 (lil.nlp.cornell.edu/nlvr): ``train.json``, ``dev.json``, ``test1.json``, one JSON object per line
with ``identifier`` (``train-10171-0-0``: the image pair ``train-10171-0`` and the sentence number),
``sentence``, ``label`` (``"True"``/``"False"``) and, in train, ``directory`` (the images' sub-folder);
images ``{pair}-img0.png`` (left) and ``{pair}-img1.png`` (right). Each line is one example: ``image``,
``image2``, ``text`` and ``label`` (1 = true), as the built-in ``shapes_nlvr2`` task.

SNLI-VE (github.com/necla-ml/SNLI-VE): ``snli_ve_{train,dev,test}.jsonl``, one JSON object per line with
``Flikr30kID`` (sic: the image file name, e.g. ``2248275918.jpg``), ``sentence2`` (the hypothesis) and
``gold_label``; images from Flickr30k. Examples: ``image``, ``text`` and ``label`` (0 entailment,
1 neutral, 2 contradiction), as the built-in ``shapes_snli_ve`` task.

Both give ``index`` (the example's position) so predictions can be written per line; a line whose
image is missing (``data/bad/missing_file``) or cannot be decoded (``corrupt_image``) is bad data,
skipped and counted like any other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np
from etils import epath

from vlfm.data.bad_data import MISSING_FILE, BadSample
from vlfm.data.builtin_tasks import VE_LABELS
from vlfm.data.pipeline import DATASETS, DatasetBundle
from vlfm.data.normalization import NORMALIZE
from vlfm.data.preprocess import build_processor
from vlfm.data.vqav2 import by_split

NLVR2_LABELS = {"False": 0, "True": 1}
SNLI_VE_IMAGE_KEYS = ("Flikr30kID", "Flickr30kID", "Flickr30K_ID")


def read_json_lines(path: str) -> list[dict]:
    """One JSON object per non-empty line; a malformed line fails naming the file and line number."""
    rows = []
    for number, line in enumerate(epath.Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            raise ValueError(f"{path}:{number}: not a JSON object ({e})") from None
    return rows


def _field(row: Mapping[str, Any], keys: tuple[str, ...], path: str, number: int) -> Any:
    for key in keys:
        if key in row:
            return row[key]
    raise ValueError(f"{path}:{number}: no {' / '.join(keys)} (the line has {', '.join(sorted(row))})")


def nlvr2_pair(identifier: str) -> str:
    """``train-10171-0-0`` -> ``train-10171-0``: the image pair a sentence is about."""
    return identifier.rsplit("-", 1)[0]


class _Record:
    """index -> raw record with the image files' bytes; picklable for grain workers."""

    def __init__(self, image_paths: list[tuple[str, ...]], texts: list[str], labels: list[int] | None, keys: list[str]):
        self.image_paths, self.texts, self.labels, self.keys = image_paths, texts, labels, keys

    def __call__(self, index: int, _: Any) -> dict | BadSample:
        paths = self.image_paths[index]
        record = {"statement": self.texts[index], "index": np.int32(index), "__key__": self.keys[index],
                  "__url__": paths[0]}
        for name, path in zip(("image", "image2"), paths):
            try:
                record[name] = epath.Path(path).read_bytes()
            except OSError as e:
                return BadSample(MISSING_FILE, path, self.keys[index], f"{type(e).__name__}: {e}")
        if self.labels is not None:
            record["label"] = np.int32(self.labels[index])
        return record


class _Transform:
    """Processor for ``image`` and ``text``, a second image processor for ``image2``, then ``index``/``label``."""

    def __init__(self, processor, second_image):
        self.processor, self.second_image = processor, second_image

    def __call__(self, record: dict, rng: np.random.Generator) -> dict | BadSample:
        out = self.processor(record, rng)
        if isinstance(out, BadSample):
            return out
        if self.second_image is not None:
            right = self.second_image({"image": record["image2"], **{k: record[k] for k in ("__key__", "__url__")}}, rng)
            if isinstance(right, BadSample):
                return right
            out["image2"] = right["image"]
        out["index"] = record["index"]
        if "label" in record:
            out["label"] = record["label"]
        return out


def _bundle(name: str, split: str, image_paths: list[tuple[str, ...]], texts: list[str], labels: list[int] | None,
            keys: list[str], image: Mapping[str, Any] | None, text: Mapping[str, Any] | None,
            augment: bool | None, info: dict) -> DatasetBundle:
    if text is None:
        raise ValueError(f"{name} needs text=dict(tokenizer=..., max_len=...) to tokenize the statements")
    train = split.startswith("train") if augment is None else augment
    image_spec = dict(image or {}, key="image")
    processor = build_processor(name, train, image=image_spec, text=dict(text, key="statement"))
    second = build_processor(name, train, image=image_spec) if len(image_paths[0]) > 1 else None
    examples = grain.MapDataset.source(list(range(len(texts)))).map_with_index(
        _Record(image_paths, texts, labels, keys))
    info = dict(processor.info(), name=name, **info)
    if second is not None:  # the right image is normalised as the left one
        info[NORMALIZE] = dict(info[NORMALIZE], image2=info[NORMALIZE]["image"])
    return DatasetBundle(examples, _Transform(processor, second), info)


@DATASETS.register("nlvr2")
def nlvr2_dataset(split: str, data: str | Mapping[str, str], images: str | Mapping[str, str],
                  image: Mapping[str, Any] | None = None, text: Mapping[str, Any] | None = None,
                  augment: bool | None = None) -> DatasetBundle:
    """NLVR2 sentences with their image pairs.

    ``data``: a split's JSON-lines file, or ``{split: path}``. ``images``: a path pattern with
    ``{pair}``, ``{side}`` (0 left, 1 right) and optionally ``{directory}`` (train's sub-folders), e.g.
    ``nlvr2/images/train/{directory}/{pair}-img{side}.png``; or ``{split: pattern}``. ``image``/``text``:
    field specs (``text`` needs a tokenizer). ``info`` carries ``identifiers``.
    """
    path = by_split(data, split, "nlvr2 data")
    pattern = by_split(images, split, "nlvr2 images")
    rows = read_json_lines(path)
    if not rows:
        raise ValueError(f"{path}: no examples")
    paths, texts, labels, keys = [], [], [], []
    for number, row in enumerate(rows, 1):
        identifier = str(_field(row, ("identifier",), path, number))
        fields = dict(pair=nlvr2_pair(identifier), directory=row.get("directory", ""))
        paths.append(tuple(pattern.format(side=side, **fields) for side in (0, 1)))
        texts.append(str(_field(row, ("sentence",), path, number)))
        label = str(_field(row, ("label",), path, number))
        if label not in NLVR2_LABELS:
            raise ValueError(f"{path}:{number}: label {label!r} is not one of {', '.join(NLVR2_LABELS)}")
        labels.append(NLVR2_LABELS[label])
        keys.append(identifier)
    return _bundle("nlvr2", split, paths, texts, labels, keys, image, text, augment,
                   dict(num_classes=2, class_names=["false", "true"], identifiers=keys))


@DATASETS.register("snli_ve")
def snli_ve_dataset(split: str, data: str | Mapping[str, str], images: str | Mapping[str, str],
                    image: Mapping[str, Any] | None = None, text: Mapping[str, Any] | None = None,
                    augment: bool | None = None) -> DatasetBundle:
    """SNLI-VE hypotheses with their Flickr30k images.

    ``data``: a split's JSON-lines file, or ``{split: path}``. ``images``: a path pattern with
    ``{image}`` (the file name the line gives, e.g. ``flickr30k-images/{image}``), or ``{split: pattern}``.
    Lines whose ``gold_label`` is ``-`` (no annotator consensus, as in SNLI) have no label to learn or
    score: they are left out and counted in ``info["no_consensus"]``. Any other unknown label fails.
    """
    path = by_split(data, split, "snli_ve data")
    pattern = by_split(images, split, "snli_ve images")
    rows = read_json_lines(path)
    label_of = {name: i for i, name in enumerate(VE_LABELS)}
    paths, texts, labels, keys = [], [], [], []
    no_consensus = 0
    for number, row in enumerate(rows, 1):
        label = str(_field(row, ("gold_label",), path, number))
        if label == "-":
            no_consensus += 1
            continue
        if label not in label_of:
            raise ValueError(f"{path}:{number}: gold_label {label!r} is not one of {', '.join(VE_LABELS)} or '-'")
        paths.append((pattern.format(image=_field(row, SNLI_VE_IMAGE_KEYS, path, number)),))
        texts.append(str(_field(row, ("sentence2",), path, number)))
        labels.append(label_of[label])
        keys.append(str(row.get("pairID", number)))
    if not texts:
        raise ValueError(f"{path}: no labelled examples ({no_consensus} lines without consensus)")
    return _bundle("snli_ve", split, paths, texts, labels, keys, image, text, augment,
                   dict(num_classes=3, class_names=list(VE_LABELS), pair_ids=keys, no_consensus=no_consensus))
