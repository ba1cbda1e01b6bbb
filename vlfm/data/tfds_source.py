"""Prepared TFDS datasets read through ``tfds`` array_record data sources: random access, no TensorFlow.

Images are read as their encoded bytes (``SkipDecoding``) and decoded by the preprocessing with
Pillow, so a corrupt image is skipped and counted instead of failing the run. Feature keys are mapped
by config, e.g. ``coco_captions``: ``image={"key": "image"}, text={"key": "captions/text", ...}``;
``imagenet2012``: ``image={"key": "image"}, label={"key": "label"}``; a text dataset for MLM:
``text={"key": "text", ...}``. Class names of a ``ClassLabel`` label feature go into the bundle's info
(zero-shot prompts). Preparing most catalogue datasets needs TensorFlow (see the README); reading
them does not.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import grain

from vlfm.data.pipeline import DATASETS, DatasetBundle
from vlfm.data.preprocess import build_processor


def _image_decoders(features: Any) -> dict:
    """SkipDecoding for every Image feature (nested dicts included): decode later, with bad-data handling."""
    import tensorflow_datasets as tfds  # heavy optional dependency, only for TFDS datasets

    decoders = {}
    for name, feature in features.items():
        if isinstance(feature, tfds.features.Image):
            decoders[name] = tfds.decode.SkipDecoding()
        elif isinstance(feature, tfds.features.FeaturesDict):
            inner = _image_decoders(feature)
            if inner:
                decoders[name] = inner
    return decoders


def _feature(features: Any, key: str) -> Any:
    node = features
    for part in key.split(";")[0].split("/"):
        try:
            node = node[part]
        except (KeyError, TypeError):
            return None
    return node


def _with_key(index: int, record: dict, source: str) -> dict:
    return dict(record, __key__=index, __url__=source)


@DATASETS.register("tfds")
def tfds_dataset(split: str, tfds_name: str, data_dir: str | None = None, name: str | None = None,
                 image: Mapping[str, Any] | None = None, text: Mapping[str, Any] | None = None,
                 label: Mapping[str, Any] | None = None, augment: bool | None = None,
                 split_names: Mapping[str, str] | None = None, **fields: Any) -> DatasetBundle:
    """A prepared TFDS dataset (``tfds_name``, e.g. ``coco_captions/2017``, in ``data_dir``).

    ``split_names`` maps vlfm split names to TFDS ones (e.g. ``{"validation": "val"}``); TFDS slicing
    such as ``train[:90%]`` works. ``augment`` defaults to True for splits named ``train*``.
    """
    import tensorflow_datasets as tfds  # heavy optional dependency, only for TFDS datasets

    tfds_split = dict(split_names or {}).get(split, split)
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    source = builder.as_data_source(split=tfds_split, decoders=_image_decoders(builder.info.features))
    label_spec = dict(label) if label is not None else None
    if label_spec is not None:
        feature = _feature(builder.info.features, label_spec.get("key", "label"))
        if isinstance(feature, tfds.features.ClassLabel):
            label_spec.setdefault("num_classes", feature.num_classes)
            label_spec.setdefault("class_names", list(feature.names))
    train = split.startswith("train") if augment is None else augment
    name = name or tfds_name
    specs = dict(image=image, text=text, label=label_spec, **fields)
    specs = {k: (dict(v, key=v.get("key", k)) if v is not None else None) for k, v in specs.items()}
    processor = build_processor(name, train, **specs)
    where = f"{tfds_name}:{tfds_split}"
    examples = grain.MapDataset.source(source).map_with_index(functools.partial(_with_key, source=where))
    return DatasetBundle(examples, processor, dict(processor.info(), num_examples=len(source)))
