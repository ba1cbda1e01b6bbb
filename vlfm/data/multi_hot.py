"""Multi-label targets (AudioSet's tags of a clip, an image's objects) -> a multi-hot ``labels`` vector.

The raw value lists the positive classes: integers, or names looked up in ``class_ids`` (AudioSet's
``/m/09x0r`` machine ids, as its segment CSVs give them); a JSON list, or one string of them separated
by commas or spaces (``"0,72,137"``, ``"/m/09x0r,/m/04rlf"``), as a webdataset member (``KEY.labels``)
or a nested key (``json/labels``) holds them. ``sigmoid_xent`` trains on the vector and the
``multilabel_map`` evaluator (``targets="labels"``) scores against it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlfm.data.bad_data import BAD_VALUE, BadData
from vlfm.data.preprocess import FIELDS, Field


@FIELDS.register("labels")
class MultiHotField(Field):
    """Positive classes -> ``labels`` ``[num_classes]`` float32 of zeros and ones.

    ``class_ids``: the name of each class in index order, when the data names classes instead of
    numbering them; ``class_names``: readable names for the bundle's info (evaluators' prompts, reports).
    An index outside ``[0, num_classes)``, an unknown name, or a value that is not a list of classes is
    bad data (skipped and counted). An empty list is a clip with no positive (allowed: AudioSet has none,
    other sets may)."""

    def __init__(self, key: str = "labels", train: bool = False, num_classes: int = 0,
                 class_ids: Sequence[str] | None = None, class_names: Sequence[str] | None = None):
        super().__init__(key, train)
        if class_ids is not None and num_classes and len(class_ids) != num_classes:
            raise ValueError(f"labels: {len(class_ids)} class_ids for num_classes={num_classes}")
        self.num_classes = num_classes or (len(class_ids) if class_ids is not None else 0)
        if self.num_classes <= 0:
            raise ValueError("labels: give num_classes (or class_ids, one per class)")
        self.index = {str(c): i for i, c in enumerate(class_ids)} if class_ids is not None else None
        if self.index is not None and len(self.index) != self.num_classes:
            raise ValueError("labels: class_ids has duplicates")
        self.class_names = list(class_names) if class_names else None

    def _items(self, raw: Any) -> list:
        if isinstance(raw, (bytes, bytearray)):
            raw = raw.decode("utf-8", errors="strict")
        if isinstance(raw, str):
            text = raw.strip()
            if text.startswith("["):
                raw = json.loads(text)
            else:
                return [part for part in re.split(r"[,\s]+", text) if part]
        if isinstance(raw, np.ndarray):
            raw = raw.tolist()
        if isinstance(raw, (int, np.integer)):
            return [raw]
        if not isinstance(raw, (list, tuple)):
            raise TypeError(f"a {type(raw).__name__}")
        return list(raw)

    def _class(self, item: Any) -> int:
        if self.index is not None:
            item = item.decode() if isinstance(item, bytes) else str(item)
            if item not in self.index:
                raise BadData(BAD_VALUE, f"label {item!r:.40} is not one of the class_ids")
            return self.index[item]
        try:
            value = int(item)
        except (TypeError, ValueError):
            raise BadData(BAD_VALUE, f"label {item!r:.40} is not an integer (give class_ids to map names)") from None
        if not 0 <= value < self.num_classes:
            raise BadData(BAD_VALUE, f"label {value} outside [0, {self.num_classes})")
        return value

    def process(self, raw: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
        try:
            items = self._items(raw)
        except (TypeError, ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            raise BadData(BAD_VALUE, f"labels {raw!r:.40} are not a list of classes ({e})") from None
        out = np.zeros(self.num_classes, np.float32)
        out[[self._class(item) for item in items]] = 1.0
        return {"labels": out}

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_classes": self.num_classes, "multi_label": True}
        if self.class_names:
            out["class_names"] = self.class_names
        return out
