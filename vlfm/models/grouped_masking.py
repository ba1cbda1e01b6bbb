"""Grouped token masking for masked feature regression (Visual Parsing's MFR, Xue et al. 2021).

Random masking is too easy to undo for self-attention features: a masked token usually has a visible
near-copy (a neighbouring background patch, another patch of the same object) whose feature the model
can copy. Grouped masking masks tokens together with the tokens most similar to them, so the near-copies
of a masked token are masked too. It depends on the features, so it runs inside the model (jittable,
``vmap`` over the batch, a fixed number of loop steps).

Per example, with ``N`` tokens and a budget ``round(ratio * N)`` (at least 1):

1. the similarity of every pair of tokens: cosine of the features after subtracting the image's mean
   token (so "similar" is relative to the image, not dominated by what all its tokens share), or any
   ``[N, N]`` score given instead (e.g. a layer's head-averaged attention);
2. the group of a token ``s``: ``s`` and its ``top_k`` most similar other tokens, then every token at
   least ``threshold`` similar to one of those (so a neighbour's near-copies join the group too);
3. seeds in a random order: a seed that is not masked yet has its whole group masked if that keeps the
   masked count within the budget; groups never get split. If no group fits the budget (every group is
   larger), the first seed's group is masked alone, so an example always has masked tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def centred_cosine(features: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``[B, N, D]`` -> ``[B, N, N]`` cosine similarity of the tokens after subtracting each example's
    mean token."""
    x = features.astype(jnp.float32)
    x = x - x.mean(axis=1, keepdims=True)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
    return jnp.einsum("bnd,bmd->bnm", x, x)


def similarity_groups(similarity: jax.Array, top_k: int = 0, threshold: float | None = None) -> jax.Array:
    """``[B, N, N]`` similarity -> ``[B, N, N]`` bool, row ``s`` the group of token ``s``: itself and its
    ``top_k`` most similar other tokens, then every token at least ``threshold`` similar to one of them."""
    b, n, _ = similarity.shape
    if top_k < 0 or top_k >= n:
        raise ValueError(f"top_k must be in [0, {n - 1}] for {n} tokens, got {top_k}")
    eye = jnp.eye(n, dtype=bool)[None]
    member = jnp.broadcast_to(eye, (b, n, n))
    if top_k:
        others = jnp.where(eye, -jnp.inf, similarity.astype(jnp.float32))
        _, idx = jax.lax.top_k(others, top_k)  # [B, N, k]
        member = member | jnp.any(jax.nn.one_hot(idx, n, dtype=bool), axis=2)
    if threshold is not None:
        near = (similarity >= threshold) | eye
        member = jnp.einsum("bsm,bmj->bsj", member.astype(jnp.float32), near.astype(jnp.float32)) > 0
    return member


def budget(num_tokens: int, ratio: float) -> int:
    """The number of tokens grouped masking aims at: ``round(ratio * N)``, at least 1."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    return max(1, int(round(ratio * num_tokens)))


def _mask_one(order: jax.Array, groups: jax.Array, limit: int) -> jax.Array:
    n = order.shape[0]

    def step(t, mask):
        seed = order[t]
        group = groups[seed]
        fits = jnp.sum(mask) + jnp.sum(group & ~mask) <= limit
        return mask | (group & fits & ~mask[seed])

    mask = jax.lax.fori_loop(0, n, step, jnp.zeros((n,), bool))
    return jnp.where(jnp.any(mask), mask, groups[order[0]])


def grouped_mask(rng: jax.Array, groups: jax.Array, ratio: float) -> jax.Array:
    """``[B, N]`` bool mask (True = masked) from ``groups [B, N, N]`` (``similarity_groups``): whole
    groups of random seeds, within the budget ``round(ratio * N)`` (module docstring)."""
    b, n, _ = groups.shape
    order = jnp.argsort(jax.random.uniform(rng, (b, n)), axis=1)
    return jax.vmap(_mask_one, in_axes=(0, 0, None))(order, groups, budget(n, ratio))


def nearest_visible(features: jax.Array, mask: jax.Array, similarity: jax.Array | None = None) -> jax.Array:
    """For each token, the feature of the visible (unmasked) token most similar to it (``similarity``,
    default ``centred_cosine``): what a model could copy for a masked token if it knew which visible
    token resembles it. Its error on the masked tokens shows how much a masking leaks."""
    sim = centred_cosine(features) if similarity is None else similarity
    sim = jnp.where(mask[:, None, :], -jnp.inf, sim.astype(jnp.float32))
    idx = jnp.argmax(sim, axis=-1)  # [B, N]
    return jnp.take_along_axis(features, idx[..., None], axis=1)
