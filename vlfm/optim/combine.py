"""Combining per-loss (per-task) gradients into one update, as optax transforms.

The trainer can hand the optimizer a dict ``{task_name: gradient_tree}`` instead of one tree. A
combiner is an ``optax.GradientTransformation`` whose ``update`` takes that dict and returns one
gradient tree, so it chains in front of any optimizer::

    optax.chain(gradient_masking("text", "image", shared=(r"encoder/.*",)), optax.adamw(1e-3))

``sum_gradients`` adds the trees (what accumulating tasks into one update means).
``gradient_masking`` is UFO's rule for two modalities sharing an encoder: over the shared
parameters ``g = M * g_first + (1 - M) * g_second`` with a binary mask ``M`` per element; every
other parameter receives the sum (a parameter used by one modality only gets that modality's
gradient, since the other's is zero there). The mask lives in the optimizer state, so it is
checkpointed and restored exactly with the run.

Mask strategies (UFO's exact rule is not published as code; these are vlfm's documented choices):

- ``random``: each element goes to the first task with probability ``ratio`` (seeded, fixed unless
  ``refresh_every`` > 0, which draws a new mask every that many steps).
- ``magnitude``: lottery-ticket style; per tensor, the ``ratio`` fraction of elements with the
  largest ``|w|`` go to the first task, the rest to the second; recomputed every ``refresh_every``
  steps from the current weights (the important weights follow the task that made them large).
- ``grad_magnitude``: per element, the task whose gradient is larger *relative to that task's mean
  |gradient| over the tensor* takes it (balances the two losses' scales); recomputed every
  ``refresh_every`` steps from the current gradients, held in between.

Defaults (``random``, ``ratio=0.5``): an even, unbiased split, the simplest rule that keeps each
element's updates from being pulled two ways at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

STRATEGIES = ("random", "magnitude", "grad_magnitude")


def sum_gradients(weights: Mapping[str, float] | None = None) -> optax.GradientTransformation:
    """``{task: grads} -> sum_k weight_k * grads_k`` (weight 1 for unnamed tasks)."""
    weights = dict(weights or {})

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        _check_dict(updates)
        total = None
        for name, grads in updates.items():
            w = weights.get(name, 1.0)
            scaled = grads if w == 1.0 else jax.tree.map(lambda g: w * g, grads)
            total = scaled if total is None else jax.tree.map(jnp.add, total, scaled)
        return total, state

    return optax.GradientTransformation(init, update)


class MaskState(NamedTuple):
    mask: Any  # bool per element of each parameter; True = the first task's gradient
    count: chex.Array
    key: chex.Array


def _check_dict(updates: Any) -> None:
    if not isinstance(updates, Mapping):
        raise TypeError("a gradient combiner expects a dict {task_name: gradient_tree}")


def shared_mask_tree(params: Any, shared: Sequence[str]) -> Any:
    """True for parameters whose ``/``-joined path matches one of the ``shared`` regexes."""
    compiled = [re.compile(p) for p in shared]
    flat = traverse_util.flatten_dict(params, sep="/")
    return traverse_util.unflatten_dict({k: any(c.fullmatch(k) for c in compiled) for k in flat}, sep="/")


def _top_fraction(score: jax.Array, ratio: float) -> jax.Array:
    """Boolean mask of the ``ratio`` share of elements with the largest score (per tensor)."""
    n = score.size
    k = int(round(ratio * n))
    if k <= 0:
        return jnp.zeros(score.shape, bool)
    if k >= n:
        return jnp.ones(score.shape, bool)
    threshold = jnp.sort(score.ravel())[n - k]
    return score >= threshold


def gradient_masking(first: str, second: str, *, shared: Sequence[str] = (r"encoder/.*",), strategy: str = "random",
                     ratio: float = 0.5, refresh_every: int = 0, seed: int = 0) -> optax.GradientTransformation:
    """UFO gradient masking between tasks ``first`` and ``second`` over the ``shared`` parameters."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown gradient-masking strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")

    def random_masks(key, params):
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(key, len(leaves))
        return treedef.unflatten([jax.random.bernoulli(k, ratio, p.shape) for k, p in zip(keys, leaves)])

    def magnitude_masks(params):
        return jax.tree.map(lambda p: _top_fraction(jnp.abs(p.astype(jnp.float32)), ratio), params)

    def grad_masks(g_first, g_second):
        def one(a, b):
            a = jnp.abs(a.astype(jnp.float32))
            b = jnp.abs(b.astype(jnp.float32))
            return a / (jnp.mean(a) + 1e-12) >= b / (jnp.mean(b) + 1e-12)
        return jax.tree.map(one, g_first, g_second)

    def init(params):
        key = jax.random.key(seed)
        if strategy == "random":
            mask = random_masks(key, params)
        elif strategy == "magnitude":
            mask = magnitude_masks(params)
        else:  # set from the first gradients, at step 0
            mask = jax.tree.map(lambda p: jnp.zeros(p.shape, bool), params)
        return MaskState(mask=mask, count=jnp.zeros((), jnp.int32), key=jax.random.key_data(key))

    def update(updates, state, params=None):
        _check_dict(updates)
        missing = {first, second} - set(updates)
        extra = set(updates) - {first, second}
        if missing or extra:
            raise KeyError(f"gradient_masking combines tasks {first!r} and {second!r}; got {sorted(updates)}")
        g_first, g_second = updates[first], updates[second]
        refresh = (refresh_every > 0) & (state.count % max(refresh_every, 1) == 0) & (state.count > 0)
        mask = state.mask
        if strategy == "random" and refresh_every > 0:
            new_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.count)
            mask = jax.lax.cond(refresh, lambda: random_masks(new_key, mask), lambda: mask)
        elif strategy == "magnitude" and refresh_every > 0:
            if params is None:
                raise ValueError("magnitude masking needs params passed to update()")
            mask = jax.lax.cond(refresh, lambda: magnitude_masks(params), lambda: mask)
        elif strategy == "grad_magnitude":
            first_step = state.count == 0
            mask = jax.lax.cond(first_step | refresh, lambda: grad_masks(g_first, g_second), lambda: mask)
        is_shared = shared_mask_tree(g_first, shared)

        def combine(gf, gs, m, s):
            return jnp.where(m, gf, gs) if s else gf + gs

        combined = jax.tree.map(combine, g_first, g_second, mask, is_shared)
        return combined, MaskState(mask=mask, count=state.count + 1, key=state.key)

    return optax.GradientTransformation(init, update)


def build_combiner(cfg: Mapping[str, Any] | None, task_weights: Mapping[str, float]) -> optax.GradientTransformation:
    """``cfg``: None / ``{"name": "sum"}`` or ``{"name": "gradient_masking", first, second, shared, ...}``."""
    cfg = dict(cfg or {})
    name = cfg.pop("name", "sum")
    if name == "sum":
        if cfg:
            raise KeyError(f"unknown keys {sorted(cfg)} for the sum combiner")
        return sum_gradients(task_weights)
    if name == "gradient_masking":
        return gradient_masking(**cfg)
    raise KeyError(f"unknown gradient combiner {name!r}; valid: sum, gradient_masking")
