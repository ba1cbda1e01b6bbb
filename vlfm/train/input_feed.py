"""The train loop's input side: batches for each step, put on the devices ahead, and how long the loop
waited for them.

``InputFeed`` gives the loop each step's global batches. With ``prefetch > 0`` it keeps that many
future steps' batches already transferred (``jax.device_put`` is asynchronous), topped up right after the
step is dispatched, so the host pipeline and the transfer run while the devices compute (as
``flax.jax_utils.prefetch_to_device``). The schedule is a pure function of the step, so the batches of
future steps are known. Batches fetched ahead are not yet consumed: the feed records the iterators'
state after each step's batches and checkpoints the state as of the last *consumed* step, so a resumed
run reads the prefetched-but-unused batches again (exact resume; restoring the live state would skip
them).

``DataWait`` sums, per logged interval, the seconds the loop spent getting the next batches (the host
iterator's ``next`` and the transfer to the devices) and reports them next to the interval's wall time:
``data_wait_s`` (seconds per step) and ``data_wait_fraction`` (share of the interval). A fraction near 1
means the devices waited for the input pipeline (an input-bound run); the trainer warns once when it
passes ``INPUT_BOUND_FRACTION``.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from vlfm.data.pipeline import pipeline_stats

log = logging.getLogger("vlfm")

INPUT_BOUND_FRACTION = 0.5  # above this share of the step time spent getting data, a run is input-bound


class DataWait:
    """Seconds spent getting batches, per logged interval; warns once when a run looks input-bound."""

    def __init__(self, threshold: float = INPUT_BOUND_FRACTION):
        self.threshold = threshold
        self.seconds = 0.0
        self.warned = False

    def add(self, seconds: float) -> None:
        self.seconds += seconds

    def reset(self) -> None:
        """Starts a new interval (after a log line, or after an evaluation that paused training)."""
        self.seconds = 0.0

    def report(self, steps: int, elapsed: float) -> dict[str, float]:
        """``data_wait_s`` per step and ``data_wait_fraction`` of ``elapsed`` for the ``steps`` of the interval."""
        if steps <= 0 or elapsed <= 0:
            return {}
        fraction = min(self.seconds / elapsed, 1.0)
        if fraction > self.threshold and not self.warned:
            self.warned = True
            log.warning("input-bound: %.0f%% of the step time was spent waiting for data (%.3g s per step); raise "
                        "data.num_workers, keep data.prefetch_to_device on, or make preprocessing cheaper",
                        100 * fraction, self.seconds / steps)
        return {"data_wait_s": self.seconds / steps, "data_wait_fraction": fraction}


class InputFeed:
    """Each step's batches (see the module docstring); a checkpointable stand-in for the iterators."""

    def __init__(self, iterators: Any, tasks_at: Callable[[int], tuple[str, ...]],
                 put: Callable[[str, Mapping[str, Any]], dict], *, start_step: int, total_steps: int,
                 prefetch: int = 2):
        if prefetch < 0:
            raise ValueError(f"data.prefetch_to_device must be >= 0 (0 = off), got {prefetch}")
        self.iterators, self.tasks_at, self.put = iterators, tasks_at, put
        self.prefetch, self.total_steps = int(prefetch), int(total_steps)
        self.wait = DataWait()
        self._ahead: collections.deque = collections.deque()  # (step, batches, iterator state after them)
        self._next_step = int(start_step)
        self._consumed_state: bytes | None = None  # None: nothing fetched ahead, the live state is exact

    def _fetch(self) -> None:
        step = self._next_step
        batches = {name: self.put(name, self.iterators.next(name)) for name in self.tasks_at(step)}
        state = self.iterators.get_state() if self.prefetch else None
        self._ahead.append((step, batches, state))
        self._next_step += 1

    def batches(self, step: int) -> dict[str, dict]:
        """The global batches of ``step`` (``{task: batch}``), fetched now unless already ahead."""
        start = time.perf_counter()
        if not self._ahead:
            self._fetch()
        fetched, batches, state = self._ahead.popleft()
        if fetched != step:
            raise RuntimeError(f"input feed is at step {fetched}, the loop asked for step {step}")
        self._consumed_state = state
        self.wait.add(time.perf_counter() - start)
        return batches

    def fill(self) -> None:
        """Fetches ahead up to ``prefetch`` steps (never past the last step); call it after dispatching a step."""
        start = time.perf_counter()
        while len(self._ahead) < self.prefetch and self._next_step < self.total_steps:
            self._fetch()
        self.wait.add(time.perf_counter() - start)

    def get_state(self) -> bytes:
        """The iterators' state as of the last consumed step (what a checkpoint must hold)."""
        return self._consumed_state if self._consumed_state is not None else self.iterators.get_state()

    def set_state(self, state: bytes) -> None:
        raise RuntimeError("restore the data iterators before building the input feed, not the feed itself")

    def stats(self) -> dict[str, dict[str, float]]:
        """Each task's data counters (``data/bad/...``, mixing) as of the last consumed step."""
        if self._consumed_state is None:
            return {name: it.stats() for name, it in self.iterators.iterators.items()}
        states = json.loads(self._consumed_state)
        return {name: pipeline_stats(states[name]["pipeline"]) if "pipeline" in states[name] else it.stats()
                for name, it in self.iterators.iterators.items()}
