"""Prefix splitting for prefix language modelling: a caption cut at a uniform random token.

Pure jnp so it runs either in the data workers or inside the forward pass from the ``sampling`` rng.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def split_prefix(rng: jax.Array, tokens: jax.Array, pad_id: int = 0) -> tuple[jax.Array, jax.Array]:
    """Split each row of ``tokens`` [B, L] at a uniform cut in [1, length-1] (length = non-pad count).

    Returns (prefix, suffix), both [B, L] right-padded with ``pad_id``: prefix = tokens[:cut],
    suffix = tokens[cut:length]. A row of length < 2 keeps everything in the suffix (empty prefix).
    """
    b, l = tokens.shape
    length = (tokens != pad_id).sum(-1)
    u = jax.random.uniform(rng, (b,))
    cut = jnp.where(length >= 2, 1 + jnp.floor(u * (length - 1)).astype(jnp.int32), 0)
    pos = jnp.arange(l)[None]
    prefix = jnp.where(pos < cut[:, None], tokens, pad_id)
    src = jnp.clip(pos + cut[:, None], 0, l - 1)
    shifted = jnp.take_along_axis(tokens, src, axis=1)
    suffix = jnp.where(pos < (length - cut)[:, None], shifted, pad_id)
    return prefix, suffix


def split_image_rows(codes: jax.Array, keep_rows: int, *, offset: int, bos_id: int
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Prefix image modelling split of tokenizer codes [B, h, w] after the top ``keep_rows`` rows.

    Returns (visible [B, h*w] bool: the encoder's patch mask, top rows True; decoder_input
    [B, n] = IMG_BOS then the hidden codes shifted right; targets [B, n] = the hidden codes,
    so decoder_input[:, 1:] == targets[:, :-1]), with n = (h-keep_rows)*w and
    codes offset by ``offset`` (the text vocabulary size) into the shared vocabulary.
    """
    b, h, w = codes.shape
    visible = jnp.broadcast_to((jnp.arange(h) < keep_rows)[:, None], (h, w)).reshape(1, h * w)
    visible = jnp.broadcast_to(visible, (b, h * w))
    hidden = codes[:, keep_rows:].reshape(b, -1) + offset
    bos = jnp.full((b, 1), bos_id, hidden.dtype)
    decoder_input = jnp.concatenate([bos, hidden], 1)[:, :-1]
    return visible, decoder_input, hidden
