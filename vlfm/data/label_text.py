"""Image-label-text data (UniCL): image-label data as prompt-filled class names, pairs with labels of their own.

UniCL (Yang et al. 2022) trains one contrastive model on image-label and image-text data in one label
space: an image-label example becomes an image-text pair whose text is a class-name prompt and whose
label is the class id; every image-text pair gets a label of its own. Two wrappers over any dataset
produce that, with the same keys (``keep`` plus ``label``), so a ``mixture`` mixes them in one batch:

- ``label_text``: ``source`` gives images and ``label``; the text is a prompt of the example's class,
  drawn per example from the templates (seeded, so resumes are exact). ``templates="data"`` uses the
  source's own prompts (``info["class_prompts"]``, the prompts the ``zeroshot_classification``
  evaluator uses with ``templates="data"``); a list of format strings (``{}`` or ``{name}`` the class
  name, ``{a}`` its article) fills the source's ``info["class_names"]``;
- ``unique_labels``: ``source`` gives image-text pairs; ``label`` is -1, which
  ``multi_positive_contrastive`` reads as "this row's own label" (no offset into the class ids needed,
  and no two pairs ever share one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vlfm.data.pipeline import DATASETS, DatasetBundle, build_dataset

PAIR_LABEL = -1


def fill_templates(templates: Sequence[str], class_names: Sequence[str]) -> list[list[str]]:
    """Prompts per class: every template filled with every class name (``{}``/``{name}``, ``{a}``: a/an)."""
    if not templates:
        raise ValueError("label_text needs at least one template")
    article = lambda name: "an" if name[:1].lower() in "aeiou" else "a"  # noqa: E731
    return [[t.format(name, name=name, a=article(name)) for t in templates] for name in class_names]


def _wrap(source: DatasetBundle, fn: Callable[[dict, np.random.Generator], dict], info: Mapping[str, Any]
          ) -> DatasetBundle:
    inner = source.raw_transform  # images stay uint8; the wrapper's bundle normalises them (info["normalize"])

    def transform(example: dict, rng: np.random.Generator) -> dict:
        return fn(inner(example, rng) if inner is not None else example, rng)

    if source.examples is not None:
        return DatasetBundle(source.examples, transform, info)
    return DatasetBundle(random_transform=transform, info=info, stream=source.stream)


def _kept(example: Mapping[str, Any], keep: Sequence[str], where: str) -> dict:
    missing = [k for k in keep if k not in example]
    if missing:
        raise KeyError(f"{where}: the source's examples have no {missing} (keys: {sorted(example)})")
    return {k: example[k] for k in keep}


@DATASETS.register("label_text")
def label_text_dataset(split: str, source: Mapping[str, Any], templates: str | Sequence[str] = "data",
                       max_len: int | None = None, keep: Sequence[str] = ("image",),
                       label_key: str = "label", label_offset: int = 0) -> DatasetBundle:
    """Image-label data as image-text-label examples: ``keep`` keys, ``text``/``text_mask`` (a prompt of
    the class, drawn per example) and ``label`` (the class id plus ``label_offset``: where this dataset's
    classes start in a label space shared with other label datasets, e.g. image and video classes)."""
    if label_offset < 0:
        raise ValueError(f"label_text: label_offset must be >= 0, got {label_offset}")
    bundle = build_dataset(source, split)
    info = bundle.info
    if templates == "data":
        if "class_prompts" not in info:
            raise ValueError(f"label_text(templates='data'): the source {bundle.name} gives no info['class_prompts']; "
                             "give templates as a list of format strings")
        prompts = [list(p) for p in info["class_prompts"]]
    else:
        if isinstance(templates, str):
            raise ValueError(f"label_text: templates must be 'data' or a list of format strings, got {templates!r}")
        if "class_names" not in info:
            raise ValueError(f"label_text: the source {bundle.name} gives no info['class_names']")
        prompts = fill_templates(list(templates), info["class_names"])
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("label_text: every class needs the same number of prompts")
    if "tokenizer" not in info:
        raise ValueError(f"label_text: the source {bundle.name} gives no tokenizer")
    max_len = int(max_len or info.get("max_len") or 77)
    num_classes, num_templates = len(prompts), len(prompts[0])
    tokens = info["tokenizer"].encode_batch([p for per_class in prompts for p in per_class], max_len)
    ids = tokens["ids"].reshape(num_classes, num_templates, -1)
    mask = tokens["mask"].reshape(num_classes, num_templates, -1)

    def prompt(example: dict, rng: np.random.Generator) -> dict:
        label = int(example[label_key])
        if not 0 <= label < num_classes:
            raise ValueError(f"label_text: label {label} outside the {num_classes} classes of {bundle.name}")
        t = int(rng.integers(num_templates))
        return dict(_kept(example, keep, "label_text"), text=ids[label, t], text_mask=mask[label, t],
                    label=np.int32(label + label_offset))

    return _wrap(bundle, prompt, dict(info, max_len=max_len, num_templates=num_templates))


@DATASETS.register("unique_labels")
def unique_labels_dataset(split: str, source: Mapping[str, Any],
                          keep: Sequence[str] = ("image", "text", "text_mask"),
                          label_key: str | None = None) -> DatasetBundle:
    """Image-text pairs as image-text-label examples: ``keep`` keys and ``label = -1`` (a label of its own),
    or, with ``label_key``, the source's class id under that key (pairs whose caption names a class then
    share it with that class's prompts)."""
    bundle = build_dataset(source, split)

    def label(example: dict, rng: np.random.Generator) -> dict:
        del rng
        value = PAIR_LABEL if label_key is None else int(_kept(example, [label_key], "unique_labels")[label_key])
        return dict(_kept(example, keep, "unique_labels"), label=np.int32(value))

    return _wrap(bundle, label, bundle.info)
