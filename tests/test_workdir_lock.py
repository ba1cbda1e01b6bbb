"""One run per workdir (vlfm.core.workdir_lock): a second run refuses at once naming the holder, the
holder is untouched, and a killed holder (SIGKILL) leaves no stale lock.

Local workdirs hold an ``flock``; remote ones (``gs://``) a lease with a heartbeat. The lease logic is
exercised here on a local path through the same ``epath`` calls it makes on a bucket, with an injected
clock; no test reaches a real bucket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.helpers import REPO, SMALL_CLIP, run_trainer, trainer_env
from vlfm.core.workdir_lock import LEASE_FILE, LOCK_FILE, LeaseLock, LocalLock, WorkdirInUseError, lock_workdir

HOLDER = """
import sys, time
from vlfm.core.workdir_lock import lock_workdir
lock = lock_workdir(sys.argv[1])
print("locked", flush=True)
time.sleep(300)
"""


def test_a_second_trainer_refuses_at_once_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text('{"step": 1}\n')  # what the holder has written so far
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], cwd=REPO, env=trainer_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        lock_before = (workdir / LOCK_FILE).read_text()
        out = run_trainer(["--config", "configs/clip_tiny.py", *SMALL_CLIP, "--workdir", str(workdir),
                           "--config.total_steps=2"], timeout=120)
        assert out.returncode == 5, (out.stdout + out.stderr)[-3000:]
        last = (out.stdout + out.stderr).strip().splitlines()[-1]
        assert f"workdir {workdir} is in use by another run" in last
        assert f"host {socket.gethostname()}, pid {holder.pid}, started " in last
        # The holder is untouched: still running, still named in its lock file, its workdir as it left it.
        assert holder.poll() is None
        assert (workdir / LOCK_FILE).read_text() == lock_before
        assert sorted(p.name for p in workdir.iterdir()) == ["metrics.jsonl", LOCK_FILE]
        assert (workdir / "metrics.jsonl").read_text() == '{"step": 1}\n'
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    lock = lock_workdir(workdir)  # the kernel dropped the killed holder's lock: a new run starts at once
    try:
        assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        lock.release()


def test_local_lock_is_exclusive_until_released(tmp_path):
    first = LocalLock(tmp_path)
    first.acquire()
    with pytest.raises(WorkdirInUseError, match=f"pid {os.getpid()}, started "):
        LocalLock(tmp_path).acquire()  # flock conflicts between two opens, even in one process
    first.release()
    second = LocalLock(tmp_path)
    second.acquire()
    second.release()


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def lease(workdir, clock, **kw):
    return LeaseLock(workdir, ttl=60, heartbeat=None, settle=1, clock=clock, sleep=clock.sleep, **kw)


def write_foreign_lease(workdir, *, host, pid, heartbeat, expires, token="theirs"):
    (workdir / LEASE_FILE).write_text(json.dumps({"host": host, "pid": pid, "started": heartbeat,
                                                  "started_utc": "then", "token": token,
                                                  "heartbeat": heartbeat, "expires": expires}))


def test_lease_with_a_recent_heartbeat_refuses_naming_the_holder(tmp_path):
    clock = FakeClock()
    holder = lease(tmp_path, clock)
    holder.acquire()  # writes its heartbeat, then waits 1 s (settle) before reading it back
    clock.t += 5
    with pytest.raises(WorkdirInUseError, match=r"pid \d+, started .*last heartbeat was 6 s ago"):
        lease(tmp_path, clock).acquire()
    assert holder.renew() and not holder.lost
    holder.release()
    assert not (tmp_path / LEASE_FILE).exists()


def test_a_silent_lease_is_waited_out_then_taken_over(tmp_path):
    clock = FakeClock()
    # Another host's run whose heartbeat stopped 30 s ago (more than 2 heartbeats of 10 s); 30 s left.
    write_foreign_lease(tmp_path, host="elsewhere", pid=1, heartbeat=clock.t - 30, expires=clock.t + 30)
    taker = lease(tmp_path, clock)
    taker.acquire()
    assert clock.slept == [30, 1]  # waited for the expiry, then the settle read-back
    assert json.loads((tmp_path / LEASE_FILE).read_text())["pid"] == os.getpid()
    taker.release()


def test_a_lease_of_a_dead_process_on_this_host_is_taken_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    clock = FakeClock()
    write_foreign_lease(tmp_path, host=socket.gethostname(), pid=dead.pid, heartbeat=clock.t, expires=clock.t + 60)
    taker = lease(tmp_path, clock)
    taker.acquire()
    assert clock.slept == [1]
    taker.release()


def test_of_two_runs_starting_together_only_the_last_writer_keeps_the_lease(tmp_path):
    clock = FakeClock()
    other = lease(tmp_path, FakeClock(clock.t))

    def sleep_while_the_other_writes(seconds):
        other._token, other._record = "other", {"host": "elsewhere", "pid": 7, "started_utc": "now"}
        other._write()  # its write lands during our settle pause
        clock.sleep(seconds)

    first = LeaseLock(tmp_path, ttl=60, heartbeat=None, settle=1, clock=clock, sleep=sleep_while_the_other_writes)
    with pytest.raises(WorkdirInUseError, match="taken by another run starting at the same time: host elsewhere"):
        first.acquire()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["token"] == "other"


def test_a_lease_taken_over_is_noticed_at_the_next_heartbeat(tmp_path):
    clock = FakeClock()
    holder = lease(tmp_path, clock)
    holder.acquire()
    write_foreign_lease(tmp_path, host="elsewhere", pid=1, heartbeat=clock.t, expires=clock.t + 60)
    assert not holder.renew() and holder.lost
    holder.release()  # leaves the other run's lease alone
    assert json.loads((tmp_path / LEASE_FILE).read_text())["token"] == "theirs"


def test_the_heartbeat_thread_renews_the_lease(tmp_path):
    import time

    holder = LeaseLock(tmp_path, ttl=0.6, heartbeat=0.05, settle=0)
    holder.acquire()
    first = json.loads((tmp_path / LEASE_FILE).read_text())["heartbeat"]
    time.sleep(0.3)
    assert json.loads((tmp_path / LEASE_FILE).read_text())["heartbeat"] > first
    with pytest.raises(WorkdirInUseError):  # a reader with a 10 s heartbeat: a contended machine cannot flake it
        LeaseLock(tmp_path, ttl=60, heartbeat=None, settle=0).acquire()
    holder.release()
    assert not (tmp_path / LEASE_FILE).exists()


def test_a_gs_workdir_gets_a_lease_in_the_bucket(monkeypatch, tmp_path):
    """The ``gs://`` path end to end through epath, the bucket faked by fsspec's in-memory filesystem."""
    from etils import epath
    from etils.epath import backend as epath_backend
    from etils.epath import gpath
    from fsspec.implementations.memory import MemoryFileSystem

    fs = MemoryFileSystem()
    monkeypatch.setattr(fs, "store", {})
    monkeypatch.setattr(fs, "pseudo_dirs", [""])
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    monkeypatch.setattr(epath_backend.fsspec_backend, "_get_filesystem", lambda name: fs)
    monkeypatch.chdir(tmp_path)  # a local folder named like the URL would appear here
    lease_file = epath.Path("gs://bucket/run") / LEASE_FILE
    holder = lock_workdir("gs://bucket/run")
    try:
        assert isinstance(holder, LeaseLock) and [k for k in fs.store if k.endswith(LEASE_FILE)]  # in the bucket
        record = json.loads(lease_file.read_text())
        assert record["pid"] == os.getpid() and record["expires"] > record["heartbeat"]
        with pytest.raises(WorkdirInUseError, match=f"workdir gs://bucket/run is in use by another run: host "
                                                    f"{socket.gethostname()}, pid {os.getpid()}"):
            lock_workdir("gs://bucket/run")
    finally:
        holder.release()
    assert not lease_file.exists() and os.listdir(tmp_path) == []
