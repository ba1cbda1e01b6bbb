"""Times the jitted train step of a config on synthetic batches and prints JSON.

    python benchmarks/train_step.py --config configs/clip_b16.py [--config.a.b=value ...] [--steps 20]

Reports examples/s, median step time (warm-up excluded), model TFLOP/s per device and MFU (model FLOPs
from ``vlfm.train.flops``, the same count the training log uses), and the peak device memory where
the backend reports it. Batches are random arrays shaped like the config's data, so the input
pipeline is not measured here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import optax

from vlfm.data import build_dataset
from vlfm.losses import combined_loss
from vlfm.models import build_model
from vlfm.optim import build_optimizer
from vlfm.optim.combine import sum_gradients
from vlfm.train import flops as flops_lib
from vlfm.train.config import load_config
from vlfm.train.sharding import make_mesh, rules_from_config, to_global_batch
from vlfm.train.state import count_params, init_batch, sharded_init, state_initializer
from vlfm.train.step import make_train_step
from vlfm.train.tasks import Task


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


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args, rest = parser.parse_known_args(argv)
    overrides = [a[len("--config."):] for a in rest if a.startswith("--config.")]
    config = load_config(args.config, overrides)

    data_cfg = dict(config.data)
    if data_cfg.get("name") == "shapes":
        data_cfg["num_examples"] = 4  # shapes only; the values are replaced by random data
    bundle = build_dataset(data_cfg, "train")
    example = bundle.examples[0]
    mesh = make_mesh(config.mesh.shape)
    rules = rules_from_config(config.mesh.get("rules", ()))
    model = build_model(config.model)
    tx, schedule = build_optimizer(config.optimizer, config.total_steps)
    batch_size = int(config.data.batch_size)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        init = state_initializer(model, optax.chain(sum_gradients(), tx), init_batch(example, 1),
                                 ema=config.ema_decay is not None)
        state, shardings, _ = sharded_init(init, jax.random.key(0), mesh, rules)
        task = Task("main", bundle, batch_size, combined_loss(config.losses))
        step_fn = make_train_step(model, [task], optax.chain(sum_gradients(), tx), schedule, seed=0,
                                  accum_steps=int(config.grad_accum_steps), ema_decay=config.ema_decay)
        step = jax.jit(step_fn, in_shardings=(shardings, None, None), out_shardings=(shardings, None),
                       donate_argnums=0)
        batch = {task.name: to_global_batch(synthetic_batch(example, batch_size), mesh)}
        compile_start = time.perf_counter()
        state, metrics = step(state, batch, {})
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - compile_start
        times = []
        for i in range(args.warmup + args.steps):
            start = time.perf_counter()
            state, metrics = step(state, batch, {})
            jax.block_until_ready(metrics)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    text_len = int(config.data.get("max_len", 0)) or None
    step_flops = batch_size * flops_lib.train_flops_per_example(config.model, text_len=text_len,
                                                                global_batch=batch_size)
    per_device = step_flops / step_s / jax.device_count()
    peak, source = flops_lib.peak_flops_per_device(config.peak_tflops * 1e12 if config.peak_tflops else None)
    memory = None
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        memory = stats["peak_bytes_in_use"] / 2**30
    print(json.dumps({
        "config": args.config, "overrides": overrides, "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(), "params": count_params(state["params"]), "batch_size": batch_size,
        "compile_s": round(compile_s, 2), "step_ms": round(1e3 * step_s, 2),
        "examples_per_s": round(batch_size / step_s, 1), "model_tflops_per_device": round(per_device / 1e12, 3),
        "mfu": None if peak is None else round(per_device / peak, 4), "peak_source": source,
        "peak_memory_gib": memory, "loss": float(metrics["loss"]),
    }, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
