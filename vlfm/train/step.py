"""The jitted train step: per-task losses and gradients, teachers, accumulation, one optimizer update.

``make_train_step`` builds ``(state, batches, teacher_params) -> (state, metrics)`` for the tasks that
run together in one step (one task, or all of them under the ``accumulate`` schedule). Each task's
gradient is computed separately and handed to the optimizer as ``{task: gradients}``: the first
transform of the optimizer chain (a combiner from ``vlfm.optim.combine``) turns them into one tree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vlfm.optim import ema_update
from vlfm.optim.freezing import apply_stateless, freeze
from vlfm.train.tasks import Task
from vlfm.train.teachers import Teacher, teacher_outputs


def _micro_batches(batch: dict, accum_steps: int) -> dict:
    """Micro-batch j takes rows j, j+k, j+2k, ...: every data shard holds a slice of each."""
    def split(x):
        x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
        return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))
    return jax.tree.map(split, batch)


def make_train_step(model: nn.Module, tasks: Sequence[Task], tx: optax.GradientTransformation, schedule: Callable, *,
                    seed: int, accum_steps: int = 1, ema_decay: float | None = None,
                    teachers: Mapping[str, Teacher] | None = None, prefix_metrics: bool = True) -> Callable:
    """A step over ``tasks`` (run together). A step whose loss or gradient is not finite leaves the
    state unchanged and reports ``finite = False``, so no bad update ever reaches a checkpoint."""
    teachers = dict(teachers or {})
    base_key = jax.random.key(seed)

    def task_loss(task: Task, params, batch, rng, teacher_params):
        outputs = model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
        if task.teachers:
            outputs = dict(outputs, **teacher_outputs(teachers, task.teachers, teacher_params, batch))
        return task.loss_fn(outputs, batch)

    def task_grads(task: Task, params, batch, rng, teacher_params):
        grad_fn = jax.value_and_grad(lambda p, b, r: task_loss(task, p, b, r, teacher_params), has_aux=True)
        if accum_steps == 1:
            (loss, metrics), grads = grad_fn(params, batch, rng)
        else:
            micro = _micro_batches(batch, accum_steps)

            def body(carry, inputs):
                index, mb = inputs
                (l, m), g = grad_fn(params, mb, jax.random.fold_in(rng, index))
                return jax.tree.map(jnp.add, carry, (g, l, m)), None

            shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
            zeros = jax.tree.map(jnp.zeros_like, (shapes[1], shapes[0][0], shapes[0][1]))
            (grads, loss, metrics), _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
            grads, loss, metrics = jax.tree.map(lambda x: x / accum_steps, (grads, loss, metrics))
        if task.freeze:  # frozen parameters get no gradient, so optimizer moments stay put too
            grads = apply_stateless(freeze(task.freeze), grads)
        return loss, metrics, grads

    frozen = tuple(p for t in tasks for p in t.freeze)
    lr_multiplier = tasks[0].lr_multiplier if len(tasks) == 1 else 1.0

    def step_fn(state: dict, batches: Mapping[str, dict], teacher_params: Mapping[str, Any]) -> tuple[dict, dict]:
        rng = jax.random.fold_in(base_key, state["step"])
        grads, metrics, total = {}, {}, 0.0
        for index, task in enumerate(tasks):
            loss, task_metrics, grads[task.name] = task_grads(task, state["params"], batches[task.name],
                                                              jax.random.fold_in(rng, index), teacher_params)
            prefix = f"{task.name}/" if prefix_metrics else ""
            metrics.update({f"{prefix}{k}": v for k, v in task_metrics.items()})
            metrics[f"{prefix}task_loss"] = loss
            metrics[f"{prefix}grad_norm"] = optax.tree.norm(grads[task.name])
            total = total + task.weight * loss
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        if lr_multiplier != 1.0:
            updates = jax.tree.map(lambda u: lr_multiplier * u, updates)
        if frozen:  # and no update at all (weight decay included)
            updates = apply_stateless(freeze(frozen), updates)
        params = optax.apply_updates(state["params"], updates)
        new_state = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
        if ema_decay is not None:
            new_state["ema_params"] = ema_update(state["ema_params"], params, ema_decay)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        metrics.update(loss=total, grad_norm=grad_norm, param_norm=optax.tree.norm(params),
                       learning_rate=schedule(state["step"]) * lr_multiplier, finite=finite)
        return new_state, metrics

    return step_fn
