"""Cross-entropy losses for labels and masked tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vlfm.losses.registry import LOSSES


@LOSSES.register("softmax_xent")
def softmax_xent(outputs: dict, batch: dict, logits_key: str = "logits", label_key: str = "label",
                 label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
    """Classification cross-entropy on integer labels, with top-1 accuracy."""
    logits = outputs[logits_key].astype(jnp.float32)
    labels = batch[label_key]
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        onehot = optax.smooth_labels(onehot, label_smoothing)
    loss = optax.softmax_cross_entropy(logits, onehot).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


@LOSSES.register("masked_xent")
def masked_xent(outputs: dict, batch: dict, logits_key: str = "mlm_logits",
                target_key: str = "mlm_targets", ignore_index: int = -1) -> tuple[jax.Array, dict]:
    """Token cross-entropy over positions whose target is not ``ignore_index`` (MLM, MIM, captions).
    The targets are ``outputs[target_key]`` when the model makes them (MIM codes of a frozen image
    tokenizer), else ``batch[target_key]``."""
    logits = outputs[logits_key].astype(jnp.float32)
    targets = outputs[target_key] if target_key in outputs else batch[target_key]
    valid = targets != ignore_index
    safe = jnp.where(valid, targets, 0)
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    count = jnp.maximum(valid.sum(), 1)
    loss = jnp.sum(jnp.where(valid, per_token, 0.0)) / count
    correct = jnp.sum(jnp.where(valid, jnp.argmax(logits, -1) == safe, False))
    return loss, {"accuracy": correct / count, "num_targets": valid.sum().astype(jnp.float32)}
