"""The train state: a plain dict of sharded arrays, created directly in its sharded layout."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlfm.core.tree import strip_boxes


def init_batch(example: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """A small batch shaped like the data (parameter shapes do not depend on the batch size)."""
    return {k: np.stack([np.asarray(v)] * rows) for k, v in example.items()
            if isinstance(v, np.ndarray) or np.isscalar(v)}


def state_initializer(model: nn.Module, tx: optax.GradientTransformation, batch: Mapping[str, np.ndarray],
                      ema: bool = False) -> Callable[[jax.Array], dict]:
    """``rng -> state`` with boxed (logically annotated) leaves, for ``eval_shape`` and sharded init."""

    def init(rng: jax.Array) -> dict:
        params_rng, dropout_rng = jax.random.split(rng)
        params = model.init({"params": params_rng, "dropout": dropout_rng}, batch, train=False)["params"]
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
        if ema:
            state["ema_params"] = jax.tree.map(lambda x: x, params)
        return state

    return init


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
