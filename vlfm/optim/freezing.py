"""Freezing parameters by path pattern, as an optax transform."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from vlfm.optim.optimizers import path_mask


def freeze(patterns: Sequence[str]) -> optax.GradientTransformation:
    """Zeroes the updates of every parameter whose ``/``-joined path matches a regex in ``patterns``.

    Put it last in a chain (after weight decay), so frozen parameters never move at all.
    """
    patterns = tuple(patterns)

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        if not patterns:
            return updates, state
        frozen = path_mask(updates, patterns, match_value=True)
        return jax.tree.map(lambda u, f: jnp.zeros_like(u) if f else u, updates, frozen), state

    return optax.GradientTransformation(init, update)


def apply_stateless(transform: optax.GradientTransformation, updates: Any, params: Any = None) -> Any:
    """Applies a transform that keeps no state (freezing, fixed scaling) outside an optax chain."""
    out, _ = transform.update(updates, transform.init(params if params is not None else updates), params)
    return out
