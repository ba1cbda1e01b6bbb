"""The one training loop: config -> mesh, model, tasks, optimizer -> steps, logs, evals, checkpoints.

Every model family runs through ``train``; what differs between them lives in the config (model,
tasks with their data and losses, teachers, evaluators), never in a copy of this loop.
"""

from __future__ import annotations

import dataclasses
import logging
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
from etils import epath

from vlfm.data import to_global
from vlfm.models import build_model
from vlfm.optim import build_optimizer
from vlfm.optim.combine import build_combiner
from vlfm.core import flops as flops_lib
from vlfm.core.checkpoint import Checkpointer, export_params
from vlfm.core.metrics_writer import MetricWriter, format_duration
from vlfm.core.sharding import batch_sharding, data_parallel_size, make_mesh, rules_from_config
from vlfm.core.tree import count_params
from vlfm.core.workdir_lock import LeaseLock, LocalLock, WorkdirInUseError, lock_workdir
from vlfm.train import aot, distributed
from vlfm.train.batch_keys import check_available, name_undeclared_key, needed_keys, select
from vlfm.train.config import config_record, save_workdir_config, validate_config
from vlfm.train.evaluation import build_evaluators, make_predict_fns, run_evaluators
from vlfm.train.init_from import has_source, init_params_from
from vlfm.train.input_feed import InputFeed
from vlfm.train.state import TaskInit, init_batch, sharded_init, state_initializer
from vlfm.train.step import make_train_step
from vlfm.train.tasks import TaskIterators, TaskSchedule, build_iterators, build_tasks
from vlfm.train.teachers import build_teachers
from vlfm.train.momentum import build_momentum

log = logging.getLogger("vlfm")


class NonFiniteLossError(RuntimeError):
    """The loss, gradient or updated state became NaN/Inf; the run stopped and the last good checkpoint was kept."""


def train(config: ml_collections.ConfigDict, workdir: str, dry_run: bool = False) -> dict[str, float]:
    """Trains (or resumes) in ``workdir``; returns the last logged and evaluated metrics.

    With ``dry_run`` it only compiles the step ahead of time for the configured mesh and returns the
    per-device memory and FLOPs (raising ``WillNotFitError`` when it cannot fit). Another run holding
    ``workdir`` raises ``WorkdirInUseError`` naming it, before anything is built.
    """
    validate_config(config)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # local or gs://...: one filesystem layer (epath)
    lock = _lock_workdir(workdir)
    try:
        return _train(config, workdir, dry_run)
    finally:
        if lock is not None:
            lock.release()


def _lock_workdir(workdir: str) -> LocalLock | LeaseLock | None:
    """Process 0 takes the workdir (``vlfm.core.workdir_lock``); every process learns its outcome."""
    lock, refusal = None, ""
    if jax.process_index() == 0:
        try:
            lock = lock_workdir(workdir)
        except WorkdirInUseError as e:
            refusal = str(e)
    refusal = distributed.broadcast_text(refusal)
    if refusal:
        raise WorkdirInUseError(refusal if jax.process_index() == 0 else f"process 0 could not start: {refusal}")
    return lock


def _train(config: ml_collections.ConfigDict, workdir: str, dry_run: bool) -> dict[str, float]:
    mesh = make_mesh(config.mesh.shape, dcn_shape=config.mesh.get("dcn_shape"))
    rules = rules_from_config(config.mesh.get("rules", ()))
    model = build_model(config.model)
    tasks = build_tasks(config)
    schedule = TaskSchedule(config.get("schedule", "round_robin"), tasks, seed=config.seed)
    base_tx, lr_schedule = build_optimizer(config.optimizer, config.total_steps)
    tx = optax.chain(build_combiner(config.get("gradient_combiner"), {t.name: t.weight for t in tasks}), base_tx)
    accum = int(config.grad_accum_steps)
    dp = data_parallel_size(mesh)
    for task in tasks:
        if task.batch_size % (dp * accum):
            raise ValueError(f"task {task.name}: batch size {task.batch_size} must be divisible by data-parallel "
                             f"size {dp} x accumulation steps {accum}")
    momentum = build_momentum(config.get("momentum"))
    if momentum is not None:
        momentum.check_tasks([t.name for t in tasks])
        for task in tasks:
            if momentum.runs_for(task.name):
                momentum.check_batch_size(task.name, task.batch_size)
    on_device = bool(config.data.get("normalize_on_device", True))  # uint8 images, normalised in the step
    data_it = build_iterators(tasks, config.seed, num_workers=config.data.get("num_workers", 0),
                              normalize_on_device=on_device)
    examples = {t.name: t.example() for t in tasks}
    # Only the keys a task's model and losses read go to the devices (vlfm.train.batch_keys).
    device_keys = {t.name: needed_keys(model, t.forward.method, t.loss_fn, reads_batch_elsewhere=bool(
        t.teachers or (momentum is not None and momentum.runs_for(t.name)))) for t in tasks}
    dropped = {}
    for t in tasks:
        check_available(t.name, device_keys[t.name], examples[t.name])
        dropped[t.name] = sorted(set(examples[t.name]) - set(device_keys[t.name] or examples[t.name]))
        if dropped[t.name]:
            log.info("task %s: batch keys %s stay on the host (the model and losses read %s)", t.name,
                     ", ".join(dropped[t.name]), ", ".join(sorted(device_keys[t.name])))
    teacher_example = {}  # teachers are built from one example holding every task's keys
    for example in examples.values():
        teacher_example.update(example)
    writer = MetricWriter(workdir)

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        # Every task initialises the parameters its own forward uses, each with its own example shapes.
        init = state_initializer(model, tx, ema=config.ema_decay is not None,
                                 tasks=[TaskInit(t.name, init_batch(examples[t.name], dp), t.forward) for t in tasks],
                                 momentum=momentum)
        state, shardings, abstract = sharded_init(init, jax.random.key(config.seed), mesh, rules)
        n_params = count_params(state["params"])
        teachers = build_teachers(config.get("teachers", {}), init_batch(teacher_example, dp), mesh, rules)
        teacher_params = {name: t.params for name, t in teachers.items()}
        by_name = {t.name: t for t in tasks}
        step_fns = {}
        for kind in schedule.step_kinds():
            fn = make_train_step(model, [by_name[n] for n in kind], tx, lr_schedule, seed=config.seed,
                                 accum_steps=accum, ema_decay=config.ema_decay, teachers=teachers,
                                 prefix_metrics=len(tasks) > 1, momentum=momentum)
            replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            step_fns[kind] = jax.jit(fn, in_shardings=(shardings, None, None), out_shardings=(shardings, replicated),
                                     donate_argnums=0)
        task_flops = {t.name: t.step_flops(model, config.model, abstract["params"], config.flops, teachers,
                                           teacher_params, momentum, abstract.get("momentum")) for t in tasks}
        if dry_run:
            log.info("model %s: %s parameters (dry run)", config.model.name, f"{n_params:,}")
            report = _dry_run(task_flops, step_fns, schedule, by_name, abstract, teacher_params, mesh,
                              {t.name: t.normalizes_on_device(on_device) for t in tasks}, device_keys)
            report["num_params"] = float(n_params)
            writer.close()
            return report
        if jax.process_index() == 0:
            save_workdir_config(config, workdir)  # the resolved config + code version, for export / teachers

        checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                                    save_every=config.checkpoint_every, async_save=config.async_checkpoints)
        results: dict[str, float] = {"num_params": float(n_params)}
        try:
            if checkpointer.latest_step() is not None:
                state, _ = checkpointer.restore(abstract, data_iterator=data_it)
                log.info("resumed from step %d in %s", int(state["step"]), workdir)
            elif has_source(config.init_from):
                state = start_from(config.init_from, state, tx, shardings)
            start_step = int(jax.device_get(state["step"]))
            evaluators = build_evaluators(config, make_predict_fns(model, mesh))
            peak, peak_source = flops_lib.peak_flops_per_device(
                config.peak_tflops * 1e12 if config.peak_tflops else None)
            if peak is None:
                peak, peak_source = flops_lib.measure_matmul_flops("float32", n=1024, reps=5), "measured f32 matmul"
            log.info("model %s: %s parameters; tasks %s (schedule %s); peak %.3g FLOP/s per device (%s); mesh %s",
                     config.model.name, f"{n_params:,}", ", ".join(by_name), schedule.name, peak, peak_source,
                     dict(mesh.shape))
            loop = _Loop(config, workdir, mesh, step_fns, schedule, data_it, teacher_params, evaluators, checkpointer,
                         writer, task_flops, peak, {t.name: t.batch_size for t in tasks}, device_keys, dropped)
            state, final_step = loop.run(state, start_step, results)
            if config.export_params and final_step == config.total_steps:
                export_params(state["params"], os.path.join(workdir, "params"))
        finally:
            checkpointer.close()
    writer.close()
    return results


def start_from(init_from: Mapping[str, Any], state: dict, tx: optax.GradientTransformation, shardings: Any) -> dict:
    """A fresh state whose parameters (and EMA) start from ``config.init_from``."""
    state = dict(state, params=init_params_from(init_from, state["params"]))
    # Optimizer state that depends on the parameters (e.g. magnitude masks) follows the loaded ones.
    state["opt_state"] = jax.jit(tx.init, out_shardings=shardings["opt_state"])(state["params"])
    if "ema_params" in state:  # the EMA starts at the loaded parameters, not at the random init
        # A copy (own buffers): the step donates the state, and one buffer cannot be donated twice.
        def copy(params, ema):
            return jax.tree.map(lambda p, e: jnp.array(p, e.dtype, copy=True), params, ema)

        state["ema_params"] = jax.jit(copy, out_shardings=shardings["ema_params"])(state["params"], state["ema_params"])
    if "momentum" in state:  # so does the momentum model (vlfm.train.momentum)
        def copy_momentum(params, momentum):
            return dict(momentum, params=jax.tree.map(lambda p, e: jnp.array(p, e.dtype, copy=True), params,
                                                      momentum["params"]))

        state["momentum"] = jax.jit(copy_momentum, out_shardings=shardings["momentum"])(state["params"],
                                                                                        state["momentum"])
    return state


def _dry_run(task_flops, step_fns, schedule, tasks_by_name, abstract, teacher_params, mesh,
             on_device: Mapping[str, bool], device_keys: Mapping[str, Any]) -> dict[str, float]:
    """Compiles every step kind ahead of time; reports the largest per-device memory."""
    report: dict[str, float] = {}
    for kind, fn in step_fns.items():
        batches = {}
        for name in kind:
            task = tasks_by_name[name]
            batches[name] = {k: jax.ShapeDtypeStruct((task.batch_size, *np.shape(v)), np.asarray(v).dtype,
                                                     sharding=batch_sharding(mesh, 1 + np.ndim(v)))
                             for k, v in select(task.example(normalize=not on_device[name]),
                                                device_keys[name]).items()}
        teacher_abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                        teacher_params)
        one = aot.compile_report(fn, abstract, batches, teacher_abstract)
        one["model_flops_per_step"] = sum(task_flops[n] for n in kind)
        log.info("dry run, step %s (per device): %s", "+".join(kind), ", ".join(
            f"{k}={aot.format_bytes(v)}" if k.endswith("bytes") else f"{k}={v:.4g}" for k, v in one.items()))
        for k, v in one.items():
            report[k] = max(report.get(k, 0.0), v)
    return report


@dataclasses.dataclass
class _Loop:
    """Everything the step loop touches, built once by ``train``."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Any
    step_fns: Mapping[tuple[str, ...], Callable]
    schedule: TaskSchedule
    data_it: TaskIterators
    teacher_params: Mapping[str, Any]
    evaluators: dict
    checkpointer: Checkpointer
    writer: MetricWriter
    task_flops: Mapping[str, float]
    peak: float
    batch_sizes: Mapping[str, int]
    device_keys: Mapping[str, Any]  # per task: the batch keys sent to the devices (None: all)
    dropped: Mapping[str, list[str]]  # per task: the keys left on the host

    def run(self, state: dict, start_step: int, results: dict) -> tuple[dict, int]:
        """Steps until ``total_steps`` or a preemption; returns the final state and step."""
        config, checkpointer = self.config, self.checkpointer
        total = config.total_steps
        last_time, pending = None, None
        window = {"steps": 0, "flops": 0.0, "examples": 0}
        task_counts: dict[str, int] = {}
        record = config_record(config)  # checkpoints carry the resolved config and code version
        profile = _profile_window(config.profile_steps)
        # Multi-process CPU runs with a too small CPU thread pool deadlock when steps are queued
        # asynchronously (vlfm.train.distributed); block on each step there. Accelerators stay asynchronous.
        block_each_step = distributed.must_block_each_step()
        keys = self.device_keys
        feed = InputFeed(self.data_it, self.schedule.tasks_at,
                         lambda name, batch: to_global(select(batch, keys[name]), self.mesh), start_step=start_step,
                         total_steps=total, prefetch=int(config.data.get("prefetch_to_device", 2)))
        data_wait = feed.wait
        for step in range(start_step, total):
            if profile and step == profile[0]:
                jax.profiler.start_trace(os.path.join(self.workdir, "profile"))
            kind = self.schedule.tasks_at(step)
            batches = feed.batches(step)
            try:
                state, metrics = self.step_fns[kind](state, batches, self.teacher_params)
            except KeyError as e:  # a model or loss that reads a key its declaration leaves on the host
                name_undeclared_key(e, {n: self.dropped[n] for n in kind})
                raise
            feed.fill()  # the next steps' batches go to the devices while this one runs
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
            for name in kind:
                task_counts[name] = task_counts.get(name, 0) + 1
            if last_time is None:  # the first step includes compilation: time from its end
                jax.block_until_ready(metrics)
                log.info("first step (compile + run) done")
                last_time = time.perf_counter()
                data_wait.reset()
            else:
                window["steps"] += 1
                window["flops"] += sum(self.task_flops[n] for n in kind)
                window["examples"] += sum(self.batch_sizes[n] for n in kind)
            if done % config.log_every == 0 or done == total:
                _check_finite(*pending, checkpointer)
                host = jax.device_get(metrics)
                now = time.perf_counter()
                if window["steps"]:
                    elapsed = now - last_time
                    step_time = elapsed / window["steps"]
                    per_device = window["flops"] / elapsed / jax.device_count()
                    host.update(step_time=step_time, examples_per_second=window["examples"] / elapsed,
                                tflops_per_device=per_device / 1e12, mfu=per_device / self.peak,
                                **data_wait.report(window["steps"], elapsed))
                if len(self.step_fns) > 1:
                    host.update({f"steps/{n}": c for n, c in task_counts.items()})
                data_stats = feed.stats()  # bad-data and mixing counters (data/...) of the consumed batches
                for name, stats in data_stats.items():
                    prefix = "" if len(data_stats) == 1 else f"{name}/"
                    host.update({prefix + k: v for k, v in stats.items()})
                last_time, window = now, {"steps": 0, "flops": 0.0, "examples": 0}
                data_wait.reset()
                results.update(self.writer.write(done, {f"train/{k}": v for k, v in host.items()}))
                _log_line(done, total, host)
            eval_params = state["ema_params" if config.eval_with_ema else "params"]
            eval_metrics = run_evaluators(self.evaluators, eval_params, done, total)
            if eval_metrics:
                results.update(self.writer.write(done, eval_metrics))
                log.info("step %d eval: %s", done, ", ".join(f"{k}={v:.4g}" for k, v in eval_metrics.items()))
                last_time, window = time.perf_counter(), {"steps": 0, "flops": 0.0, "examples": 0}
                data_wait.reset()
            if done % config.checkpoint_every == 0 or done == total or checkpointer.preempted:
                _check_finite(*pending, checkpointer)  # never label a skipped (non-finite) step as saved
            checkpointer.save(done, state, data_iterator=feed, meta={"step": done, **record},
                              force=done == total)
            if checkpointer.should_stop(done):
                log.warning("preemption signal received: saved step %d and stopping", done)
                break
        if pending is not None:
            _check_finite(*pending, checkpointer)
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
        kept = f"the last good checkpoint is step {last}" if last is not None else "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"loss, gradient or updated state (parameters, optimizer state) is NaN/Inf at step {step}; the run "
            f"stopped. The state was not updated by that step; {kept}.")


def _log_line(step: int, total: int, m: Mapping[str, Any]) -> None:
    parts = [f"step {step}/{total}", f"loss {float(m['loss']):.4f}"]
    if "step_time" in m:
        parts += [f"{m['step_time']:.3f} s/step", f"{m['examples_per_second']:.0f} ex/s",
                  f"{m['tflops_per_device']:.3g} TFLOP/s/device", f"MFU {100 * m['mfu']:.1f}%",
                  f"data wait {1000 * m['data_wait_s']:.1f} ms/step ({100 * m['data_wait_fraction']:.0f}%)",
                  f"ETA {format_duration((total - step) * m['step_time'])}"]
    parts.append(f"lr {float(m['learning_rate']):.3g}")
    log.info(" | ".join(parts))
