"""The one training loop: config -> mesh, model, loss, optimizer, data -> steps, logs, evals, checkpoints.

Every model family runs through ``train``; what differs between them lives in the config (model,
losses, data, evaluators), never in a copy of this loop.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vlfm.data import build_dataset, to_global, train_iterator
from vlfm.data.pipeline import numeric_only
from vlfm.evaluators import EVALUATORS
from vlfm.losses import combined_loss
from vlfm.models import build_model
from vlfm.optim import build_optimizer, ema_update
from vlfm.train import aot
from vlfm.train import flops as flops_lib
from vlfm.train.checkpoint import Checkpointer, export_params
from vlfm.train.config import check_keys
from vlfm.train.metrics_writer import MetricWriter, format_duration
from vlfm.train.sharding import batch_sharding, data_parallel_size, make_mesh, rules_from_config
from vlfm.train.state import count_params, init_batch, sharded_init, state_initializer

log = logging.getLogger("vlfm")


class NonFiniteLossError(RuntimeError):
    """The loss or gradient became NaN/Inf; the run stopped and the last good checkpoint was kept."""


def make_train_step(model: nn.Module, loss_fn: Callable, tx: optax.GradientTransformation,
                    schedule: Callable, *, seed: int, accum_steps: int = 1, ema_decay: float | None = None):
    """``(state, batch) -> (state, metrics)``. A step whose loss or gradient is not finite leaves the
    state unchanged and reports ``finite = False``, so no bad update ever reaches a checkpoint."""
    base_key = jax.random.key(seed)

    def loss_of(params, batch, rng):
        outputs = model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
        return loss_fn(outputs, batch)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def step_fn(state: dict, batch: dict) -> tuple[dict, dict]:
        rng = jax.random.fold_in(base_key, state["step"])
        if accum_steps == 1:
            (loss, metrics), grads = grad_fn(state["params"], batch, rng)
        else:
            # Micro-batch j takes rows j, j+k, j+2k, ...: every data shard holds a slice of each.
            def split(x):
                x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
                return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))

            micro = jax.tree.map(split, batch)

            def body(carry, inputs):
                index, mb = inputs
                (l, m), g = grad_fn(state["params"], mb, jax.random.fold_in(rng, index))
                return jax.tree.map(jnp.add, carry, (g, l, m)), None

            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state["params"],
                                                                  jax.tree.map(lambda x: x[0], micro), rng))
            zeros = (zeros[1], zeros[0][0], zeros[0][1])
            (grads, loss, metrics), _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
            grads, loss, metrics = jax.tree.map(lambda x: x / accum_steps, (grads, loss, metrics))
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
        if ema_decay is not None:
            new_state["ema_params"] = ema_update(state["ema_params"], params, ema_decay)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, param_norm=optax.tree.norm(params),
                       learning_rate=schedule(state["step"]), finite=finite)
        return new_state, metrics

    return step_fn


def make_predict_fns(model: nn.Module) -> dict[str, Callable]:
    """Jitted ``fn(params, batch)`` for each of the model's ``PREDICT`` entries (for evaluators)."""
    fns = {}
    for name, fn in getattr(type(model), "PREDICT", {}).items():
        def predict(params, batch, fn=fn):
            return model.apply({"params": params}, batch, method=lambda m, b: fn(m, b))
        fns[name] = jax.jit(predict)
    return fns


def build_evaluators(config: ml_collections.ConfigDict, predict_fns: Mapping[str, Callable]) -> dict:
    evaluators = {}
    for name, cfg in config.evals.items():
        cfg = dict(cfg)
        kind = cfg.pop("type", name)
        every = cfg.pop("every", None)
        cfg.setdefault("data", dict(config.data))
        evaluators[name] = (EVALUATORS.get(kind)(predict_fns, **cfg), every)
    return evaluators


def run_evaluators(evaluators: Mapping[str, Any], params: Any, step: int, total_steps: int,
                   force: bool = False) -> dict[str, float]:
    results = {}
    for name, (evaluator, every) in evaluators.items():
        if force or (every and step % every == 0) or step == total_steps:
            start = time.perf_counter()
            for metric, value in evaluator.run(params):
                results[f"eval/{name}/{metric}"] = value
            results[f"eval/{name}/seconds"] = time.perf_counter() - start
    return results


def _measure_matmul_flops(n: int = 1024, reps: int = 5) -> float:
    """Achievable f32 matmul FLOP/s of this device, the MFU reference where no peak is known."""
    x = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    start = time.perf_counter()
    for _ in range(reps):
        y = f(x)
    y.block_until_ready()
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def train(config: ml_collections.ConfigDict, workdir: str, dry_run: bool = False) -> dict[str, float]:
    """Trains (or resumes) in ``workdir``; returns the last logged and evaluated metrics.

    With ``dry_run`` it only compiles the step ahead of time for the configured mesh and returns the
    per-device memory and FLOPs (raising ``WillNotFitError`` when it cannot fit).
    """
    check_keys(config)
    os.makedirs(workdir, exist_ok=True)
    mesh = make_mesh(config.mesh.shape)
    rules = rules_from_config(config.mesh.get("rules", ()))
    model = build_model(config.model)
    loss_fn = combined_loss(config.losses)
    tx, schedule = build_optimizer(config.optimizer, config.total_steps)
    global_batch = int(config.data.batch_size)
    accum = int(config.grad_accum_steps)
    dp = data_parallel_size(mesh)
    if global_batch % (dp * accum):
        raise ValueError(f"batch size {global_batch} must be divisible by data-parallel size {dp} x accumulation "
                         f"steps {accum}")

    bundle = build_dataset(config.data, config.data.get("train_split", "train"))
    data_it = train_iterator(bundle, global_batch_size=global_batch, seed=config.seed,
                             num_workers=config.data.get("num_workers", 0))
    example = bundle.examples[0]
    if bundle.random_transform is not None:
        example = bundle.random_transform(example, np.random.default_rng(0))
    writer = MetricWriter(workdir)

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        init = state_initializer(model, tx, init_batch(example, dp), ema=config.ema_decay is not None)
        state, shardings, abstract = sharded_init(init, jax.random.key(config.seed), mesh, rules)
        n_params = count_params(state["params"])
        checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                                    save_every=config.checkpoint_every, async_save=config.async_checkpoints)
        if checkpointer.latest_step() is not None:
            state, _ = checkpointer.restore(abstract, data_iterator=data_it)
            log.info("resumed from step %d in %s", int(state["step"]), workdir)
        start_step = int(jax.device_get(state["step"]))

        step_fn = make_train_step(model, loss_fn, tx, schedule, seed=config.seed, accum_steps=accum,
                                  ema_decay=config.ema_decay)
        metric_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        train_step = jax.jit(step_fn, in_shardings=(shardings, None), out_shardings=(shardings, metric_sharding),
                             donate_argnums=0)
        if dry_run:
            batch_abstract = {k: jax.ShapeDtypeStruct((global_batch, *np.shape(v)), np.asarray(v).dtype,
                                                      sharding=batch_sharding(mesh, 1 + np.ndim(v)))
                              for k, v in numeric_only(example).items()}
            report = aot.compile_report(train_step, abstract, batch_abstract)
            report["num_params"] = float(n_params)
            report["model_flops_per_step"] = global_batch * flops_lib.train_flops_per_example(
                config.model, text_len=bundle.info.get("max_len"), global_batch=global_batch)
            log.info("dry run (per device): %s", ", ".join(
                f"{k}={v / 2**30:.3f} GiB" if k.endswith("bytes") else f"{k}={v:.4g}" for k, v in report.items()))
            writer.close()
            return report
        evaluators = build_evaluators(config, make_predict_fns(model))

        text_len = bundle.info.get("max_len")
        step_flops = global_batch * flops_lib.train_flops_per_example(config.model, text_len=text_len,
                                                                      global_batch=global_batch)
        peak, peak_source = flops_lib.peak_flops_per_device(
            config.peak_tflops * 1e12 if config.peak_tflops else None)
        if peak is None:
            peak, peak_source = _measure_matmul_flops(), "measured f32 matmul"
        log.info("model %s: %s parameters; %.3g train FLOPs/step; peak %.3g FLOP/s per device (%s); mesh %s",
                 config.model.name, f"{n_params:,}", step_flops, peak, peak_source, dict(mesh.shape))
        results: dict[str, float] = {"num_params": float(n_params)}
        try:
            loop = _Loop(config, workdir, mesh, train_step, data_it, evaluators, checkpointer, writer, step_flops,
                         peak, global_batch)
            state, final_step = loop.run(state, start_step, results)
            if config.export_params and final_step == config.total_steps:
                export_params(state["params"], os.path.join(workdir, "params"))
        finally:
            checkpointer.close()
    writer.close()
    return results


@dataclasses.dataclass
class _Loop:
    """Everything the step loop touches, built once by ``train``."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Any
    train_step: Callable
    data_it: Any
    evaluators: dict
    checkpointer: Checkpointer
    writer: MetricWriter
    step_flops: float
    peak: float
    global_batch: int

    def run(self, state: dict, start_step: int, results: dict) -> tuple[dict, int]:
        """Steps until ``total_steps`` or a preemption; returns the final state and step."""
        config, data_it, mesh, train_step = self.config, self.data_it, self.mesh, self.train_step
        evaluators, checkpointer, writer = self.evaluators, self.checkpointer, self.writer
        step_flops, peak, global_batch = self.step_flops, self.peak, self.global_batch
        last_time, last_step, pending = None, start_step, None
        total = config.total_steps
        profile = _profile_window(config.profile_steps)
        # Several CPU devices per process with cross-process collectives deadlock when steps are queued
        # asynchronously; block on each step there. Accelerators stay asynchronous.
        block_each_step = jax.process_count() > 1 and jax.default_backend() == "cpu"
        for step in range(start_step, total):
            if profile and step == profile[0]:
                jax.profiler.start_trace(os.path.join(self.workdir, "profile"))
            batch = to_global(next(data_it), mesh)
            state, metrics = train_step(state, batch)
            done = step + 1
            if block_each_step:
                jax.block_until_ready(metrics)
            if profile and done == profile[1]:
                jax.block_until_ready(metrics)
                jax.profiler.stop_trace()
            # Check the previous step's flag (already computed) so the device keeps one step queued.
            if pending is not None:
                _check_finite(*pending, checkpointer)
            pending = (done, metrics["finite"])
            if last_time is None:  # the first step includes compilation: time from its end
                jax.block_until_ready(metrics)
                log.info("first step (compile + run) done")
                last_time, last_step = time.perf_counter(), done
            if done % config.log_every == 0 or done == total:
                _check_finite(*pending, checkpointer)
                host = jax.device_get(metrics)
                now = time.perf_counter()
                if done > last_step:
                    step_time = (now - last_time) / (done - last_step)
                    per_device = step_flops / step_time / jax.device_count()
                    host.update(step_time=step_time, examples_per_second=global_batch / step_time,
                                tflops_per_device=per_device / 1e12, mfu=per_device / peak)
                    last_time, last_step = now, done
                results.update(writer.write(done, {f"train/{k}": v for k, v in host.items()}))
                _log_line(done, total, host)
            eval_params = state["ema_params" if config.eval_with_ema else "params"]
            eval_metrics = run_evaluators(evaluators, eval_params, done, total)
            if eval_metrics:
                results.update(writer.write(done, eval_metrics))
                log.info("step %d eval: %s", done, ", ".join(f"{k}={v:.4g}" for k, v in eval_metrics.items()))
                last_time, last_step = time.perf_counter(), done  # evaluation time is not step time
            if done % config.checkpoint_every == 0 or done == total or checkpointer.preempted:
                _check_finite(*pending, checkpointer)  # never label a skipped (non-finite) step as saved
            checkpointer.save(done, state, data_iterator=data_it, meta={"step": done}, force=done == total)
            if checkpointer.should_stop(done):
                log.warning("preemption signal received: saved step %d and stopping", done)
                break
        final_step = int(jax.device_get(state["step"]))
        results["final_step"] = float(final_step)
        return state, final_step


def _profile_window(spec: str) -> tuple[int, int] | None:
    if not spec:
        return None
    try:
        first, last = (int(x) for x in str(spec).split(","))
    except ValueError:
        raise ValueError(f"profile_steps must be 'first,last', got {spec!r}") from None
    return first, last


def _check_finite(step: int, finite: jax.Array, checkpointer: Checkpointer) -> None:
    if not bool(jax.device_get(finite)):
        checkpointer.wait()
        last = checkpointer.latest_step()
        raise NonFiniteLossError(
            f"loss or gradient is NaN/Inf at step {step}; the run stopped. The state was not updated by that "
            f"step; the last good checkpoint is step {last}.")


def _log_line(step: int, total: int, m: Mapping[str, Any]) -> None:
    parts = [f"step {step}/{total}", f"loss {float(m['loss']):.4f}"]
    if "step_time" in m:
        parts += [f"{m['step_time']:.3f} s/step", f"{m['examples_per_second']:.0f} ex/s",
                  f"{m['tflops_per_device']:.3g} TFLOP/s/device", f"MFU {100 * m['mfu']:.1f}%",
                  f"ETA {format_duration((total - step) * m['step_time'])}"]
    parts.append(f"lr {float(m['learning_rate']):.3g}")
    log.info(" | ".join(parts))
