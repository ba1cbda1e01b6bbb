"""Multi-host training for real: 2 OS processes x 4 CPU devices on localhost (jax.distributed + gloo).

The trainer CLI runs under ``launch/local.py`` (which also turns Ctrl-C into a coordinated preemption
checkpoint); every comparison is against 1 process x 8 devices on the same (data, fsdp, tensor) =
(2, 2, 2) mesh. The dataset holds exactly one global batch (32
pairs), so every step of every layout trains on the same 32 examples whatever order each process
reads them in: losses must agree to float rounding. The same equality shows that each process reads
its own half: two processes reading the same shard would train on 16 duplicated pairs instead.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

from tests.helpers import REPO, SMALL_CLIP, trainer_env

ARGS = ["--config", "configs/clip_tiny.py", *SMALL_CLIP, "--config.data.num_examples=32",
        "--config.data.batch_size=32", "--config.mesh.shape=(2,2,2)", "--config.optimizer.name=sgd",
        "--config.optimizer.lr.name=constant", "--config.optimizer.lr.peak=0.1",
        "--config.optimizer.lr.warmup_steps=0", "--config.log_every=1", "--config.checkpoint_every=100",
        "--config.export_params=false",
        "--config.evals.retrieval.every=0", "--config.evals.zeroshot.every=0",
        "--config.evals.retrieval.num_examples=32", "--config.evals.zeroshot.num_examples=32"]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """One persistent compilation cache for the module's runs: each layout compiles its step once."""
    return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache"))}


def run_one(args, cache, devices=8, timeout=240):
    """The trainer in 1 process with ``devices`` CPU devices."""
    env = dict(trainer_env(devices), **cache)
    return subprocess.run([sys.executable, "-m", "vlfm.train", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def launch_command(args, timeout=220, grace=60):
    """``launch/local.py`` running the trainer as 2 processes x 4 CPU devices."""
    return [sys.executable, "launch/local.py", "--num_processes", "2", "--cpu_devices", "4", "--timeout", str(timeout),
            "--grace", str(grace), "--port", str(portpicker.pick_unused_port()), "--",
            sys.executable, "-m", "vlfm.train", *args]


def launch(args, cache, timeout=240):
    """Runs the 2-process trainer to the end; SIGKILLs the whole process group on timeout."""
    proc = subprocess.Popen(launch_command(args, timeout - 20), cwd=REPO, env=dict(trainer_env(), **cache),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0]
        raise AssertionError(f"2-process run did not finish in {timeout} s:\n{out[-4000:]}") from None
    return proc.returncode, out


def losses(workdir):
    return {r["step"]: r["train/loss"] for r in metrics(workdir) if "train/loss" in r}


def segment(workdir, steps, evals=True):
    """A run to ``steps`` in ``workdir``; without ``evals`` the end-of-run evaluation is skipped (time)."""
    extra = [] if evals else ["--config.evals={}"]
    return ARGS + ["--workdir", str(workdir), f"--config.total_steps={steps}", *extra]


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_two_processes_train_like_one_and_checkpoints_cross_restore(tmp_path, compile_cache):
    """One run in three segments that alternate layouts, against an uninterrupted 1 x 8 run:
    2 x 4 until Ctrl-C to the launcher (a coordinated preemption checkpoint at step k), 1 x 8 restoring
    it for steps k+1..k+3, 2 x 4 restoring again for k+4..k+6."""
    run = tmp_path / "run"
    proc = subprocess.Popen(launch_command(segment(run, 30, evals=False)), cwd=REPO,
                            env=dict(trainer_env(), **compile_cache), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _, lines = _wait_for(proc, r"\[p0\] .*step 3/30", time.monotonic() + 200)
        proc.send_signal(signal.SIGINT)  # the launcher passes SIGTERM to both processes
        out = "".join(lines) + proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, out[-4000:]
    assert "process 0 of 2: 4 local / 8 global devices" in out and "process 1 of 2: 4 local / 8 global devices" in out
    assert "asynchronous CPU steps (8 CPU client threads)" in out  # the deadlock fix (vlfm.train.distributed)
    saved = {int(k) for k in re.findall(r"\[p[01]\] .*preemption signal received: saved step (\d+)", out)}
    assert len(saved) == 1 and len(re.findall(r"preemption signal received", out)) == 2, out[-4000:]
    k = saved.pop()
    assert 3 <= k <= 24, k
    data_states = sorted(f for f in os.listdir(run / "checkpoints" / str(k) / "data") if f.endswith(".json"))
    assert data_states == ["process_0-of-2.json", "process_1-of-2.json"]  # one data stream per process

    one = run_one(segment(run, k + 3, evals=False), compile_cache)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    assert f"resumed from step {k}" in one.stdout
    # Data streams follow the process count: restored model, optimizer and step; fresh data streams (here
    # every batch is the whole dataset, so the batches are the same anyway).
    assert "of another process count (this run has 1): model, optimizer and step are restored" in one.stdout

    rc, out = launch(segment(run, k + 6), compile_cache)
    assert rc == 0, out[-4000:]
    assert f"resumed from step {k + 3}" in out and "of another process count (this run has 2)" in out

    ref = run_one(segment(tmp_path / "ref", k + 6), compile_cache)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    expected, got = losses(tmp_path / "ref"), losses(run)
    steps = list(range(1, k + 7))
    assert sorted(expected) == steps and sorted(got) == steps, (sorted(expected), sorted(got))
    assert expected[k + 6] < expected[1] - 0.1, expected  # it trains
    np.testing.assert_allclose([got[s] for s in steps], [expected[s] for s in steps], rtol=2e-5)
    # The end-of-run evaluation works across processes and sees the same parameters.
    ref_eval = [m for m in metrics(tmp_path / "ref") if "eval/retrieval/i2t_r1" in m][-1]
    run_eval = [m for m in metrics(run) if "eval/retrieval/i2t_r1" in m][-1]
    for key in ("eval/retrieval/i2t_r1", "eval/retrieval/t2i_r5", "eval/zeroshot/accuracy"):
        assert run_eval[key] == pytest.approx(ref_eval[key]), key


def _wait_for(proc, pattern, deadline):
    lines = []
    for line in proc.stdout:
        lines.append(line)
        m = re.search(pattern, line)
        if m:
            return m, lines
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"never saw {pattern!r}:\n{''.join(lines)[-4000:]}")


@pytest.mark.slow
def test_a_dead_process_stops_the_others_with_a_clear_message(tmp_path, compile_cache):
    """SIGKILL one process mid-run: the other exits non-zero on its own (JAX's distributed runtime, 10 s
    heartbeat), well before the launcher's 60 s grace, and the launcher names the process that died."""
    args = segment(tmp_path / "run", 100000, evals=False)
    env = dict(trainer_env(), VLFM_HEARTBEAT_TIMEOUT="10", **compile_cache)
    proc = subprocess.Popen(launch_command(args, timeout=200), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        m, lines = _wait_for(proc, r"started 2 processes \(pids (\d+), (\d+)\)", deadline)
        victim = int(m.group(2))
        _, more = _wait_for(proc, r"\[p1\] .*step 3/100000", deadline)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        rest = proc.communicate(timeout=120)[0]
        elapsed = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    out = "".join(lines + more) + rest
    assert proc.returncode == 128 + signal.SIGKILL, out[-4000:]
    assert "launch: process 1 was killed by SIGKILL" in out and "it failed first" in out, out[-4000:]
    m = re.search(r"launch: process 0 (exited with status \d+|was killed by SIG\w+) by itself ([\d.]+) s after", out)
    assert m, out[-4000:]
    assert float(m.group(2)) < 30, m.group(0)
    assert "stopped by the launcher" not in out, out[-4000:]
    assert elapsed < 45, elapsed


def test_launcher_dry_run_prints_one_command_per_process():
    out = subprocess.run([sys.executable, "launch/local.py", "-n", "3", "--cpu_devices", "2", "--port", "1234",
                          "--dry_run", "--", "python", "-m", "vlfm.train", "--config", "c.py", "--workdir", "w"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4 and lines[-1] == "wait"
    for i, line in enumerate(lines[:3]):
        assert f"VLFM_PROCESS_ID={i} " in line and "VLFM_NUM_PROCESSES=3 " in line
        assert "VLFM_COORDINATOR=127.0.0.1:1234 " in line and "VLFM_LOCAL_DEVICES=2 " in line
        assert line.endswith("python -m vlfm.train --config c.py --workdir w &")


SLURM = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "11", "SLURM_NTASKS": "16", "SLURM_NODEID": "1"}


@pytest.mark.parametrize("env, expected", [
    # one task per node: all of the node's GPUs
    (dict(SLURM_STEP_TASKS_PER_NODE="1(x2)", SLURM_LOCALID="0", CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7"),
     list(range(8))),
    (dict(SLURM_STEP_TASKS_PER_NODE="1(x2)", SLURM_LOCALID="0", SLURM_GPUS_ON_NODE="4"), [0, 1, 2, 3]),
    # one task per GPU, every task sees the node's 8 GPUs: its own is SLURM_LOCALID
    (dict(SLURM_STEP_TASKS_PER_NODE="8(x2)", SLURM_LOCALID="3", CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7"), [3]),
    # one task per GPU, SLURM bound each task to its GPU (--gpus-per-task=1): it sees one, index 0
    (dict(SLURM_STEP_TASKS_PER_NODE="8(x2)", SLURM_LOCALID="5", CUDA_VISIBLE_DEVICES="5"), [0]),
    # two tasks per node share 8 GPUs; with uneven nodes ("4,2") this node's count decides
    (dict(SLURM_STEP_TASKS_PER_NODE="2(x2)", SLURM_LOCALID="1", CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7"), [4, 5, 6, 7]),
    (dict(SLURM_STEP_TASKS_PER_NODE="4,2", SLURM_LOCALID="1", SLURM_GPUS_ON_NODE="2"), [1]),
    (dict(SLURM_STEP_TASKS_PER_NODE="8(x2)", SLURM_LOCALID="1"), None),  # GPUs unknown: JAX decides
])
def test_slurm_local_device_ids(env, expected):
    from vlfm.train.distributed import slurm_local_device_ids
    assert slurm_local_device_ids(dict(SLURM, **env)) == expected


def test_slurm_uneven_gpu_split_is_refused():
    from vlfm.train.distributed import slurm_local_device_ids
    with pytest.raises(ValueError, match="cannot share 8 GPUs"):
        slurm_local_device_ids(dict(SLURM, SLURM_STEP_TASKS_PER_NODE="3(x2)", SLURM_LOCALID="0",
                                    CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7"))


def test_single_process_runs_do_not_start_the_distributed_runtime():
    from vlfm.train.distributed import initialize
    assert initialize({}) is False
    assert initialize({"VLFM_DISTRIBUTED": "0", "SLURM_JOB_ID": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}) is False
    assert initialize({"SLURM_JOB_ID": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is False  # one task
