"""Multi-host start-up through JAX's own distributed runtime (never a home-made cluster layer).

``initialize()`` is called once per process before any other JAX call. It connects the processes of
a job when there is more than one:

- explicitly, from ``VLFM_COORDINATOR`` (host:port), ``VLFM_NUM_PROCESSES`` and ``VLFM_PROCESS_ID``
  (the local launcher and the tests use these; ``VLFM_LOCAL_DEVICES`` sets CPU devices per process);
- automatically on TPU VMs and under SLURM, where ``jax.distributed.initialize()`` reads the
  cluster's own environment (``SLURM_*``, TPU metadata).
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger("vlfm")


def _in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def _on_tpu_pod() -> bool:
    return "TPU_WORKER_HOSTNAMES" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ


def initialize(timeout_s: int = 300) -> bool:
    """Joins the job's processes; returns whether a multi-process runtime was started."""
    coordinator = os.environ.get("VLFM_COORDINATOR")
    local_devices = os.environ.get("VLFM_LOCAL_DEVICES")
    if local_devices:
        jax.config.update("jax_num_cpu_devices", int(local_devices))
    if coordinator:
        num = int(os.environ["VLFM_NUM_PROCESSES"])
        pid = int(os.environ["VLFM_PROCESS_ID"])
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid,
                                   initialization_timeout=timeout_s)
    elif _in_slurm_job() or _on_tpu_pod():
        jax.distributed.initialize(initialization_timeout=timeout_s)
    else:
        return False
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True
