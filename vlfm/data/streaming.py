"""Resumable streaming over sharded files (tar shards, text files): URL lists, opening, host/worker split.

``ShardedStream`` is a grain ``IterDataset`` source. Every epoch it shuffles the shard list with the
seed (the same order on every reader), and reader ``r`` of ``R = hosts x workers`` takes shards
``r, r+R, ...``; with fewer shards than readers every reader reads all shards and keeps every R-th
record. ``cycle_length`` shards are read at once, one record from each in turn. The iterator state is
small and JSON-able: the epoch, the next shard, and for each open shard a resume token given by the
format's reader (a byte offset where the file can seek, else a record count), so a restore seeks
instead of re-reading. grain's ``mp_prefetch`` tells the source its worker index through
``set_slice``, which is why the worker count is part of the resumable state.

A format is a *reader*: ``reader(url, resume_token | None)`` yields ``(record, token)`` pairs, where
``token`` resumes right after ``record``; on a broken shard it yields a ``BadSample`` and stops.
"""

from __future__ import annotations

import collections
import glob
import io
import itertools
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import grain
import numpy as np

from vlfm.data.bad_data import BadSample, EmptyDatasetError

Reader = Callable[[str, "dict | None"], Iterator[tuple[Any, dict]]]

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar, a-001.tar, a-002.tar (zero padding kept); ``{x,y}`` -> alternatives."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    numeric = _RANGE.match(body)
    if numeric:
        lo, hi = numeric.group(1), numeric.group(2)
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        step = 1 if int(hi) >= int(lo) else -1
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    else:
        options = body.split(",")
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [expanded for option in options for expanded in expand_braces(head + option + tail)]


def expand_urls(spec: str | Sequence[str]) -> list[str]:
    """Shard URLs from brace patterns, local globs, ``::``-joined lists or a list of these, in order."""
    specs = spec.split("::") if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in specs:
        for url in expand_braces(item):
            if _is_local(url) and any(c in url for c in "*?["):
                urls.extend(sorted(glob.glob(url)))
            else:
                urls.append(url)
    return urls


def _is_local(url: str) -> bool:
    return not url.startswith("pipe:") and ("://" not in url or url.startswith("file://"))


def _local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


class PipeCommandError(OSError):
    """A ``pipe:`` command failed or wrote nothing; the message names the URL, the exit code and the last
    lines the command wrote to stderr (a failing download is otherwise invisible)."""


STDERR_LINES = 20        # last stderr lines of a ``pipe:`` command kept for its error
_STDERR_LINE_CHARS = 500  # each cut to this length, so a command cannot fill memory


class _PipeReader(io.RawIOBase):
    """The stdout of a ``pipe:`` shell command as a binary file. At the end of its output, a command that
    exited non-zero or wrote nothing raises ``PipeCommandError`` with its last stderr lines."""

    def __init__(self, command: str):
        super().__init__()
        self.command = command
        self._size = 0
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Drained in a thread: a command that writes much to stderr must not block on a full pipe.
        self._drain = threading.Thread(target=self._keep_stderr, name="vlfm-pipe-stderr", daemon=True)
        self._drain.start()

    def _keep_stderr(self) -> None:
        for line in iter(lambda: self._proc.stderr.readline(_STDERR_LINE_CHARS), b""):
            line = line.decode("utf-8", "replace").rstrip()
            if line:
                self._stderr.append(line)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._proc.stdout.readinto(buffer)
        if n:
            self._size += n
            return n
        code = self._proc.wait()
        self._drain.join(timeout=5)
        if code != 0 or self._size == 0:
            raise PipeCommandError(self._failure(code))
        return 0

    def _failure(self, code: int) -> str:
        what = (f"was killed by signal {-code}" if code < 0 else f"exited with code {code}") if code else \
            "exited with code 0 but wrote nothing"
        lines = list(self._stderr)
        tail = (f"; stderr (last {len(lines)} lines): " + " | ".join(lines)) if lines else "; no stderr output"
        return f"pipe:{self.command} {what}{tail}"

    def close(self) -> None:
        if not self.closed:
            self._proc.stdout.close()
            self._proc.kill()
            self._proc.wait()
            self._drain.join(timeout=5)
            self._proc.stderr.close()
        super().close()


def open_url(url: str) -> BinaryIO:
    """A readable binary stream: local path, ``file://``, any fsspec URL (gs://, s3://, https://) or
    ``pipe:COMMAND`` (e.g. ``pipe:curl -s URL``, ``pipe:gsutil cat URL``; reading past the end of a
    command that failed raises ``PipeCommandError`` naming the URL, exit code and stderr lines)."""
    if url.startswith("pipe:"):
        return io.BufferedReader(_PipeReader(url[len("pipe:"):]), buffer_size=1 << 20)
    if _is_local(url):
        return open(_local_path(url), "rb", buffering=1 << 20)
    import fsspec  # only for remote URLs

    return fsspec.open(url, "rb").open()


def check_urls(urls: Sequence[str], what: str) -> None:
    """Fails early, naming the pattern, when no URL was given or none of the local files exists."""
    if not urls:
        raise EmptyDatasetError(f"{what}: the shard pattern matched no files")
    local = [u for u in urls if _is_local(u)]
    if local and len(local) == len(urls) and not any(os.path.exists(_local_path(u)) for u in local):
        shown = ", ".join(local[:3]) + (", ..." if len(local) > 3 else "")
        raise EmptyDatasetError(f"{what}: none of the {len(local)} files exists ({shown})")


class ShardedStream(grain.IterDataset):
    """Endless (or ``num_epochs``) stream of records from shards, split over hosts and workers.

    Args:
      urls: shard URLs (see ``expand_urls``).
      reader: the format's reader (module-level function or ``functools.partial`` of one, so it pickles).
      name: the dataset name, for errors.
      seed: shuffles the shard order, differently in each epoch.
      shuffle: shuffle the shard order (else the given order every epoch).
      process_index, process_count: this host and the number of hosts.
      num_epochs: None for endless.
      cycle_length: shards read at once, interleaved record by record.
    """

    def __init__(self, urls: Sequence[str], reader: Reader, *, name: str, seed: int = 0, shuffle: bool = True,
                 process_index: int = 0, process_count: int = 1, num_epochs: int | None = None,
                 cycle_length: int = 1):
        super().__init__()
        if not urls:
            raise EmptyDatasetError(f"{name}: no shards")
        if cycle_length < 1:
            raise ValueError(f"cycle_length must be >= 1, got {cycle_length}")
        self.urls = list(urls)
        self.reader = reader
        self.name = name
        self.seed = seed
        self.shuffle = shuffle
        self.process_index = process_index
        self.process_count = process_count
        self.num_epochs = num_epochs
        self.cycle_length = cycle_length
        self.worker_index, self.worker_count = 0, 1

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Called by grain's ``mp_prefetch`` in each worker process with ``slice(worker, None, workers)``."""
        del sequential_slice
        self.worker_index, self.worker_count = sl.start or 0, sl.step or 1

    def __iter__(self) -> grain.DatasetIterator:
        return _ShardedStreamIterator(self)

    def __str__(self) -> str:
        return f"ShardedStream({self.name}, {len(self.urls)} shards)"


class _ShardedStreamIterator(grain.DatasetIterator):
    def __init__(self, ds: ShardedStream):
        super().__init__()
        self.ds = ds
        self.num_readers = ds.process_count * ds.worker_count
        self.reader_index = ds.process_index * ds.worker_count + ds.worker_index
        self.split_by_shard = len(ds.urls) >= self.num_readers
        self.epoch = 0
        self.position = 0      # next shard of this reader's list in ``epoch``
        self.slots: list[dict] = []  # open shards: {"shard", "token", "produced"}
        self.turn = 0
        self.counter = 0       # records seen (for the record-level split)
        self.empty_streak: list[int] = []  # consecutive closed shards that produced no record
        self._problems: dict[int, str] = {}  # shard -> its first bad-data marker, for the error (not state)
        self._gens: list[Iterator | None] = []

    # --- shard schedule -------------------------------------------------

    def _epoch_shards(self, epoch: int) -> list[int]:
        n = len(self.ds.urls)
        order = np.random.default_rng([self.ds.seed, epoch]).permutation(n) if self.ds.shuffle else np.arange(n)
        if self.split_by_shard:
            order = order[self.reader_index::self.num_readers]
        return [int(i) for i in order]

    def _next_shard(self) -> int | None:
        while True:
            if self.ds.num_epochs is not None and self.epoch >= self.ds.num_epochs:
                return None
            shards = self._epoch_shards(self.epoch)
            if self.position < len(shards):
                self.position += 1
                return shards[self.position - 1]
            self.epoch, self.position = self.epoch + 1, 0

    def _fill(self) -> None:
        while len(self.slots) < self.ds.cycle_length:
            shard = self._next_shard()
            if shard is None:
                return
            self.slots.append({"shard": shard, "token": None, "produced": False})
            self._gens.append(None)

    def _close_slot(self, i: int) -> None:
        slot = self.slots.pop(i)
        gen = self._gens.pop(i)
        if gen is not None:
            gen.close()
        if slot["produced"]:
            self.empty_streak = []
            self._problems.clear()
        else:
            # Only when every shard of the dataset came up empty in a row is the dataset empty: a reader
            # whose shards in one epoch all happen to be broken just moves on.
            self.empty_streak.append(slot["shard"])
            if len(set(self.empty_streak)) == len(self.ds.urls):
                paths = sorted({self.ds.urls[s] for s in self.empty_streak})
                shown = ", ".join(paths[:5]) + (", ..." if len(paths) > 5 else "")
                problems = [self._problems[s] for s in self.empty_streak if s in self._problems]
                why = f"; first problem: {problems[0]}" if problems else ""
                raise EmptyDatasetError(f"dataset {self.ds.name}: no shard yielded any record ({shown}){why}")
        if self.turn >= len(self.slots):
            self.turn = 0

    # --- iteration ------------------------------------------------------

    def __next__(self):
        while True:
            self._fill()
            if not self.slots:
                raise StopIteration
            i = self.turn
            if self._gens[i] is None:
                slot = self.slots[i]
                self._gens[i] = iter(self.ds.reader(self.ds.urls[slot["shard"]], slot["token"]))
            try:
                record, token = next(self._gens[i])
            except StopIteration:
                self._close_slot(i)
                continue
            slot = self.slots[i]
            slot["token"] = token
            if not isinstance(record, BadSample):
                slot["produced"] = True
            elif not slot["produced"]:
                self._problems.setdefault(slot["shard"], record.describe())
            self.turn = (i + 1) % len(self.slots)
            keep = self.split_by_shard or self.counter % self.num_readers == self.reader_index
            self.counter += 1
            if keep:
                return record

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "turn": self.turn, "counter": self.counter,
                "slots": [dict(s) for s in self.slots], "empty_streak": list(self.empty_streak),
                "readers": [self.reader_index, self.num_readers]}

    def set_state(self, state: dict) -> None:
        # A worker that had not yet delivered anything when the checkpoint was taken is saved with the
        # initial state grain computed in the main process (unsliced: reader 0 of 1); it starts afresh.
        untouched = not state["slots"] and state["counter"] == state["epoch"] == state["position"] == 0
        if list(state["readers"]) != [self.reader_index, self.num_readers] and not untouched:
            raise ValueError(f"{self.ds.name}: the saved stream state is reader {state['readers'][0]} of "
                             f"{state['readers'][1]}, this is reader {self.reader_index} of {self.num_readers}; "
                             "resume with the same number of hosts and workers")
        for gen in self._gens:
            if gen is not None:
                gen.close()
        self.epoch, self.position, self.turn = state["epoch"], state["position"], state["turn"]
        self.counter = state["counter"]
        self.slots = [dict(s) for s in state["slots"]]
        self.empty_streak = list(state["empty_streak"])
        self._gens = [None] * len(self.slots)

    def close(self) -> None:
        for gen in self._gens:
            if gen is not None:
                gen.close()
        self._gens = [None] * len(self.slots)
        super().close()

    def __str__(self) -> str:
        return f"ShardedStreamIterator({self.ds.name})"


def urls_for_split(spec: str | Sequence[str] | Mapping[str, Any], split: str, what: str) -> list[str]:
    """The expanded URLs of ``split``: ``spec`` is one pattern / list for every split, or a mapping
    split -> pattern (a missing split names the configured ones)."""
    if isinstance(spec, Mapping):
        if split not in spec:
            raise KeyError(f"no {what} for split {split!r}; configured splits: {', '.join(spec)}")
        spec = spec[split]
    return expand_urls(spec)


def shuffled_shard_stream(reader: Callable, *, urls: list[str], name: str, cycle_length: int, shuffle_buffer: int,
                          seed: int, process_index: int, process_count: int, num_epochs: int | None,
                          shuffle: bool) -> grain.IterDataset:
    """``ShardedStream`` over ``urls`` read by ``reader``, interleaving ``cycle_length`` shards and
    shuffling in a window of ``shuffle_buffer`` records when ``shuffle`` (training)."""
    ds: grain.IterDataset = ShardedStream(urls, reader, name=name, seed=seed, shuffle=shuffle,
                                          process_index=process_index, process_count=process_count,
                                          num_epochs=num_epochs, cycle_length=cycle_length if shuffle else 1)
    if shuffle and shuffle_buffer > 1:
        ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=shuffle_buffer, seed=seed)
    return ds


def take(ds: grain.IterDataset, n: int) -> list:
    """The first ``n`` elements of a dataset (fewer if it ends)."""
    return list(itertools.islice(iter(ds), n))
