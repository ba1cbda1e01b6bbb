"""Times the jitted train step of a config on synthetic batches and prints JSON.

    python benchmarks/train_step.py --config configs/clip_b16.py [--config.a.b=value ...] [--steps 20]
        [--warmup 5] [--peak_tflops 989] [--workdir DIR]

The step is the trainer's own (same mesh, rules, optimizer, donation); batches are random arrays
shaped like the config's data, so the input pipeline is not measured. After compilation and
``--warmup`` steps, each of ``--steps`` steps is timed to completion; the median is reported.

Printed: ``examples_per_s`` (global batch / median step time), ``step_ms``, ``model_tflops_per_device``,
``mfu`` (model FLOP/s per device over the peak), ``peak_tflops`` and its source: ``--peak_tflops``
(or ``config.peak_tflops``) when given, otherwise a bf16 matmul measured in the same run
(``--matmul_dtype`` to change it); ``mfu_vendor`` against the chip's data-sheet bf16 peak when known;
``peak_memory_gib`` (device high-water mark, where the backend reports it); the date, device and
commit, for ``benchmarks/RESULTS.md``. With ``config.profile_steps=a,b`` and ``--workdir``, timed
steps a..b-1 are traced into ``DIR/profile`` (open with TensorBoard or Perfetto).

Model FLOPs are the trainer's own count (``config.flops``: traced from the step's forward pass and loss by
default, or the family's analytic formula; ``vlfm.core.flops``), so the figures match the training log:
multiply-add = 2, matmuls and attention only, x3 for training (backward = 2 x forward; rematerialisation
is not counted). The analytic formulas, per example and forward:

- each transformer layer, T tokens of width d, MLP width m: ``2*T*(4*d*d + 2*d*m) + 4*T*T*d``;
- ViT patch embedding ``2*P*p*p*3*d`` (P patches of p x p pixels);
- dual encoder: image tower + text tower + projections ``2*(d_image + d_text)*e`` + contrastive
  logits ``2*2*B*e`` (B the global batch, e the embedding width).

For ``configs/clip_b16.py`` (ViT-B/16 at 224 px: T=197, d=768, m=3072, 12 layers; text T=77, d=512,
m=2048, 12 layers; e=512; B=256): 35.13 + 5.96 + 0.002 GFLOPs forward, 123.3 GFLOPs per trained
pair, 3.16e13 per step. 3,600 pairs/s is 444 TFLOP/s, 45% of an H200's 989 TFLOP/s bf16 peak.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import optax

from vlfm.core import flops as flops_lib
from vlfm.core.sharding import make_mesh, rules_from_config, to_global_batch
from vlfm.core.tree import count_params
from vlfm.models import build_model
from vlfm.optim import build_optimizer
from vlfm.optim.combine import build_combiner
from vlfm.train.config import load_config
from vlfm.train.state import TaskInit, init_batch, sharded_init, state_initializer
from vlfm.train.step import make_train_step
from vlfm.train.tasks import build_tasks



def _significant(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits: rates near zero (a CPU's TFLOP/s) keep their precision,
    so the printed ratios agree with each other to 0.1%."""
    return float(f"{x:.{digits}g}")

def synthetic_batch(example: dict, batch_size: int, seed: int = 0) -> dict:
    """Random arrays with the example's shapes and dtypes (integers stay in the example's range)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in example.items():
        v = np.asarray(v)
        if v.dtype.kind == "f":
            out[k] = rng.normal(size=(batch_size, *v.shape)).astype(v.dtype)
        elif v.dtype.kind in "iu":
            out[k] = np.broadcast_to(v, (batch_size, *v.shape)).copy()
    return out


def _commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("+local changes" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def _profile_window(spec: str) -> tuple[int, int] | None:
    if not spec:
        return None
    first, last = (int(x) for x in str(spec).split(","))
    return first, last


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps after compilation")
    parser.add_argument("--peak_tflops", type=float, default=None, help="peak per device; default: measure")
    parser.add_argument("--matmul_dtype", default="bfloat16", help="dtype of the measured peak matmul")
    parser.add_argument("--workdir", default=None, help="where config.profile_steps writes its trace")
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unknown arguments {unknown}")
    overrides = [a[len("--config."):] for a in rest]
    config = load_config(args.config, overrides)
    if config.data.get("name") == "shapes":
        with config.unlocked():
            config.data.num_examples = 4  # the built-in data only gives shapes; the values are random
    tasks = build_tasks(config)
    task = tasks[0]
    if len(tasks) > 1:
        print(f"benchmarking task {task.name!r} only (of {len(tasks)})", file=sys.stderr)
    example = task.example()
    mesh = make_mesh(config.mesh.shape, dcn_shape=config.mesh.get("dcn_shape"))
    rules = rules_from_config(config.mesh.get("rules", ()))
    model = build_model(config.model)
    base_tx, schedule = build_optimizer(config.optimizer, config.total_steps)
    tx = optax.chain(build_combiner(config.get("gradient_combiner"), {task.name: task.weight}), base_tx)
    batch_size = task.batch_size
    profile = _profile_window(config.get("profile_steps", ""))
    if profile and not args.workdir:
        parser.error("config.profile_steps needs --workdir")
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        init = state_initializer(model, tx, ema=config.ema_decay is not None,
                                 tasks=[TaskInit(task.name, init_batch(example, 1), task.forward)])
        state, shardings, abstract = sharded_init(init, jax.random.key(0), mesh, rules)
        step_flops = task.step_flops(model, config.model, abstract["params"], config.flops)
        step_fn = make_train_step(model, [task], tx, schedule, seed=0, accum_steps=int(config.grad_accum_steps),
                                  ema_decay=config.ema_decay, prefix_metrics=False)
        step = jax.jit(step_fn, in_shardings=(shardings, None, None), out_shardings=(shardings, None),
                       donate_argnums=0)
        batch = {task.name: to_global_batch(synthetic_batch(example, batch_size), mesh)}
        compile_start = time.perf_counter()
        state, metrics = step(state, batch, {})
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - compile_start
        for _ in range(args.warmup):
            state, metrics = step(state, batch, {})
        jax.block_until_ready(metrics)
        times = []
        for i in range(args.steps):
            if profile and i == profile[0]:
                jax.profiler.start_trace(os.path.join(args.workdir, "profile"))
            start = time.perf_counter()
            state, metrics = step(state, batch, {})
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
            if profile and i + 1 == profile[1]:
                jax.profiler.stop_trace()
    step_s = statistics.median(times)
    per_device = step_flops / step_s / jax.device_count()
    given = args.peak_tflops or config.peak_tflops
    if given:
        peak, source = float(given), "given"
    else:
        peak, source = flops_lib.measure_matmul_flops(args.matmul_dtype) / 1e12, f"measured {args.matmul_dtype} matmul"
    vendor, _ = flops_lib.peak_flops_per_device()
    stats = jax.local_devices()[0].memory_stats() or {}
    memory = stats.get("peak_bytes_in_use")
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "commit": _commit(),
        "config": args.config, "overrides": overrides, "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(), "mesh": dict(mesh.shape), "params": count_params(state["params"]),
        "batch_size": batch_size, "compile_s": round(compile_s, 2), "steps": args.steps,
        "step_ms": round(1e3 * step_s, 2), "step_ms_min": round(1e3 * min(times), 2),
        "step_ms_max": round(1e3 * max(times), 2), "examples_per_s": round(batch_size / step_s, 1),
        "model_flops_per_step": step_flops, "model_tflops_per_device": _significant(per_device / 1e12),
        "peak_tflops": _significant(peak), "peak_source": source, "mfu": _significant(per_device / 1e12 / peak),
        "vendor_peak_tflops": None if vendor is None else vendor / 1e12,
        "mfu_vendor": None if vendor is None else _significant(per_device / vendor),
        "peak_memory_gib": None if memory is None else round(memory / 2**30, 3),
        "loss": float(metrics["loss"]),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
