"""Ahead-of-time compilation of the train step: per-device memory and FLOPs before any training.

``python -m vlfm.train --config ... --dry_run`` builds the mesh, the sharded abstract state and the
step exactly as a run would, compiles it for abstract inputs (nothing is allocated or trained) and
reports, per device:

- ``argument_bytes`` (parameters, optimizer state, batch shard), ``output_bytes``, ``temp_bytes``
  (activations and other temporaries), ``alias_bytes`` (outputs written in place of donated
  arguments) and ``total_bytes = argument + output + temp - alias``, the peak the step needs;
- ``xla_flops_per_device``: XLA's cost analysis of the compiled per-device program. It counts the
  body of a loop once, not once per iteration, so with scanned layers (``scan=True``) it undercounts
  by about the depth (2.8e12 against the model count 3.2e13 for ``configs/clip_b16.py``). The FLOPs to
  trust are the ``model_flops_per_step`` (``vlfm.core.flops``) the trainer adds, the count
  the training log and the benchmark use.

The memory limit is the device's own (``bytes_limit`` from ``memory_stats()``, on GPUs and TPUs) or
``VLFM_DEVICE_MEMORY_GIB`` when set (e.g. to check a budget from a CPU machine, where XLA's CPU
compiler is only a rough guide to an accelerator's footprint). Over the limit, ``WillNotFitError``
says by how much and what to change; the CLI exits with status 4.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax

log = logging.getLogger("vlfm")


class WillNotFitError(RuntimeError):
    """The compiled step needs more device memory than the device has."""


def device_memory_limit() -> float | None:
    """Bytes of memory per device: ``VLFM_DEVICE_MEMORY_GIB`` if set, else what the device reports."""
    if os.environ.get("VLFM_DEVICE_MEMORY_GIB"):
        return float(os.environ["VLFM_DEVICE_MEMORY_GIB"]) * 2**30
    limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    return float(limit) if limit else None


def format_bytes(x: float) -> str:
    """``1.5 GiB``, ``12.3 MiB``, ``880 B``: readable at every model size."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= size:
            return f"{x / size:.4g} {unit}"
    return f"{x:.0f} B"


def compile_report(jitted_step: Any, *abstract_args: Any) -> dict[str, float]:
    """Lowers and compiles ``jitted_step`` for abstract inputs (``ShapeDtypeStruct``s with shardings);
    returns per-device bytes and XLA's FLOPs (module docstring).

    Raises ``WillNotFitError`` with the figures when the step needs more memory than the limit.
    """
    compiled = jitted_step.lower(*abstract_args).compile()
    report: dict[str, float] = {}
    memory = compiled.memory_analysis()
    if memory is not None:
        report.update(
            argument_bytes=float(memory.argument_size_in_bytes),
            output_bytes=float(memory.output_size_in_bytes),
            temp_bytes=float(memory.temp_size_in_bytes),
            alias_bytes=float(getattr(memory, "alias_size_in_bytes", 0)),
            generated_code_bytes=float(memory.generated_code_size_in_bytes),
        )
        report["total_bytes"] = (report["argument_bytes"] + report["output_bytes"] + report["temp_bytes"]
                                 - report["alias_bytes"])
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if cost and "flops" in cost:
        report["xla_flops_per_device"] = float(cost["flops"])
    limit = device_memory_limit()
    b = {k: format_bytes(report.get(k, 0.0)) for k in ("total_bytes", "argument_bytes", "temp_bytes", "output_bytes",
                                                       "alias_bytes")}
    if limit and "total_bytes" in report:
        report["device_bytes_limit"] = limit
        if report["total_bytes"] > limit:
            raise WillNotFitError(
                f"the train step will not fit: it needs {b['total_bytes']} per device (arguments "
                f"{b['argument_bytes']}, temporaries {b['temp_bytes']}, outputs {b['output_bytes']}, minus "
                f"{b['alias_bytes']} donated) but a device has {format_bytes(limit)}. Shard parameters and optimizer "
                "state (mesh.shape with fsdp > 1, e.g. (1,-1,1)), split heads and MLP (tensor > 1), rematerialise "
                "(model.*.remat=full or dots), or lower data.batch_size / raise grad_accum_steps.")
    log.info("ahead-of-time compile: %s per device in all (arguments %s, temporaries %s, outputs %s, donated %s)%s; "
             "XLA FLOPs per device %.4g (loop bodies counted once: model_flops_per_step is the real count)",
             b["total_bytes"], b["argument_bytes"], b["temp_bytes"], b["output_bytes"], b["alias_bytes"],
             f" of {format_bytes(limit)}" if limit else "", report.get("xla_flops_per_device", float("nan")))
    return report
