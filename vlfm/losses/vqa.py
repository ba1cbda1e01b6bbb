"""VQA: binary cross-entropy against VQAv2 soft scores, and the VQA accuracy those scores define."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vlfm.losses.registry import LOSSES


def vqa_score(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example VQA accuracy: the soft score of the predicted answer (``min(1, #annotators / 3)``
    in VQAv2, so a prediction three annotators gave counts fully)."""
    best = jnp.argmax(logits, axis=-1)
    return jnp.take_along_axis(targets, best[..., None], axis=-1)[..., 0]


@LOSSES.register("vqa_bce")
def vqa_bce(outputs: dict, batch: dict, logits_key: str = "vqa_logits",
            target_key: str = "vqa_targets") -> tuple[jax.Array, dict]:
    """Sigmoid cross-entropy per answer against the soft scores, summed over answers and averaged over
    the batch (ViLT/BAN: ``BCEWithLogits(mean) * num_answers``)."""
    logits = outputs[logits_key].astype(jnp.float32)
    targets = batch[target_key].astype(jnp.float32)
    loss = optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1).mean()
    return loss, {"score": vqa_score(logits, targets).mean()}
