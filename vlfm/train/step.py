"""The jitted train step: per-task losses and gradients, teachers, accumulation, one optimizer update.

``make_train_step`` builds ``(state, batches, teacher_params) -> (state, metrics)`` for the tasks that
run together in one step (one task, or all of them under the ``accumulate`` schedule). Each task's
gradient is computed separately and handed to the optimizer as ``{task: gradients}``: the first
transform of the optimizer chain (a combiner from ``vlfm.optim.combine``) turns them into one tree.

The model is called through the task's ``forward`` (``vlfm.train.forward.Forward``): its method, in
training mode, with one key per declared random stream (``dropout``, ``masking``, ``sampling`` by
default) folded from ``(seed, step, task index, micro-batch)``, its constants as keyword arguments
(never in the batch, which accumulation splits), ``task=<name>`` when the forward asks for it, and
its mutable collections added to the outputs under their names. Teachers run in eval mode.

Refused combinations (each would silently train something else than configured):

- a task ``lr_multiplier`` other than 1 for tasks that share one update (``accumulate`` schedule):
  under Adam a scaled gradient is not a scaled update, and one update cannot be split by task; use
  ``optimizer.lr_multipliers`` (per parameter group) instead;
- ``grad_accum_steps > 1`` with a loss whose pairs the model draws from the batch
  (``negatives_from_batch`` in ``vlfm.losses.registry``: ITM): each micro-batch would draw from
  ``B / k`` rows.

Accumulation with a loss that couples the examples through the outputs (``couples_batch``: the
contrastive losses) uses open_clip's feature cache, so it equals the full-batch loss and gradient:
a first pass computes every micro-batch's outputs without gradient; then each micro-batch recomputes
its own outputs with gradient and the loss is taken over the whole batch, its rows live and the
other rows from the cache. Batch-major outputs (leading dimension = micro-batch size) are spliced
by row; scalar outputs (``logit_scale``) are live in every micro-batch with ``1 / k`` of their
gradient each; any other output shape is refused, naming it. It costs one extra forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vlfm.data.normalization import device_normalize
from vlfm.optim import ema_update
from vlfm.optim.freezing import apply_stateless, freeze
from vlfm.train.momentum import Momentum
from vlfm.train.tasks import Task
from vlfm.train.teachers import Teacher, teacher_outputs


def check_step_tasks(tasks: Sequence[Task], accum_steps: int) -> None:
    """Refuses the combinations the step cannot honour (see the module docstring), naming the task."""
    if len(tasks) > 1:
        for task in tasks:
            if task.lr_multiplier != 1.0:
                raise ValueError(
                    f"task {task.name!r} sets lr_multiplier={task.lr_multiplier}, but it shares one optimizer update "
                    f"with tasks {[t.name for t in tasks if t is not task]} (schedule 'accumulate'), where a per-task "
                    "learning rate is not defined; use optimizer.lr_multipliers (per parameter group) instead")
    if accum_steps > 1:
        for task in tasks:
            drawn = getattr(task.loss_fn, "negatives_from_batch", ())
            if drawn:
                raise ValueError(
                    f"task {task.name!r}: loss {', '.join(drawn)} reads pairs the model draws from the whole batch, "
                    f"so grad_accum_steps={accum_steps} would change it (each micro-batch draws from 1/{accum_steps} "
                    "of the batch); set grad_accum_steps=1 (shard the batch over more devices, or use remat instead)")


def _sum_over(fn: Callable, xs: Any) -> Any:
    """The sum of ``fn(x)`` over the leading axis of ``xs``, as a scan (one micro-batch live at a time)."""
    shapes = jax.eval_shape(fn, jax.tree.map(lambda x: x[0], xs))

    def body(carry, x):
        return jax.tree.map(jnp.add, carry, fn(x)), None

    total, _ = jax.lax.scan(body, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), xs)
    return total


def _micro_batches(batch: dict, accum_steps: int) -> dict:
    """Micro-batch j takes rows j, j+k, j+2k, ...: every data shard holds a slice of each."""
    def split(x):
        x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
        return nn.with_logical_constraint(x, (None, "activation_batch") + (None,) * (x.ndim - 2))
    return jax.tree.map(split, batch)


def _whole_batch(x: jax.Array) -> jax.Array:
    """Inverse of ``_micro_batches`` for one ``[k, B/k, ...]`` array: rows back in batch order."""
    x = x.swapaxes(0, 1)
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _splice(cached: Any, live: Any, index: jax.Array, accum_steps: int, micro_size: int) -> Any:
    """The whole batch's outputs: micro-batch ``index``'s rows live, the others from ``cached`` (``[k, ...]``)."""
    def one(path, c, x):
        if x.ndim == 0:  # shared by all rows (e.g. logit_scale): live here, 1/k of its gradient per micro-batch
            frozen = jax.lax.stop_gradient(x)
            return frozen + (x - frozen) / accum_steps
        if x.shape[0] != micro_size:
            raise ValueError(f"accumulating a loss that couples the batch caches the outputs per row, but output "
                             f"{jax.tree_util.keystr(path)} has shape {x.shape} (neither a scalar nor {micro_size} "
                             "rows of a micro-batch); set grad_accum_steps=1")
        return _whole_batch(jax.lax.dynamic_update_index_in_dim(c, x, index, 0))
    return jax.tree_util.tree_map_with_path(one, cached, live)


def all_finite(tree: Any) -> jax.Array:
    """Whether every floating-point value of ``tree`` is finite: one fused reduction inside the step."""
    flags = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.stack(flags).all() if flags else jnp.array(True)


def make_train_step(model: nn.Module, tasks: Sequence[Task], tx: optax.GradientTransformation, schedule: Callable, *,
                    seed: int, accum_steps: int = 1, ema_decay: float | None = None,
                    teachers: Mapping[str, Teacher] | None = None, prefix_metrics: bool = True,
                    momentum: Momentum | None = None) -> Callable:
    """A step over ``tasks`` (run together). A step whose loss, gradient or updated state (parameters,
    optimizer state, EMA, momentum model and queue) is not finite leaves the state unchanged and reports
    ``finite = False``, so no bad update ever reaches a checkpoint.

    With ``momentum`` (``vlfm.train.momentum``) the momentum parameters are first moved towards the
    parameters the step starts with; each momentum task's losses then see ``outputs["momentum"]`` and
    ``outputs["queue"]`` (the queue before this step), and the step's momentum outputs are enqueued after.
    With ``momentum.from_student`` the momentum model runs after the student's forward pass, on the batch
    plus the student's outputs it names (the pairs the student drew)."""
    check_step_tasks(tasks, accum_steps)
    if momentum is not None and momentum.from_student and accum_steps > 1:
        raise ValueError("config.momentum.from_student runs the momentum model on what the whole batch's student "
                         f"drew, which grad_accum_steps={accum_steps} splits; set grad_accum_steps=1")
    if momentum is not None and accum_steps > 1:
        for task in tasks:
            if momentum.runs_for(task.name) and not getattr(task.loss_fn, "couples_batch", ()):
                raise ValueError(f"task {task.name!r}: momentum outputs are computed for the whole batch, which only "
                                 "losses that couple the batch (cached accumulation) read; set grad_accum_steps=1")
    for task in tasks:
        task.forward.check(model)
    teachers = dict(teachers or {})
    base_key = jax.random.key(seed)

    def student(task: Task, params, batch, rng):
        return task.forward.apply(model, params, batch, task=task.name, train=True, rng=rng)

    def teacher(task: Task, batch, teacher_params):
        if not task.teachers:
            return {}
        return teacher_outputs(teachers, task.teachers, teacher_params, batch, task=task.name)

    def task_loss(task: Task, params, batch, rng, teacher_params, extra, late_momentum=None):
        """The task's loss and ``(metrics, momentum outputs of a late momentum run or None)``."""
        out = student(task, params, batch, rng)
        if late_momentum is not None:  # config.momentum.from_student: score what the student drew
            extra = momentum.outputs(model, task.forward, task.name, late_momentum["params"], late_momentum, batch,
                                     student=out)
        loss, metrics = task.loss_fn(dict(out, **teacher(task, batch, teacher_params), **extra), batch)
        return loss, (metrics, extra.get("momentum") if late_momentum is not None else None)

    def cached_grads(task: Task, params, batch, rng, teacher_params, extra):
        """Accumulation for losses that couple the batch: open_clip's feature cache (module docstring)."""
        micro = _micro_batches(batch, accum_steps)
        steps = jnp.arange(accum_steps)
        micro_size = jax.tree.leaves(batch)[0].shape[0] // accum_steps

        def cache(_, inputs):
            index, mb = inputs
            outputs = (student(task, params, mb, jax.random.fold_in(rng, index)), teacher(task, mb, teacher_params))
            return None, jax.lax.stop_gradient(outputs)

        _, (cached, cached_teachers) = jax.lax.scan(cache, None, (steps, micro))
        teacher_out = jax.tree.map(lambda x: x[0] if x.ndim == 1 else _whole_batch(x), cached_teachers)

        def loss(p, index, mb):
            live = student(task, p, mb, jax.random.fold_in(rng, index))
            outputs = dict(_splice(cached, live, index, accum_steps, micro_size), **teacher_out, **extra)
            return task.loss_fn(outputs, batch)

        grad_fn = jax.value_and_grad(loss, has_aux=True)
        (loss_sum, metrics), grads = _sum_over(lambda x: grad_fn(params, *x), (steps, micro))
        # Each pass takes the whole batch's loss (the same value): their gradients add up, the values average.
        return grads, *jax.tree.map(lambda x: x / accum_steps, (loss_sum, metrics))

    def task_grads(task: Task, params, batch, rng, teacher_params, extra, late_momentum=None):
        grad_fn = jax.value_and_grad(lambda p, b, r: task_loss(task, p, b, r, teacher_params, extra, late_momentum),
                                     has_aux=True)
        late_out = None
        if accum_steps == 1:
            (loss, (metrics, late_out)), grads = grad_fn(params, batch, rng)
        elif getattr(task.loss_fn, "couples_batch", ()):
            grads, loss, metrics = cached_grads(task, params, batch, rng, teacher_params, extra)
        else:
            micro = _micro_batches(batch, accum_steps)
            summed = _sum_over(lambda x: grad_fn(params, x[1], jax.random.fold_in(rng, x[0])),
                               (jnp.arange(accum_steps), micro))
            (loss, (metrics, _)), grads = jax.tree.map(lambda x: x / accum_steps, summed)
        if task.freeze:  # frozen parameters get no gradient, so optimizer moments stay put too
            grads = apply_stateless(freeze(task.freeze), grads)
        return loss, metrics, grads, late_out

    frozen = tuple(p for t in tasks for p in t.freeze)
    lr_multiplier = tasks[0].lr_multiplier if len(tasks) == 1 else 1.0

    def step_fn(state: dict, batches: Mapping[str, dict], teacher_params: Mapping[str, Any]) -> tuple[dict, dict]:
        rng = jax.random.fold_in(base_key, state["step"])
        # uint8 images (vlfm.data.normalization) become the float32 the model, teachers and losses read.
        batches = {t.name: device_normalize(batches[t.name], t.normalization) for t in tasks}
        grads, metrics, total = {}, {}, 0.0
        momentum_state = state.get("momentum")
        if momentum is not None:  # MoCo / ALBEF: move the momentum model first, then run it for this step
            momentum_state = dict(momentum_state, params=momentum.updated_params(momentum_state, state["params"]))
        enqueued = momentum_state
        for index, task in enumerate(tasks):
            extra, late = {}, None
            if momentum is not None and momentum.runs_for(task.name):
                if momentum.from_student:  # runs inside the loss, after the student
                    late = momentum_state
                else:
                    extra = momentum.outputs(model, task.forward, task.name, momentum_state["params"], momentum_state,
                                             batches[task.name])
                    enqueued = momentum.enqueue(enqueued, task.name, extra["momentum"], batches[task.name])
            loss, task_metrics, grads[task.name], late_out = task_grads(
                task, state["params"], batches[task.name], jax.random.fold_in(rng, index), teacher_params, extra, late)
            if late is not None:
                enqueued = momentum.enqueue(enqueued, task.name, late_out, batches[task.name])
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
        if momentum is not None:
            new_state["momentum"] = enqueued
        grad_norm = optax.tree.norm(grads)
        # The updated state too: an update can overflow (SGD, no clipping, a huge learning rate) while the loss
        # and gradient it came from are finite, and a checkpoint must never hold Inf/NaN.
        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm) & all_finite(new_state)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        metrics.update(loss=total, grad_norm=grad_norm, param_norm=optax.tree.norm(params),
                       learning_rate=schedule(state["step"]) * lr_multiplier, finite=finite)
        return new_state, metrics

    return step_fn
