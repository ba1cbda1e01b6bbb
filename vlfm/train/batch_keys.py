"""Which batch keys a task sends to the devices: those its model and losses declare they read.

A model declares ``INPUTS``, a mapping from a method name (``"__call__"`` for the plain call) to the
batch keys that method reads; a loss declares the keys it reads with ``vlfm.losses.registry.reads_batch``
(``combined_loss`` takes the union). Other keys of the data (the shapes data's ``label`` / ``shape`` /
``color`` / ... next to a CLIP pair) stay on the host, so no bandwidth or device memory is spent on them.
The default is every key: a model or loss without a declaration, a task with teachers or a momentum
model (they read the batch too), or a forward method the model does not list keeps the whole batch.
A declared key the data does not give fails at start-up, naming it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import flax.linen as nn


def needed_keys(model: nn.Module, method: str | None, loss_fn: Any, *, reads_batch_elsewhere: bool = False
                ) -> frozenset[str] | None:
    """The batch keys the task's model method and losses read, or None (every key: nothing declared)."""
    if reads_batch_elsewhere:
        return None
    inputs = getattr(model, "INPUTS", None)
    model_keys = None if inputs is None else inputs.get(method or "__call__")
    loss_keys = getattr(loss_fn, "batch_keys", None)
    if model_keys is None or loss_keys is None:
        return None
    return frozenset(model_keys) | frozenset(loss_keys)


def check_available(task: str, needed: Collection[str] | None, available: Collection[str]) -> None:
    """Fails naming the keys the model or losses read that the task's data does not give."""
    missing = sorted(set(needed or ()) - set(available))
    if missing:
        raise KeyError(f"task {task!r}: the model and losses read batch keys {missing}, which the data does not "
                       f"give (it gives {sorted(available)})")


def select(batch: Mapping[str, Any], keys: Collection[str] | None) -> dict:
    """The keys of ``batch`` to send to the devices (all of them when ``keys`` is None)."""
    return dict(batch) if keys is None else {k: v for k, v in batch.items() if k in keys}


def name_undeclared_key(error: KeyError, dropped: Mapping[str, Collection[str]]) -> None:
    """Raises a KeyError naming the task and the declarations when ``error`` (from tracing the step) is about
    a key that ``dropped`` (task -> keys left on the host) holds; returns otherwise, for the caller to re-raise."""
    key = error.args[0] if error.args else None
    for task, keys in dropped.items():
        if key in keys:
            raise KeyError(f"task {task!r}: the model or a loss read batch key {key!r}, which stays on the host "
                           "because the model's INPUTS and the losses' reads_batch do not list it; declare it "
                           "there") from error
