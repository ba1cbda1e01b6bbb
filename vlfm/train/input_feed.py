"""The train loop's input side: batches for each step, and how long the loop waited for them.

``DataWait`` sums, per logged interval, the seconds the loop spent getting the next batches (the host
iterator's ``next`` and the transfer to the devices) and reports them next to the interval's wall time:
``data_wait_s`` (seconds per step) and ``data_wait_fraction`` (share of the interval). A fraction near 1
means the devices waited for the input pipeline (an input-bound run); the trainer warns once when it
passes ``INPUT_BOUND_FRACTION``.
"""

from __future__ import annotations

import logging

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
                        "data.num_workers or make preprocessing cheaper",
                        100 * fraction, self.seconds / steps)
        return {"data_wait_s": self.seconds / steps, "data_wait_fraction": fraction}
