"""Progress of a long evaluation (COCO 5k, ImageNet's 50,000 images) on stderr, per pass over a split.

``python -m vlfm.evaluate --progress MODE``: ``bar`` redraws one line in place (for a terminal), ``log``
writes a line every ``every`` seconds and at the end of each pass (for batch-job logs), ``off`` writes
nothing; ``auto`` (the default) is ``bar`` when stderr is a terminal and ``off`` otherwise. The report
watches the batches through ``vlfm.evaluators.predict.observe_batches``; it never changes them, so the
metrics are the same in every mode. Only process 0 reports.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

MODES = ("auto", "bar", "log", "off")


def resolve_mode(mode: str, stream: TextIO) -> str:
    """``auto`` -> ``bar`` on a terminal, else ``off``; other modes as given (an unknown one fails)."""
    if mode not in MODES:
        raise ValueError(f"unknown progress mode {mode!r}; valid: {', '.join(MODES)}")
    if mode == "auto":
        return "bar" if getattr(stream, "isatty", lambda: False)() else "off"
    return mode


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ProgressReport:
    """An observer for ``observe_batches`` that reports batches done / total, examples and examples/s of
    this host, and an ETA where the total is known. ``evaluator(name, i, n)`` labels the passes that
    follow (an evaluator may make several: prompts, then images)."""

    def __init__(self, mode: str = "log", stream: TextIO | None = None, every: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, width: int = 24):
        self.stream = sys.stderr if stream is None else stream
        self.mode = resolve_mode(mode, self.stream)
        self.every, self.clock, self.width = float(every), clock, width
        self.label = "eval"
        self._pass_start = self._last_seen = self._last_line = clock()
        self._open_line = False  # a bar line not yet ended with a newline

    @contextlib.contextmanager
    def evaluator(self, name: str, position: int, count: int) -> Iterator[None]:
        self.label = f"eval {name} ({position}/{count})"
        self._pass_start = self._last_seen = self._last_line = self.clock()
        try:
            yield
        finally:
            self._end_line()

    def _end_line(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False

    def line(self, done: int, total: int | None, rows: int, now: float) -> str:
        """The report for a pass at ``done`` batches of ``total`` (None: unknown) with ``rows`` examples."""
        elapsed = max(now - self._pass_start, 1e-9)
        parts = [f"{done}/{total} batches" if total else f"{done} batches", f"{rows:,} examples",
                 f"{rows / elapsed:,.1f} examples/s"]
        if total:
            left = max(total - done, 0) * elapsed / done
            parts.append(f"{_duration(elapsed)} elapsed, ETA {_duration(left)}" if done < total
                         else f"{_duration(elapsed)}")
        else:
            parts.append(_duration(elapsed))
        text = ", ".join(parts)
        if self.mode == "bar" and total:
            filled = min(self.width, self.width * done // total)
            text = f"[{'#' * filled}{'.' * (self.width - filled)}] {text}"
        return f"{self.label}: {text}"

    def __call__(self, done: int, total: int | None, rows: int) -> None:
        if self.mode == "off":
            return
        now = self.clock()
        if done == 1:  # a new pass: it began when the previous one ended (or the evaluator started)
            self._end_line()
            self._pass_start = self._last_seen
        self._last_seen = now
        finished = total is not None and done >= total
        if self.mode == "bar":
            self.stream.write("\r" + self.line(done, total, rows, now) + "\x1b[K")  # K: clear the rest
            self._open_line = True
            if finished:
                self._end_line()
            else:
                self.stream.flush()
        elif finished or done == 1 or now - self._last_line >= self.every:
            self.stream.write(self.line(done, total, rows, now) + "\n")
            self.stream.flush()
            self._last_line = now
