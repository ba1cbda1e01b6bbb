"""Attentional pooling (CoCa): learned queries read a token sequence through one cross-attention."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlfm.models.attention import Attention
from vlfm.models.primitives import layer_norm, logical

Dtype = Any


class AttentionalPooler(nn.Module):
    """``n_queries`` learned queries (LayerNorm'd) attend over the LayerNorm'd tokens; returns
    ``[B, n_queries, d_model]``. Matches open_clip's AttentionalPooler: one pool can serve both the
    contrastive embedding (query 0) and the captioning context (the rest), or two pools can be used."""

    d_model: int
    num_heads: int
    n_queries: int = 256
    ln_eps: float = 1e-5
    implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        query = self.param("query", logical(nn.initializers.normal(1.0), (None, "embed")),
                           (self.n_queries, self.d_model), self.param_dtype)
        k = layer_norm(self.ln_eps, self.dtype, self.param_dtype, name="ln_k")(x)
        q = layer_norm(self.ln_eps, self.dtype, self.param_dtype, name="ln_q")(query.astype(self.dtype))
        q = jnp.broadcast_to(q[None], (x.shape[0], self.n_queries, self.d_model))
        return Attention(self.num_heads, implementation=self.implementation, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="attn")(q, k)
