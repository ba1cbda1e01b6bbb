"""Per-group learning-rate multipliers as an optax transform (METER / BridgeTower: x5 for the
cross-modal layers and the heads, x50 for a VQA head when fine-tuning)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import jax
import optax
from flax import traverse_util

Patterns = Mapping[str, float] | Sequence[tuple[str, float]]


def _pairs(patterns: Patterns) -> list[tuple[re.Pattern, float]]:
    items = patterns.items() if isinstance(patterns, Mapping) else patterns
    return [(p if isinstance(p, re.Pattern) else re.compile(p), float(m)) for p, m in items]


def multiplier_for(path: str, patterns: Patterns) -> float:
    """The multiplier of the first pattern that fully matches the ``/``-joined parameter path, else 1."""
    return next((m for p, m in _pairs(patterns) if p.fullmatch(path)), 1.0)


def scale_by_path(scale_for: Callable[[str, jax.Array], jax.Array]) -> optax.GradientTransformation:
    """A stateless transform that replaces each update by ``scale_for(path, update)``, ``path`` being the
    ``/``-joined parameter path: the shape of every per-group scaling (multipliers, layer-wise decay)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        flat = traverse_util.flatten_dict(updates, sep="/")
        return traverse_util.unflatten_dict({k: scale_for(k, v) for k, v in flat.items()}, sep="/"), state

    return optax.GradientTransformation(init, update)


def lr_multipliers(patterns: Patterns) -> optax.GradientTransformation:
    """Scales each parameter's update by the multiplier of the first regex that fully matches its
    ``/``-joined path (``{"fusion_layers/.*": 5.0, "(itm|mlm|vqa)_head/.*": 5.0}``); unmatched
    parameters keep theirs. Chained after an optimizer, it multiplies that parameter group's learning
    rate (and, for AdamW, its decoupled weight decay, as a torch parameter-group ``lr`` does).
    Stateless; patterns are tried in order, so list specific ones first."""
    pairs = _pairs(patterns)

    def scale(path: str, update: jax.Array) -> jax.Array:
        m = multiplier_for(path, pairs)
        return update if m == 1.0 else update * m

    return scale_by_path(scale)
