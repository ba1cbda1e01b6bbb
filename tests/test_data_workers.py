"""Data worker processes die with a trainer killed by SIGKILL, and leave no shared memory behind."""

import os
import pathlib
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A trainer's data side: batches from two grain worker processes, then it waits to be killed.
TRAINER = textwrap.dedent("""
    import os, sys, time
    from vlfm.data import build_dataset, train_iterator
    if __name__ == "__main__":
        bundle = build_dataset(dict(name="shapes", num_examples=40, image_size=8, max_len=8, mlm_prob=0.2), "train")
        it = train_iterator(bundle, global_batch_size=4, seed=0, num_workers=2, process_index=0, process_count=1)
        for _ in range(3):
            next(it)
        print("ready", flush=True)
        time.sleep(300)
""")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for an init that does not reap counts as gone)."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _shm_segments(pid: int) -> set[str]:
    """The /dev/shm files a process has mapped and that still exist."""
    names = set()
    for line in pathlib.Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[-1]
        if path.startswith("/dev/shm/") and not path.endswith("(deleted)"):
            names.add(path)
    return names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_and_shared_memory_go_when_the_trainer_is_killed(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    with open(tmp_path / "stderr.txt", "wb") as err:
        trainer = subprocess.Popen([sys.executable, "-c", TRAINER], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=err)
    workers: list[int] = []
    try:
        ready, _, _ = select.select([trainer.stdout], [], [], 120)
        line = trainer.stdout.readline() if ready else b""
        assert line.strip() == b"ready", (line, (tmp_path / "stderr.txt").read_text()[-3000:])
        workers = _children(trainer.pid)  # two data workers and the resource tracker
        assert len(workers) >= 3, workers
        segments = _shm_segments(trainer.pid)
        for pid in workers:
            segments |= _shm_segments(pid)

        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
        deadline = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], "data processes outlived the killed trainer"
        assert not [s for s in segments if os.path.exists(s)], "shared memory segments were left behind"
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_worker_whose_parent_is_already_gone_exits():
    # The parent may die between spawning a worker and the worker's init: the worker must not go on orphaned.
    not_its_parent = os.getpid() + 1_000_000  # no process has this pid, so it is not the child's parent
    code = f"from vlfm.data.workers import die_with_parent; die_with_parent({not_its_parent}); print('still here')"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 1 and b"still here" not in done.stdout, done
