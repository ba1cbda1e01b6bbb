"""The train state: a plain dict of sharded arrays, created directly in its sharded layout."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from vlfm.train.forward import Forward
from vlfm.train.momentum import Momentum

from vlfm.core.tree import strip_boxes


def init_batch(example: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """A small batch shaped like the data (parameter shapes do not depend on the batch size)."""
    return {k: np.stack([np.asarray(v)] * rows) for k, v in example.items()
            if isinstance(v, np.ndarray) or np.isscalar(v)}


@dataclasses.dataclass(frozen=True)
class TaskInit:
    """One task's share of the initialisation: its name, a small batch shaped like its data, its forward."""

    name: str
    batch: Mapping[str, np.ndarray]
    forward: Forward = dataclasses.field(default_factory=Forward)


def state_initializer(model: nn.Module, tx: optax.GradientTransformation,
                      batch: Mapping[str, np.ndarray] | None = None, ema: bool = False, *,
                      tasks: Sequence[TaskInit] = (), momentum: Momentum | None = None
                      ) -> Callable[[jax.Array], dict]:
    """``rng -> state`` with boxed (logically annotated) leaves, for ``eval_shape`` and sharded init.

    The parameters are the union of what every task's forward creates in training mode (so train-only
    modules and each task's own branch get parameters), all from one ``params`` key: a parameter two
    tasks share gets the same value from both. Give ``tasks``, or ``batch`` alone for one task with
    the default forward. ``momentum`` adds ``state["momentum"]`` (``vlfm.train.momentum``): momentum
    parameters and queue, laid out and sharded like the rest of the state.
    """
    if (batch is None) == (not tasks):
        raise ValueError("state_initializer needs exactly one of batch (one task) or tasks")
    tasks = tuple(tasks) or (TaskInit("main", batch),)

    def init(rng: jax.Array) -> dict:
        params_rng, streams_rng = jax.random.split(rng)
        params = merge_task_params({t.name: t.forward.init_params(model, params_rng, streams_rng, t.batch, task=t.name)
                                    for t in tasks})
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
        if ema:
            state["ema_params"] = jax.tree.map(lambda x: x, params)
        if momentum is not None:
            state["momentum"] = momentum.init_state(model, params, [(t.name, t.batch, t.forward) for t in tasks])
        return state

    return init


def merge_task_params(trees: Mapping[str, Any]) -> Any:
    """One parameter tree from each task's (boxed) parameters; a path two tasks create with different
    shapes or dtypes fails, naming the path and both tasks."""
    if len(trees) == 1:
        return next(iter(trees.values()))
    merged: dict[tuple, Any] = {}
    owner: dict[tuple, str] = {}
    for task, tree in trees.items():
        for path, leaf in traverse_util.flatten_dict(tree).items():
            if path in merged:
                a, b = _abstract(merged[path]), _abstract(leaf)
                if (a.shape, a.dtype) != (b.shape, b.dtype):
                    raise ValueError(
                        f"parameter {'/'.join(path)}: task {owner[path]!r} creates {a.dtype}{list(a.shape)}, task "
                        f"{task!r} {b.dtype}{list(b.shape)}; tasks sharing a parameter must give it one shape (e.g. "
                        "the same image size for a learned position embedding)")
                continue
            merged[path], owner[path] = leaf, task
    return traverse_util.unflatten_dict(merged)


def _abstract(leaf: Any) -> jax.ShapeDtypeStruct:
    value = leaf.value if isinstance(leaf, nn.meta.AxisMetadata) else leaf
    return jax.ShapeDtypeStruct(np.shape(value), value.dtype)


def sharded_init(init: Callable[[jax.Array], dict], rng: jax.Array, mesh, rules) -> tuple[dict, Any, Any]:
    """Initialises every leaf directly on its shards (no full copy on one device).

    Returns the state, its shardings, and the abstract state (ShapeDtypeStructs carrying the
    shardings: the restore target for checkpoints).
    """
    boxed = jax.eval_shape(init, rng)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            strip_boxes(boxed), shardings)
    return state, shardings, abstract
