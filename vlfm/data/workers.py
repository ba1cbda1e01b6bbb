"""Data worker processes die with the process that started them.

grain's ``mp_prefetch`` workers are spawned processes. When the trainer is killed with SIGKILL (a
preemption, an out-of-memory kill) nothing tells them: they would keep their memory and their shared
memory segments, reparented to init, for ever. Each worker therefore runs ``die_with_parent`` at start:
a daemon thread that watches the parent pid and ends the worker as soon as the parent is gone. When the
last worker has ended, the multiprocessing resource tracker sees its pipe close, unlinks the shared
memory segments left registered with it and exits, so a restarted run finds nothing of the old one.

Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) is not used: it fires when the *thread* that
created the child ends, and grain starts its workers from its own short-lived threads, so it would kill
healthy workers in the middle of a run. Polling the parent pid works on every POSIX system and reacts
within ``poll_s``.
"""

from __future__ import annotations

import os
import threading
import time

POLL_S = 0.25  # how often a worker checks that its parent is alive


def die_with_parent(parent_pid: int, worker_index: int = 0, num_workers: int = 1, *, poll_s: float = POLL_S) -> None:
    """Called in a worker process: end this process as soon as ``parent_pid`` is no longer its parent.

    Takes ``(worker_index, num_workers)`` after ``parent_pid`` so that
    ``functools.partial(die_with_parent, os.getpid())`` is a grain ``worker_init_fn``.
    """
    del worker_index, num_workers
    if os.getppid() != parent_pid:  # the parent died before this worker got here
        _exit()
    watcher = threading.Thread(target=_watch, args=(parent_pid, poll_s),
                               name="vlfm-parent-watchdog", daemon=True)
    watcher.start()


def _watch(parent_pid: int, poll_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    _exit()


def _exit() -> None:
    # os._exit, not sys.exit: the worker's main thread may be blocked on a queue to the dead parent, and
    # interpreter shutdown would wait for it (and for queue feeder threads) for ever. Nothing is logged:
    # stderr may be a pipe nobody reads any more, and a blocked write would keep the worker alive.
    os._exit(1)
