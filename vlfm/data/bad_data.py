"""Bad data: markers for samples that cannot be used, and the pipeline stage that drops and counts them.

Sources and decoders never raise on a corrupt JPEG, an empty caption, a truncated tar or an unreadable
shard: they emit a ``BadSample`` marker instead. ``DropBad`` (an ``IterDataset`` stage placed after
decoding) removes the markers, counts them by kind in its iterator state and logs the first of each
kind with its shard and key. Because the counts live in the iterator state, they are exact for the
batches consumed so far (grain hands back each worker's state with every element), survive a resume
with the checkpoint, and are read in the main process from ``DataIterator.stats()``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import grain

log = logging.getLogger("vlfm.data")

# The kinds of bad data, as they appear in the metrics (``data/bad/<kind>``).
CORRUPT_IMAGE = "corrupt_image"        # undecodable or truncated image bytes
EMPTY_TEXT = "empty_text"              # empty caption or document
BAD_TEXT = "bad_text"                  # text that is not valid UTF-8
MISSING_KEY = "missing_key"            # a sample lacks a field the spec needs
BAD_VALUE = "bad_value"                # a field that cannot be parsed (e.g. a label that is not an int)
TRUNCATED_SHARD = "truncated_shard"    # a tar or file that ends in the middle of a record
UNREADABLE_SHARD = "unreadable_shard"  # a shard that cannot be opened or is not a tar
EMPTY_SHARD = "empty_shard"            # a valid shard that holds no sample (e.g. a tar with no members)
MISSING_FILE = "missing_file"          # a file a record names (an annotation's image) cannot be read
CORRUPT_AUDIO = "corrupt_audio"        # undecodable audio bytes
CORRUPT_VIDEO = "corrupt_video"        # undecodable or truncated video bytes
SHORT_CLIP = "short_clip"              # audio or video shorter than the configured clip needs
KINDS = (CORRUPT_IMAGE, EMPTY_TEXT, BAD_TEXT, MISSING_KEY, BAD_VALUE, TRUNCATED_SHARD, UNREADABLE_SHARD, EMPTY_SHARD,
         MISSING_FILE, CORRUPT_AUDIO, CORRUPT_VIDEO, SHORT_CLIP)

STATE_KEY = "vlfm_bad_counts"  # marks DropBad's counters inside a (nested) grain iterator state


class EmptyDatasetError(RuntimeError):
    """A dataset produced no usable example at all; the message names the path or dataset."""


class BadData(Exception):
    """Raised by decoders for a sample that cannot be used; turned into a ``BadSample`` marker."""

    def __init__(self, kind: str, detail: str = ""):
        if kind not in KINDS:
            raise ValueError(f"unknown bad-data kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class BadSample:
    """Stands in the stream for a sample (or shard) that was skipped."""

    kind: str
    source: str = ""  # shard path / dataset name
    key: str = ""     # sample key or index within the source
    detail: str = ""

    def describe(self) -> str:
        where = f"{self.source} key {self.key}" if self.key else self.source
        return f"{self.kind} in {where or '?'}: {self.detail}"


def is_bad(element: Any) -> bool:
    return isinstance(element, BadSample)


class DropBad(grain.IterDataset):
    """Removes ``BadSample`` markers, counting them by kind in the iterator state.

    ``name`` names the dataset in errors. If the first ``give_up_after`` elements are all bad, the
    dataset is taken to yield nothing and ``EmptyDatasetError`` is raised instead of looping forever.
    """

    def __init__(self, parent: grain.IterDataset, *, name: str, give_up_after: int = 1000):
        super().__init__(parent)
        self.name = name
        self.give_up_after = give_up_after

    def __iter__(self) -> grain.DatasetIterator:
        return _DropBadIterator(self._parent.__iter__(), self.name, self.give_up_after)

    def __str__(self) -> str:
        return f"DropBad({self.name})"


class _DropBadIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, name: str, give_up_after: int):
        super().__init__(parent)
        self.name = name
        self.give_up_after = give_up_after
        self.counts: dict[str, int] = {}
        self.good = 0
        self._logged: set[str] = set()

    def __next__(self):
        bad_run: list[BadSample] = []
        while True:
            element = next(self._parent)
            if not isinstance(element, BadSample):
                self.good += 1
                return element
            self.counts[element.kind] = self.counts.get(element.kind, 0) + 1
            if element.kind not in self._logged:
                self._logged.add(element.kind)
                log.warning("skipping bad data (%s): %s; later ones of this kind are only counted",
                            self.name, element.describe())
            if self.good == 0:
                bad_run.append(element)
                if len(bad_run) >= self.give_up_after:
                    sources = sorted({b.source for b in bad_run})
                    raise EmptyDatasetError(
                        f"dataset {self.name} yielded no usable example in its first {len(bad_run)} samples "
                        f"(all bad: {_summary(self.counts)}); sources: {', '.join(sources[:5])}; first: "
                        f"{bad_run[0].describe()}")

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), STATE_KEY: {"name": self.name, "counts": dict(self.counts)},
                "good": self.good}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self.counts = dict(state[STATE_KEY]["counts"])
        self.good = int(state["good"])

    def __str__(self) -> str:
        return f"DropBadIterator({self.name})"


def _summary(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def states_under(state: Any, key: str) -> Iterator[Any]:
    """Every value stored under ``key`` in a nested iterator state (dicts and lists of them): the
    counters each worker process and each mixed dataset keep in its own state."""
    if isinstance(state, Mapping):
        for k, value in state.items():
            if k == key:
                yield value
            else:
                yield from states_under(value, key)
    elif isinstance(state, (list, tuple)):
        for value in state:
            yield from states_under(value, key)


def bad_counts(state: Any) -> dict[str, dict[str, int]]:
    """Dataset name -> kind -> count, summed over every ``DropBad`` counter in a (nested) iterator
    state (one per worker process and per mixed dataset)."""
    total: dict[str, dict[str, int]] = {}
    for value in states_under(state, STATE_KEY):
        per_kind = total.setdefault(value["name"], {})
        for kind, n in value["counts"].items():
            per_kind[kind] = per_kind.get(kind, 0) + int(n)
    return total
