"""Training logs: TensorBoard event files, a JSONL metrics file and a console line (host 0 only)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

log = logging.getLogger("vlfm")


def _scalar(v: Any) -> float | None:
    try:
        arr = np.asarray(v)
    except Exception:  # noqa: BLE001  (non-numeric values are simply not logged)
        return None
    return float(arr) if arr.size == 1 and arr.dtype.kind in "biuf" else None


class MetricWriter:
    """Writes scalars to ``workdir/metrics.jsonl`` and ``workdir/tensorboard``; no-op off host 0."""

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        scalars = {k: s for k, v in metrics.items() if (s := _scalar(v)) is not None}
        if self.enabled and scalars:
            self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
            self._jsonl.flush()
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, int(step))
            self._tb.flush()
        return scalars

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
