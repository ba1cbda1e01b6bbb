"""Multi-host start-up through JAX's own distributed runtime (never a home-made cluster layer).

``initialize()`` runs once per process, before any other JAX call, and joins the processes of a job:

- explicitly, from ``VLFM_COORDINATOR`` (host:port of process 0), ``VLFM_NUM_PROCESSES`` and
  ``VLFM_PROCESS_ID`` (the local launcher and the tests; ``VLFM_LOCAL_DEVICES`` sets the number of
  CPU devices per process);
- under SLURM (``srun`` with more than one task): JAX reads ``SLURM_*`` for the coordinator, process
  count and id; the local GPU ids are computed here (``slurm_local_device_ids``) because JAX's own
  default, one GPU per task, is wrong for one task per node;
- on TPU VMs and pods, and wherever ``VLFM_DISTRIBUTED=1``: ``jax.distributed.initialize()`` with
  no arguments (JAX reads the TPU metadata). ``VLFM_DISTRIBUTED=0`` turns all of this off.

Failure handling. JAX's coordination service watches every process: when one dies, the others stop
with ``Terminating process because the JAX distributed service detected fatal errors`` at the latest
after ``VLFM_HEARTBEAT_TIMEOUT`` seconds (JAX's default 100 s), usually at once because a collective
with the dead peer fails first. They exit by SIGABRT, so schedulers see a failed task; the first
process to fail holds the real cause in its log. ``launch/local.py`` reports which process failed
first.

CPU collectives (gloo). With several CPU devices per process, XLA's CPU client runs every device's
part of a step on one thread pool of ``max(cores, local devices)`` threads. When steps are
dispatched asynchronously, the next step's launches take pool threads and wait there while a device
of the current step still needs a thread to reach its collective; the peers wait for it in gloo for
ever (seen as a hang in most runs on 2 cores). ``initialize`` therefore sizes that pool
(``PJRT_NPROC``) to at least twice the local device count, which lets the loop stay asynchronous.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import re
from collections.abc import Mapping

import jax
import numpy as np

log = logging.getLogger("vlfm")

# Threads per local CPU device for XLA's CPU client pool: one step running, one step launching.
CPU_THREADS_PER_DEVICE = 2


def _env_flag(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "auto").strip().lower()


def _in_slurm_job(env: Mapping[str, str]) -> bool:
    return "SLURM_JOB_ID" in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1


def _on_tpu_vm(env: Mapping[str, str]) -> bool:
    """TPU chips (``/dev/accel*`` up to v4, ``/dev/vfio/*`` from v5) and the TPU runtime installed."""
    if any(k in env for k in ("TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID", "MEGASCALE_COORDINATOR_ADDRESS")):
        return True
    chips = glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*")
    return bool(chips) and importlib.util.find_spec("libtpu") is not None


def _tasks_on_this_node(env: Mapping[str, str]) -> int | None:
    """Tasks of this job step on this node, from ``SLURM_STEP_TASKS_PER_NODE`` (e.g. ``4(x2),2``)."""
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not spec:
        return None
    counts: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            return None
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    node = int(env.get("SLURM_NODEID", "0"))
    return counts[node] if node < len(counts) else None


def slurm_local_device_ids(env: Mapping[str, str]) -> list[int] | None:
    """The accelerator ids this SLURM task drives, as indices into the devices it can see.

    One task per node drives every visible GPU; one task per GPU drives GPU ``SLURM_LOCALID`` when it
    sees all of the node's GPUs, or GPU 0 when SLURM bound it to its own (``--gpus-per-task=1``).
    None when the GPU count is unknown (JAX then decides).
    """
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    gpus = len(visible) or int(env.get("SLURM_GPUS_ON_NODE", "0") or 0)
    tasks = _tasks_on_this_node(env)
    if not gpus or not tasks:
        return None
    local_id = int(env.get("SLURM_LOCALID", "0"))
    if tasks == 1:
        return list(range(gpus))
    if gpus == 1:
        return [0]
    if gpus % tasks:
        raise ValueError(f"SLURM: {tasks} tasks on this node cannot share {gpus} GPUs evenly; use one task per "
                         "node or one task per GPU")
    per_task = gpus // tasks
    return list(range(local_id * per_task, (local_id + 1) * per_task))


def _size_cpu_thread_pool(local_devices: int, env: dict) -> None:
    """Gives XLA's CPU client enough threads for asynchronous multi-device steps (module docstring)."""
    if "PJRT_NPROC" in env:
        return
    env["PJRT_NPROC"] = str(max(os.cpu_count() or 1, CPU_THREADS_PER_DEVICE * local_devices))


def initialize(env: dict | None = None) -> bool:
    """Joins the job's processes when there are several; returns whether ``jax.distributed`` started.

    Must run before anything initialises a JAX backend.
    """
    env = os.environ if env is None else env
    mode = _env_flag(env, "VLFM_DISTRIBUTED")
    init_timeout = int(env.get("VLFM_INIT_TIMEOUT", "300"))
    heartbeat = int(env.get("VLFM_HEARTBEAT_TIMEOUT", "100"))
    local_devices = env.get("VLFM_LOCAL_DEVICES")
    if local_devices:
        jax.config.update("jax_num_cpu_devices", int(local_devices))
    if mode in ("0", "false", "off") and not env.get("VLFM_COORDINATOR"):
        return False
    kwargs = dict(initialization_timeout=init_timeout, heartbeat_timeout_seconds=heartbeat)
    if env.get("VLFM_COORDINATOR"):
        num, pid = int(env["VLFM_NUM_PROCESSES"]), int(env["VLFM_PROCESS_ID"])
        if local_devices and int(local_devices) > 1 and num > 1:
            _size_cpu_thread_pool(int(local_devices), env)
        jax.distributed.initialize(coordinator_address=env["VLFM_COORDINATOR"], num_processes=num, process_id=pid,
                                   **kwargs)
    elif _in_slurm_job(env):
        ids = env.get("VLFM_LOCAL_DEVICE_IDS")
        local_ids = [int(i) for i in ids.split(",")] if ids else slurm_local_device_ids(env)
        jax.distributed.initialize(local_device_ids=local_ids, **kwargs)
    elif mode in ("1", "true", "on") or (mode == "auto" and _on_tpu_vm(env)):
        jax.distributed.initialize(**kwargs)
    else:
        return False
    log.info("process %d of %d: %d local / %d global devices (%s); a failed peer stops this process within %d s%s",
             jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
             jax.devices()[0].platform, heartbeat, _cpu_steps_note())
    return True


def _cpu_steps_note() -> str:
    if jax.default_backend() != "cpu" or jax.local_device_count() == 1:
        return ""
    if must_block_each_step():
        return "; CPU steps run one at a time (CPU thread pool too small for asynchronous steps)"
    return f"; asynchronous CPU steps ({os.environ.get('PJRT_NPROC', 'default')} CPU client threads)"


def must_block_each_step() -> bool:
    """Whether the train loop must wait for each step: only multi-process CPU runs whose CPU client
    pool is too small for asynchronous multi-device steps (module docstring). Accelerators never."""
    if jax.process_count() == 1 or jax.default_backend() != "cpu" or jax.local_device_count() == 1:
        return False
    threads = int(os.environ.get("PJRT_NPROC") or os.environ.get("NPROC") or len(os.sched_getaffinity(0)))
    return max(threads, jax.local_device_count()) < CPU_THREADS_PER_DEVICE * jax.local_device_count()


def broadcast_text(text: str, size: int = 2048) -> str:
    """Process 0's ``text`` (UTF-8, cut to ``size`` bytes) on every process; all processes must call it.

    How the others learn what process 0 alone decided (e.g. that another run holds the workdir)."""
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    buf = np.zeros(size, np.uint8)
    data = np.frombuffer(text.encode()[:size], np.uint8)
    buf[:len(data)] = data
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return bytes(out).rstrip(b"\0").decode(errors="replace")
