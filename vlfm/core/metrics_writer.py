"""Training logs: TensorBoard event files, a JSONL metrics file and a console line (host 0 only).

Every file goes through ``etils.epath``, the filesystem layer orbax's checkpoints use too, so a workdir
such as ``gs://bucket/run`` holds the metrics and event files next to the checkpoints (never in a local
folder named like the URL). Object stores cannot append: for remote workdirs ``metrics.jsonl`` is
rewritten whole at each write and event files are buffered and rewritten at each flush (as tensorboardX's
own GCS writer does); both stay small (one line / one record per logged step).
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from etils import epath
from tensorboardX import SummaryWriter
from tensorboardX import record_writer

log = logging.getLogger("vlfm")

REMOTE_SCHEMES = ("gs", "s3", "az", "hf")  # the URL schemes etils.epath handles


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


class _EpathRecordFile:
    """A TensorBoard event file written through epath: bytes buffered, the whole file rewritten on flush."""

    def __init__(self, path: str):
        self.path = epath.Path(path)
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        self.path.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EpathRecordFactory:
    """tensorboardX's hook for URL schemes (it would need google-cloud-storage / boto3 for gs:// / s3://)."""

    def open(self, path: str) -> _EpathRecordFile:
        return _EpathRecordFile(path)

    def directory_check(self, path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)


for _scheme in REMOTE_SCHEMES:
    record_writer.register_writer_factory(_scheme, _EpathRecordFactory())


def _scalar(v: Any) -> float | None:
    try:
        arr = np.asarray(v)
    except Exception:  # noqa: BLE001  (non-numeric values are simply not logged)
        return None
    return float(arr) if arr.size == 1 and arr.dtype.kind in "biuf" else None


class MetricWriter:
    """Writes scalars to ``workdir/metrics.jsonl`` and ``workdir/tensorboard``; no-op off host 0."""

    def __init__(self, workdir: str | os.PathLike, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if self.enabled:
            workdir = os.fspath(workdir)
            scheme = workdir.split("://")[0] if is_remote(workdir) else None
            if scheme is not None and scheme not in REMOTE_SCHEMES:
                raise ValueError(f"workdir {workdir!r}: unsupported URL scheme {scheme!r}; valid: a local path or "
                                 + ", ".join(f"{s}://" for s in REMOTE_SCHEMES))
            root = epath.Path(workdir)
            root.mkdir(parents=True, exist_ok=True)
            self._path = root / "metrics.jsonl"
            self._remote = scheme is not None
            if self._remote:  # no append on object stores: keep the content, rewrite it whole
                self._text = self._path.read_text() if self._path.exists() else ""
            else:
                self._jsonl = self._path.open("a")
            self._tb = SummaryWriter(os.fspath(root / "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        scalars = {k: s for k, v in metrics.items() if (s := _scalar(v)) is not None}
        if self.enabled and scalars:
            line = json.dumps({"step": int(step), **scalars}) + "\n"
            if self._remote:
                self._text += line
                self._path.write_text(self._text)
            else:
                self._jsonl.write(line)
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
