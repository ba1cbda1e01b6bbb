"""Momentum (EMA) encoders and queues of their embeddings, as part of the train state.

``config.momentum`` (all off while ``decay`` is None):

- ``decay``: the momentum model's parameters follow the student's, ``m <- decay * m + (1 - decay) * p``,
  updated at the start of each step from the parameters the step starts with, then used for that step
  (MoCo, ALBEF). They start as a copy of the student's (also after ``init_from``);
- ``queue_size``: rows in the queue (0: no queue). It must be a multiple of every task's batch size, so
  each step writes one contiguous block;
- ``queue_keys``: what the queue keeps per row, each a momentum-model output (``image_embed``, ...)
  or, failing that, a batch key (``label``, an image id). The queue holds the global batch, in batch
  order, from the momentum model (never the student), as MoCo and ALBEF keep it;
- ``tasks``: the tasks whose steps run the momentum model and enqueue (empty: every task);
- ``from_student``: student outputs the momentum model receives as batch entries, so it scores what the
  student drew (``itm_neg_image``, ``itm_neg_text``: the student's hard-negative ITM pairs, for
  momentum-distilled ranking losses, R2D2's TgD). The momentum model then runs after the student's
  forward pass (inside the loss, without gradient) instead of before it; the queue is filled from that run.

The losses of those tasks see ``outputs["momentum"]`` (the momentum model's outputs for the batch, in
eval mode, without gradient) and ``outputs["queue"]`` (the queue before this step's rows are added:
``{key: [queue_size, ...], "valid": bool [queue_size]}``; a slot is valid once written).

The state gains ``state["momentum"] = {"params", "queue", "ptr"}``: the momentum parameters carry the
student's logical axes, the queue rows the batch's (``activation_batch``), so both are sharded by the
mesh rules like everything else, and they are checkpointed and restored with the state, which makes a
resumed run see the same queue as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlfm.optim import ema_update
from vlfm.train.forward import Forward

MOMENTUM_KEYS = ("decay", "queue_size", "queue_keys", "tasks", "from_student")
QUEUE_AXIS = "activation_batch"


@dataclasses.dataclass(frozen=True)
class Momentum:
    """The parsed ``config.momentum`` (see the module docstring)."""

    decay: float
    queue_size: int = 0
    queue_keys: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    from_student: tuple[str, ...] = ()

    def __post_init__(self):
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"config.momentum.decay must be in [0, 1], got {self.decay}")
        if self.queue_size < 0:
            raise ValueError(f"config.momentum.queue_size must be >= 0, got {self.queue_size}")
        if self.queue_size and not self.queue_keys:
            raise ValueError("config.momentum.queue_size > 0 needs queue_keys (e.g. ['image_embed', 'text_embed'])")
        if self.queue_keys and not self.queue_size:
            raise ValueError(f"config.momentum.queue_keys {list(self.queue_keys)} need queue_size > 0")
        if "valid" in self.queue_keys:
            raise ValueError("config.momentum.queue_keys may not name 'valid' (the queue's own slot mask)")

    def runs_for(self, task: str) -> bool:
        return not self.tasks or task in self.tasks

    def check_tasks(self, names: Sequence[str]) -> None:
        unknown = sorted(set(self.tasks) - set(names))
        if unknown:
            raise KeyError(f"config.momentum.tasks names unknown tasks {unknown}; tasks: {', '.join(names)}")

    def check_batch_size(self, task: str, batch_size: int) -> None:
        if self.queue_size and self.queue_size % batch_size:
            raise ValueError(f"config.momentum.queue_size={self.queue_size} must be a multiple of task {task!r}'s "
                             f"batch size {batch_size} (each step writes one contiguous block)")

    # -- state ------------------------------------------------------------------------------------------

    def init_state(self, model: nn.Module, params: Any, tasks: Sequence[tuple[str, Mapping[str, np.ndarray],
                                                                           Forward]]) -> dict:
        """``state["momentum"]`` (boxed like ``params``): a copy of the parameters, an empty queue whose row
        shapes come from the momentum outputs (or batch) of the first task that gives each key."""
        state: dict[str, Any] = {"params": jax.tree.map(lambda x: x, params)}
        if not self.queue_size:
            return state
        rows: dict[str, jax.ShapeDtypeStruct] = {}
        plain = nn.meta.unbox(params)
        for name, batch, forward in tasks:
            if not self.runs_for(name):
                continue
            outs = jax.eval_shape(lambda p, b: forward.apply(model, p, b, task=name, train=False), plain, dict(batch))
            for key in self.queue_keys:
                if key in rows:
                    continue
                source = outs.get(key) if isinstance(outs, Mapping) else None
                if source is None and key in batch:
                    source = jax.ShapeDtypeStruct(np.shape(batch[key]), np.asarray(batch[key]).dtype)
                if source is not None:
                    rows[key] = jax.ShapeDtypeStruct(source.shape[1:], source.dtype)
        missing = [k for k in self.queue_keys if k not in rows]
        if missing:
            raise KeyError(f"config.momentum.queue_keys {missing} are neither momentum-model outputs nor batch keys "
                           "of any momentum task")
        queue = {k: _boxed(jnp.zeros((self.queue_size, *s.shape), s.dtype)) for k, s in rows.items()}
        queue["valid"] = _boxed(jnp.zeros((self.queue_size,), bool))
        state.update(queue=queue, ptr=jnp.zeros((), jnp.int32))
        return state

    # -- step -------------------------------------------------------------------------------------------

    def updated_params(self, momentum_state: dict, params: Any) -> Any:
        return ema_update(momentum_state["params"], params, self.decay)

    def outputs(self, model: nn.Module, forward: Forward, task: str, momentum_params: Any, momentum_state: dict,
                batch: Mapping[str, Any], student: Mapping[str, Any] | None = None) -> dict:
        """What the task's losses see: ``momentum`` (the momentum model's outputs) and ``queue`` (if any).
        With ``from_student``, ``student`` are the student's outputs whose ``from_student`` keys join the batch."""
        if self.from_student:
            missing = [k for k in self.from_student if student is None or k not in student]
            if missing:
                raise KeyError(f"config.momentum.from_student: task {task!r}'s student gives no {missing} (outputs: "
                               f"{sorted(student or {})})")
            batch = dict(batch, **{k: jax.lax.stop_gradient(student[k]) for k in self.from_student})
        out = forward.apply(model, momentum_params, batch, task=task, train=False)
        extra = {"momentum": jax.lax.stop_gradient(out)}
        if self.queue_size:
            extra["queue"] = dict(momentum_state["queue"])
        return extra

    def enqueue(self, momentum_state: dict, task: str, momentum_out: Mapping[str, Any],
                batch: Mapping[str, Any]) -> dict:
        """The queue with this step's global batch written at ``ptr`` (oldest rows overwritten)."""
        if not self.queue_size:
            return momentum_state
        queue, ptr = dict(momentum_state["queue"]), momentum_state["ptr"]
        size = None
        for key in self.queue_keys:
            rows = momentum_out[key] if key in momentum_out else batch.get(key)
            if rows is None:
                raise KeyError(f"config.momentum.queue_keys: task {task!r} gives no {key!r} (momentum outputs: "
                               f"{sorted(momentum_out)}; batch keys: {sorted(batch)})")
            rows = jax.lax.stop_gradient(jnp.asarray(rows)).reshape(-1, *queue[key].shape[1:])
            size = rows.shape[0]
            self.check_batch_size(task, size)
            queue[key] = jax.lax.dynamic_update_slice_in_dim(queue[key], rows.astype(queue[key].dtype), ptr, 0)
        queue["valid"] = jax.lax.dynamic_update_slice_in_dim(queue["valid"], jnp.ones((size,), bool), ptr, 0)
        return dict(momentum_state, queue=queue, ptr=(ptr + size) % self.queue_size)


def _boxed(x: jax.Array) -> nn.LogicallyPartitioned:
    """Queue rows are sharded like batch rows."""
    return nn.LogicallyPartitioned(x, (QUEUE_AXIS,) + (None,) * (x.ndim - 1))


def build_momentum(cfg: Mapping[str, Any] | None) -> Momentum | None:
    """``config.momentum`` -> ``Momentum``, or None while ``decay`` is None; unknown keys fail naming the valid."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(MOMENTUM_KEYS))
    if unknown:
        raise KeyError(f"config.momentum has unknown keys {unknown}; valid keys: {', '.join(MOMENTUM_KEYS)}")
    if cfg.get("decay") is None:
        extra = sorted(k for k in ("queue_size", "queue_keys", "tasks", "from_student") if cfg.get(k))
        if extra:
            raise ValueError(f"config.momentum sets {extra} but no decay: set config.momentum.decay to use them")
        return None
    keys = cfg.get("queue_keys") or ()
    tasks = cfg.get("tasks") or ()
    follow = cfg.get("from_student") or ()
    for what, value in (("queue_keys", keys), ("tasks", tasks), ("from_student", follow)):
        if isinstance(value, str):
            raise TypeError(f"config.momentum.{what} must be a list of names, got the string {value!r}")
    return Momentum(decay=float(cfg["decay"]), queue_size=int(cfg.get("queue_size") or 0),
                    queue_keys=tuple(keys), tasks=tuple(tasks), from_student=tuple(follow))
