"""Word-patch alignment (WPA, ViLT; from UNITER): an optimal-transport distance between the text
tokens and the image patches of each ITM pair, pulled down for matched pairs and pushed up for
mismatched ones.

The cost is the cosine distance ``C = 1 - cos(text_i, patch_j)`` over real tokens (text [CLS] and
the closing token, and the image class token, are left out). The transport plan ``T`` is the inexact
proximal point solution (IPOT: ``beta`` 0.5, 50 outer iterations, ``k`` = 1 inner) computed without
gradient; the distance is ``<C, T>`` and the loss ``(sum_pos d - sum_neg d) / n_pairs``. ViLT adds it
with weight 0.1 (set ``weight`` in the loss config).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlfm.losses.registry import LOSSES


def cosine_cost(x: jax.Array, y: jax.Array, eps: float = 1e-5) -> jax.Array:
    """``1 - cos`` between every pair of rows: ``[B, M, D], [B, N, D] -> [B, M, N]`` (torch's
    ``F.normalize`` clamps the norm at ``eps``)."""
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
    y = y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), eps)
    return 1.0 - jnp.einsum("bmd,bnd->bmn", x, y)


def ipot(cost: jax.Array, x_valid: jax.Array, y_valid: jax.Array, beta: float = 0.5, iterations: int = 50,
         k: int = 1) -> jax.Array:
    """IPOT transport plan ``[B, N, M]`` (note: transposed, as in the reference) for a cost
    ``[B, M, N]`` with uniform marginals over the valid positions. Padded rows/columns get zero mass.
    """
    cost = jax.lax.stop_gradient(cost).astype(jnp.float32)
    b, m, n = cost.shape
    x_valid, y_valid = x_valid.astype(bool), y_valid.astype(bool)
    x_len = x_valid.sum(-1).astype(jnp.float32)[:, None, None]
    y_len = y_valid.sum(-1).astype(jnp.float32)[:, None, None]
    joint_t = y_valid[:, :, None] & x_valid[:, None, :]  # [B, N, M]
    a = jnp.where(joint_t, jnp.exp(-jnp.swapaxes(cost, 1, 2) / beta), 0.0)
    # A large term in the denominators keeps padded positions at ~zero mass (the reference's 1e4).
    x_big = ((~x_valid).astype(jnp.float32) * 1e4)[:, None, :]  # [B, 1, M]
    y_big = ((~y_valid).astype(jnp.float32) * 1e4)[:, None, :]  # [B, 1, N]
    sigma0 = jnp.where(x_valid, 1.0 / x_len[:, :, 0], 0.0)[:, None, :]  # [B, 1, M]

    def outer(_, state):
        t, sigma = state
        q = a * t  # [B, N, M]
        delta = jnp.zeros((b, 1, n), jnp.float32)
        for _ in range(k):
            delta = 1.0 / (y_len * jnp.einsum("bnm,bm->bn", q, sigma[:, 0])[:, None, :] + y_big)
            sigma = 1.0 / (x_len * jnp.einsum("bn,bnm->bm", delta[:, 0], q)[:, None, :] + x_big)
        return jnp.swapaxes(delta, 1, 2) * q * sigma, sigma

    t, _ = jax.lax.fori_loop(0, iterations, outer, (joint_t.astype(jnp.float32), sigma0))
    return jax.lax.stop_gradient(jnp.where(joint_t, t, 0.0))


def wpa_distance(text: jax.Array, image: jax.Array, text_valid: jax.Array, image_valid: jax.Array, *,
                 beta: float = 0.5, iterations: int = 50, k: int = 1) -> jax.Array:
    """OT distance ``[B]`` between text tokens and image tokens over their valid positions."""
    cost = cosine_cost(text.astype(jnp.float32), image.astype(jnp.float32))
    joint = text_valid.astype(bool)[:, :, None] & image_valid.astype(bool)[:, None, :]
    cost = jnp.where(joint, cost, 0.0)
    plan = ipot(cost, text_valid, image_valid, beta, iterations, k)
    return jnp.einsum("bmn,bnm->b", cost, plan)


def alignment_masks(text_mask: jax.Array, image_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """ViLT's choice of tokens: text without [CLS] and the closing token, image without its class
    token (text padding on the right, ``text_mask`` marking real tokens)."""
    text_valid = text_mask.astype(bool)
    last = text_valid.sum(-1) - 1
    positions = jnp.arange(text_valid.shape[1])[None, :]
    text_valid = text_valid & (positions != last[:, None]) & (positions != 0)
    image_valid = image_mask.astype(bool) & (jnp.arange(image_mask.shape[1])[None, :] != 0)
    return text_valid, image_valid


@LOSSES.register("wpa")
def wpa_loss(outputs: dict, batch: dict, beta: float = 0.5, iterations: int = 50, k: int = 1,
             prefix: str = "itm_") -> tuple[jax.Array, dict]:
    """ViLT's word-patch alignment loss on the model's ITM pairs (``{prefix}text_tokens``,
    ``{prefix}image_tokens``, ``{prefix}text_mask``, ``{prefix}image_mask``, ``{prefix}labels``)."""
    del batch
    text_valid, image_valid = alignment_masks(outputs[f"{prefix}text_mask"], outputs[f"{prefix}image_mask"])
    dist = wpa_distance(outputs[f"{prefix}text_tokens"], outputs[f"{prefix}image_tokens"], text_valid, image_valid,
                        beta=beta, iterations=iterations, k=k)
    pos = outputs[f"{prefix}labels"] == 1
    loss = jnp.sum(jnp.where(pos, dist, -dist)) / dist.shape[0]
    n_pos, n_neg = jnp.maximum(pos.sum(), 1), jnp.maximum((~pos).sum(), 1)
    metrics = {"pos_distance": jnp.sum(jnp.where(pos, dist, 0.0)) / n_pos,
               "neg_distance": jnp.sum(jnp.where(pos, 0.0, dist)) / n_neg}
    return loss, metrics
