"""Caption cross-entropy (teacher forcing) with padding ignored, for generative models such as CoCa."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vlfm.losses.registry import LOSSES


@LOSSES.register("caption_ce")
def caption_ce(outputs: dict, batch: dict, logits_key: str = "caption_logits", labels_key: str = "caption_labels",
               pad_id: int = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-token cross-entropy over non-pad label positions.

    ``outputs[logits_key]`` is [B, L, V]; ``outputs[labels_key]`` (or ``batch[labels_key]``) is int [B, L],
    already shifted so that position i is predicted from tokens up to i. Pad labels do not count, so
    the loss does not depend on how far captions are padded.
    """
    logits = outputs[logits_key].astype(jnp.float32)
    labels = outputs[labels_key] if labels_key in outputs else batch[labels_key]
    mask = (labels != pad_id).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    count = jnp.maximum(mask.sum(), 1.0)
    loss = (ce * mask).sum() / count
    accuracy = ((jnp.argmax(logits, -1) == labels) * mask).sum() / count
    return loss, {"loss": loss, "token_accuracy": accuracy}
