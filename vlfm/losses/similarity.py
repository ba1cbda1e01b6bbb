"""Every task as retrieval against a target set (Uni-Perceiver): cross-entropy over similarities."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vlfm.losses.registry import LOSSES, reads_batch

KEYS = ("query", "candidates", "logit_scale", "targets")


@LOSSES.register("similarity_xent")
@reads_batch()
def similarity_xent(outputs: dict, batch: dict, prefix: str = "", label_smoothing: float = 0.0
                    ) -> tuple[jax.Array, dict]:
    """``-log softmax_y(scale * <q, c_y>)`` over the candidates ``c``, averaged over the queries whose target
    is not negative.

    Reads ``{prefix}query [..., E]`` (normalised features of the inputs: one per example, or one per
    position), ``{prefix}candidates [N, E]`` (the normalised target set: class names, the vocabulary),
    ``{prefix}logit_scale`` (the temperature's inverse, already exponentiated) and ``{prefix}targets [...]``
    (the index of each query's candidate; negative: nothing to predict there). ``label_smoothing``
    spreads that share of the target uniformly over all candidates (Uni-Perceiver's classification
    setting: 0.1). Metrics: top-1 ``accuracy`` and ``num_targets``.
    """
    del batch
    missing = [f"{prefix}{k}" for k in KEYS if f"{prefix}{k}" not in outputs]
    if missing:
        raise KeyError(f"similarity_xent needs model outputs {missing}; outputs: {sorted(outputs)}")
    query, candidates, scale, targets = (outputs[f"{prefix}{k}"] for k in KEYS)
    logits = scale * jnp.einsum("...e,ne->...n", query.astype(jnp.float32), candidates.astype(jnp.float32))
    valid = targets >= 0
    safe = jnp.where(valid, targets, 0)
    onehot = jax.nn.one_hot(safe, logits.shape[-1])
    if label_smoothing:
        onehot = optax.smooth_labels(onehot, label_smoothing)
    per_query = optax.softmax_cross_entropy(logits, onehot)
    count = jnp.maximum(valid.sum(), 1)
    loss = jnp.sum(jnp.where(valid, per_query, 0.0)) / count
    correct = jnp.sum(jnp.where(valid, jnp.argmax(logits, -1) == safe, False))
    return loss, {"accuracy": correct / count, "num_targets": valid.sum().astype(jnp.float32)}
