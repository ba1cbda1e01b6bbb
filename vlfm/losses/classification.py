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


@LOSSES.register("sigmoid_xent")
def sigmoid_xent(outputs: dict, batch: dict, logits_key: str = "logits", label_key: str = "labels") -> tuple[jax.Array, dict]:
    """Binary cross-entropy of every class's sigmoid, for multi-label targets (AudioSet's loss in AST
    and PolyViT): the mean over the classes and examples of each class's own logistic loss.

    ``batch[label_key]``: multi-hot ``[B, classes]`` (any values in [0, 1]), or integer classes ``[B]``
    read as one-hot (big_vision's sigmoid training of single-label sets). Metrics: ``label_accuracy``
    (the share of (example, class) decisions right at probability 0.5) and ``positive_recall`` (of the
    positive (example, class) pairs, the share scored above 0.5)."""
    logits = outputs[logits_key].astype(jnp.float32)
    labels = batch[label_key]
    if labels.ndim == logits.ndim - 1:
        targets = jax.nn.one_hot(labels, logits.shape[-1])
    elif labels.shape == logits.shape:
        targets = labels.astype(jnp.float32)
    else:
        raise ValueError(f"sigmoid_xent: labels {labels.shape} are neither classes per example nor multi-hot "
                         f"like the logits {logits.shape}")
    loss = optax.sigmoid_binary_cross_entropy(logits, targets).mean()
    predicted, positive = logits > 0, targets > 0.5
    recall = jnp.sum(predicted & positive) / jnp.maximum(positive.sum(), 1)
    return loss, {"label_accuracy": jnp.mean(predicted == positive), "positive_recall": recall}


@LOSSES.register("masked_xent")
def masked_xent(outputs: dict, batch: dict, logits_key: str = "mlm_logits",
                target_key: str = "mlm_targets", ignore_index: int = -1) -> tuple[jax.Array, dict]:
    """Token cross-entropy over positions whose target is not ``ignore_index`` (MLM, MIM, captions).

    Targets come from the outputs when the model makes them (MIM codes of a frozen tokenizer, masks
    drawn inside the model), else from the batch (MLM targets of the data pipeline)."""
    logits = outputs[logits_key].astype(jnp.float32)
    targets = outputs[target_key] if target_key in outputs else batch[target_key]
    valid = targets != ignore_index
    safe = jnp.where(valid, targets, 0)
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    count = jnp.maximum(valid.sum(), 1)
    loss = jnp.sum(jnp.where(valid, per_token, 0.0)) / count
    correct = jnp.sum(jnp.where(valid, jnp.argmax(logits, -1) == safe, False))
    return loss, {"accuracy": correct / count, "num_targets": valid.sum().astype(jnp.float32)}
