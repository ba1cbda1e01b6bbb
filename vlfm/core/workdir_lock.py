"""One run per workdir: a second run on a workdir in use refuses at once, naming the run that holds it.

Two runs on one workdir (a resubmitted job, a double start) append to the same ``metrics.jsonl`` and
write the same checkpoint steps; orbax then fails in one of them or hangs. So a run holds the workdir
for its whole lifetime:

- a local (or NFS) workdir: an exclusive ``flock`` on ``WORKDIR/run.lock``, held by an open file
  descriptor. The kernel drops it when the process dies, however it dies (SIGKILL included), so a
  killed run never leaves a stale lock. The file holds the holder's host, pid and start time, for
  the message of the run that is refused.
- a remote workdir (``gs://...``; object stores have no locks): a lease, ``WORKDIR/run.lease``,
  holding the holder's host, pid, start time, a random token and an expiry. The holder renews it
  every ``heartbeat`` seconds (15 s; a daemon thread); a lease expires ``ttl`` seconds (90 s) after
  its last renewal. A run that finds a lease renewed within two heartbeats (30 s) refuses at once;
  one whose heartbeat has stopped (the holder was killed) is waited out until it expires (at most
  90 s after the holder's last heartbeat), then taken over; on the holder's own host a holder pid
  that no longer exists is taken over at once. After writing its lease a run reads it back
  ``settle`` seconds (2 s) later: of two runs starting together only the one whose write landed last
  keeps it. This is best effort, not a compare-and-swap: two runs whose read-to-write gaps overlap by
  more than ``settle`` could both start. A holder that finds its lease taken over (it was frozen for
  longer than ``ttl``) logs an error and is not stopped.

Multi-host runs: process 0 alone takes the lock; the trainer tells the others its outcome.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from etils import epath

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
LEASE_FILE = "run.lease"


class WorkdirInUseError(RuntimeError):
    """Another run holds the workdir."""


def _now_text(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _holder_record(clock: Callable[[], float]) -> dict[str, Any]:
    now = clock()
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "started_utc": _now_text(now)}


def _pid_gone(record: dict[str, Any]) -> bool:
    """Whether ``record``'s process ran on this host and no longer exists."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, another user's
        return False
    return False


def describe_holder(record: dict[str, Any] | None) -> str:
    """``host H, pid P, started T`` (what a refused run prints)."""
    if not record:
        return "another process (it has not written its host and pid yet)"
    return f"host {record.get('host')}, pid {record.get('pid')}, started {record.get('started_utc')}"


class LocalLock:
    """An exclusive ``flock`` on ``WORKDIR/run.lock`` for the lifetime of the process (module docstring)."""

    def __init__(self, workdir: str | os.PathLike, clock: Callable[[], float] = time.time):
        self.path = os.path.join(os.fspath(workdir), LOCK_FILE)
        self._clock = clock
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            try:
                record = self._read(fd)
            finally:
                os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OSError(e.errno, f"cannot lock workdir {os.path.dirname(self.path)} ({e.strerror}); its "
                                       f"filesystem may not support flock", self.path) from e
            note = ""
            if record and _pid_gone(record):
                note = " (that process is gone, but a process it started still holds the lock: stop it first)"
            raise WorkdirInUseError(f"workdir {os.path.dirname(self.path)} is in use by another run: "
                                    f"{describe_holder(record)}{note}; lock file {self.path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder_record(self._clock)).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    @staticmethod
    def _read(fd: int) -> dict[str, Any] | None:
        try:
            return json.loads(os.pread(fd, 4096, 0).decode() or "null")
        except ValueError:
            return None

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


class LeaseLock:
    """A lease file with a heartbeat and an expiry, for workdirs without locks (module docstring).

    ``clock`` and ``sleep`` are injectable (tests); ``heartbeat=None`` starts no renewing thread (the
    caller calls ``renew``).
    """

    def __init__(self, workdir: str | os.PathLike, *, ttl: float = 90.0, heartbeat: float | None = 15.0,
                 settle: float = 2.0, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        interval = heartbeat if heartbeat is not None else ttl / 6
        if not 0 < 3 * interval <= ttl:
            raise ValueError(f"lease ttl {ttl} s must be at least 3 heartbeats ({interval} s)")
        self.path = epath.Path(workdir) / LEASE_FILE
        self.ttl, self.heartbeat, self.settle = ttl, heartbeat, settle
        self._interval = interval
        self._clock, self._sleep = clock, sleep
        self._token: str | None = None
        self._record: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False  # set when another run took the lease over (renewal found a foreign token)

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # a torn or foreign file: treat as no lease
            return None

    def _write(self) -> None:
        now = self._clock()
        self.path.write_text(json.dumps({**self._record, "token": self._token, "heartbeat": now,
                                         "expires": now + self.ttl}))

    def acquire(self) -> None:
        while True:
            current = self._read()
            now = self._clock()
            if not current or current.get("expires", 0) <= now or _pid_gone(current):
                break
            silent = now - current.get("heartbeat", 0)
            if silent <= 2 * self._interval:
                raise WorkdirInUseError(
                    f"workdir {self.path.parent} is in use by another run: {describe_holder(current)}; its last "
                    f"heartbeat was {silent:.0f} s ago and its lease ends in {current['expires'] - now:.0f} s "
                    f"unless renewed; lease file {self.path}")
            wait = current["expires"] - now
            log.warning("workdir %s: the run holding it (%s) sent no heartbeat for %.0f s; waiting %.0f s for its "
                        "lease to expire", self.path.parent, describe_holder(current), silent, wait)
            self._sleep(wait)
        self._token = uuid.uuid4().hex
        self._record = _holder_record(self._clock)
        self._write()
        self._sleep(self.settle)  # a run that wrote at the same moment: the last write wins, the other leaves
        current = self._read()
        if not current or current.get("token") != self._token:
            self._token = None
            raise WorkdirInUseError(f"workdir {self.path.parent} was taken by another run starting at the same "
                                    f"time: {describe_holder(current)}; lease file {self.path}")
        if self.heartbeat is not None:
            self._thread = threading.Thread(target=self._beat, name="workdir-lease", daemon=True)
            self._thread.start()

    def renew(self) -> bool:
        """Extends the lease; False (and ``lost``) when another run's lease replaced it."""
        current = self._read()
        if not current or current.get("token") != self._token:
            if not self.lost:
                log.error("workdir %s: this run's lease was taken over by %s (this run missed its heartbeats for "
                          "longer than %.0f s); two runs may now write this workdir", self.path.parent,
                          describe_holder(current), self.ttl)
            self.lost = True
            return False
        self._write()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self.renew():
                    return
            except OSError as e:  # a transient storage error: the next heartbeat retries within the ttl
                log.warning("workdir %s: renewing the lease failed (%s); retrying", self.path.parent, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._token is None:
            return
        current = self._read()
        if current and current.get("token") == self._token:
            self.path.unlink(missing_ok=True)
        self._token = None


def is_remote(workdir: str | os.PathLike) -> bool:
    return "://" in os.fspath(workdir)


def lock_workdir(workdir: str | os.PathLike) -> LocalLock | LeaseLock:
    """Takes ``workdir`` for this process (a flock locally, a lease on ``gs://``...); raises
    ``WorkdirInUseError`` naming the holder. Call ``release()`` when the run ends."""
    lock: LocalLock | LeaseLock = LeaseLock(workdir) if is_remote(workdir) else LocalLock(workdir)
    lock.acquire()
    return lock
