"""Registry of losses: ``fn(outputs, batch, **cfg) -> (scalar loss, metrics dict)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

from vlfm.registry import Registry

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
LOSSES: Registry[LossFn] = Registry("loss")


def couples_batch(fn: LossFn) -> LossFn:
    """Marks a loss that couples the examples of a batch through the outputs (the batch serves as
    negatives): under gradient accumulation the train step caches the outputs of the whole batch."""
    fn.couples_batch = True
    return fn


def negatives_from_batch(fn: LossFn) -> LossFn:
    """Marks a loss whose pairs the model draws from the batch inside its forward pass (ITM): gradient
    accumulation would change them, so the train step refuses it."""
    fn.negatives_from_batch = True
    return fn


def reads_batch(*keys: str) -> Callable[[LossFn], LossFn]:
    """Declares the batch keys a loss reads (none: it reads only the model's outputs), so the trainer
    sends only the keys the model and losses read to the devices. An undeclared loss keeps every key."""
    def mark(fn: LossFn) -> LossFn:
        fn.batch_keys = tuple(keys)
        return fn
    return mark


def combined_loss(losses_cfg: Mapping[str, Mapping[str, Any]]) -> LossFn:
    """Weighted sum of the configured losses; metrics are prefixed with each loss's name.

    ``losses_cfg`` maps a loss name to its keyword arguments plus an optional ``weight``.
    """
    if not losses_cfg:
        raise ValueError(f"no loss configured; valid names: {', '.join(LOSSES.names())}")
    parts, coupled, drawn = [], [], []
    for name, cfg in losses_cfg.items():
        cfg = dict(cfg or {})
        weight = float(cfg.pop("weight", 1.0))
        parts.append((name, weight, LOSSES.get(cfg.pop("fn", name)), cfg))
        if getattr(parts[-1][2], "couples_batch", False):
            coupled.append(name)
        if getattr(parts[-1][2], "negatives_from_batch", False):
            drawn.append(name)

    def total(outputs: dict, batch: dict) -> tuple[jax.Array, dict]:
        loss, metrics = 0.0, {}
        for name, weight, fn, kwargs in parts:
            value, m = fn(outputs, batch, **kwargs)
            loss = loss + weight * value
            metrics[f"{name}/loss"] = value
            metrics.update({f"{name}/{k}": v for k, v in m.items()})
        return loss, metrics

    total.couples_batch = tuple(coupled)  # names of the losses marked as below
    declared = [getattr(fn, "batch_keys", None) for _, _, fn, _ in parts]
    # The batch keys the losses read (reads_batch); None as soon as one loss does not say.
    total.batch_keys = None if any(k is None for k in declared) else tuple(sorted({k for ks in declared for k in ks}))
    total.negatives_from_batch = tuple(drawn)
    return total
