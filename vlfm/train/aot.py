"""Ahead-of-time compilation of the train step: per-device memory and FLOPs before any training."""

from __future__ import annotations

from typing import Any

import jax


class WillNotFitError(RuntimeError):
    """The compiled step needs more device memory than the device has."""


def compile_report(jitted_step: Any, *abstract_args: Any) -> dict[str, float]:
    """Lowers and compiles ``jitted_step`` for abstract inputs; returns per-device bytes and FLOPs.

    Raises ``WillNotFitError`` with the figures when the step needs more memory than the device
    reports as its limit.
    """
    compiled = jitted_step.lower(*abstract_args).compile()
    report: dict[str, float] = {}
    memory = compiled.memory_analysis()
    if memory is not None:
        report.update(
            argument_bytes=float(memory.argument_size_in_bytes),
            output_bytes=float(memory.output_size_in_bytes),
            temp_bytes=float(memory.temp_size_in_bytes),
            generated_code_bytes=float(memory.generated_code_size_in_bytes),
            alias_bytes=float(getattr(memory, "alias_size_in_bytes", 0)),
        )
        report["total_bytes"] = (report["argument_bytes"] + report["output_bytes"] + report["temp_bytes"]
                                 - report["alias_bytes"])
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if cost:
        report["compiled_flops"] = float(cost.get("flops", 0.0))
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    if limit and "total_bytes" in report:
        report["device_bytes_limit"] = float(limit)
        if report["total_bytes"] > limit:
            raise WillNotFitError(
                f"the train step needs {report['total_bytes'] / 2**30:.2f} GiB per device "
                f"(arguments {report['argument_bytes'] / 2**30:.2f}, temporaries {report['temp_bytes'] / 2**30:.2f}, "
                f"outputs {report['output_bytes'] / 2**30:.2f}) but the device has {limit / 2**30:.2f} GiB: "
                "shard more (mesh.shape with fsdp/tensor), rematerialise (model.*.remat), or lower the batch")
    return report
