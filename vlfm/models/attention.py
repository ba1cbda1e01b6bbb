"""Multi-head attention: the kernel choice (XLA / cuDNN / explicit einsum), the ``Attention`` module
with an optional KV cache for decoding, and attention pooling (``MapHead``).

Masks are ``vlfm.models.masks.AttentionMask`` objects (or the older forms: key lengths, a boolean
``[B, 1|H, T, S]`` array, ``causal``). The einsum path runs when attention-probability dropout is on
or the probabilities are asked for (attention distillation); it returns them in float32.

What ``Attention`` can hand back besides its output (``return_parts``, for attention distillation):
``ATTENTION_PARTS`` = ``probs`` (``[B, H, T, S]`` float32), ``logits`` (the scaled scores after the
mask, masked entries at the float32 minimum, ``[B, H, T, S]`` float32), ``queries`` and ``keys``
(the projected ``[B, T|S, H, head_dim]`` vectors the scores are made of).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from vlfm.models.feedforward import Mlp
from vlfm.models.masks import AttentionMask, as_mask
from vlfm.models.primitives import Array, Dtype, Proj, layer_norm, logical

ATTENTION_IMPLEMENTATIONS = ("xla", "recompute", "jax_xla", "cudnn", "auto")
ATTENTION_PARTS = ("probs", "logits", "queries", "keys")
QKV_AXES = ("activation_batch", "activation_seq", "activation_heads", "activation_kv")
CACHE_AXES = ("cache_batch", "cache_seq", "cache_heads", "cache_kv")


def _resolve_implementation(implementation: str, dtype: Dtype) -> str:
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r}; valid: {ATTENTION_IMPLEMENTATIONS}")
    if implementation == "auto":
        on_gpu = jax.default_backend() == "gpu"
        return "cudnn" if on_gpu and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"
    return implementation


def dot_product_attention(q: Array, k: Array, v: Array, *, kv_lengths: Array | None = None,
                          mask: AttentionMask | Array | None = None, causal: bool = False,
                          implementation: str = "xla", dropout_rate: float = 0.0, dropout_rng: Array | None = None,
                          return_probs: bool = False, bias: Array | None = None) -> Array | tuple[Array, Array]:
    """Multi-head attention on ``[batch, seq, heads, head_dim]`` inputs.

    ``mask`` is an ``AttentionMask`` or a boolean ``[batch, heads|1, q_len, kv_len]`` array;
    ``kv_lengths`` (right padding) and ``causal`` are added to it. Implementations
    (``ATTENTION_IMPLEMENTATIONS``):

    - ``xla`` (default): ``scaled_attention``, vlfm's own kernel in plain XLA ops;
    - ``recompute``: ``fused_attention``, the same with its probabilities recomputed in the backward
      pass (less memory in a scanned stack without remat; slower inside a remat policy, which
      recomputes them already: benchmarks/cpu_step.py);
    - ``jax_xla``: ``jax.nn.dot_product_attention``'s XLA path (a grouped-query reshape, the scale
      applied to the score matrix, the mask broadcast to ``[B, H, T, S]``);
    - ``cudnn``: ``padded_attention`` (cuDNN's fused kernel through ``jax.nn.dot_product_attention``)
      when the mask is only lengths + causal (``AttentionMask.fast_path``), else ``xla``;
    - ``auto``: ``cudnn`` for 16-bit inputs on a GPU, else ``xla``.

    ``return_probs`` (and attention dropout) use the explicit path and give
    ``(out, probs [B, H, T, S] float32)``. ``bias`` (optional, ``[B|1, H|1, T, S]``) is added to the
    scaled logits before the softmax on every path (a relative-position bias).
    """
    impl = _resolve_implementation(implementation, q.dtype)
    m = as_mask(mask, kv_lengths=kv_lengths, causal=causal)
    if bias is not None and bias.ndim != 4:
        raise ValueError(f"attention bias must be [batch|1, heads|1, q_len, kv_len], got shape {bias.shape}")
    if return_probs or (dropout_rate > 0.0 and dropout_rng is not None):
        out, probs = _einsum_attention(q, k, v, m, dropout_rate=dropout_rate, dropout_rng=dropout_rng, bias=bias)
        return (out, probs) if return_probs else out
    t, s = q.shape[1], k.shape[1]
    if bias is not None:
        bias = bias.astype(q.dtype)
    if impl == "cudnn" and m.fast_path:
        return padded_attention(q, k, v, kv_lengths=m.lengths, causal=m.causal, bias=bias, implementation="cudnn")
    if impl == "jax_xla":
        return jax.nn.dot_product_attention(q, k, v, bias, mask=m.dense(t, s, q.shape[0]), implementation="xla")
    if impl == "recompute":
        return fused_attention(q, k, v, m.dense(t, s), bias)
    return scaled_attention(q, k, v, m.dense(t, s), bias)


def padded_attention(q: Array, k: Array, v: Array, *, kv_lengths: Array | None = None, causal: bool = False,
                     bias: Array | None = None, implementation: str = "cudnn", multiple: int = 16) -> Array:
    """``jax.nn.dot_product_attention`` with both sequences padded to a multiple of ``multiple`` (cuDNN's
    fused kernel rejects other lengths) and the real lengths passed (``query_seq_lengths``,
    ``key_value_seq_lengths``: right padding of the keys), so the padding never changes the result.
    ``implementation`` is handed to jax: ``cudnn`` in use; ``xla`` runs the same padding on any backend
    (how the tests check it against unpadded attention)."""
    b, t, s = q.shape[0], q.shape[1], k.shape[1]
    pad_t, pad_s = -t % multiple, -s % multiple
    q_len = jnp.full((b,), t, jnp.int32)
    kv_len = jnp.full((b,), s, jnp.int32) if kv_lengths is None else kv_lengths.astype(jnp.int32)
    q = jnp.pad(q, ((0, 0), (0, pad_t), (0, 0), (0, 0)))
    k = jnp.pad(k, ((0, 0), (0, pad_s), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, pad_s), (0, 0), (0, 0)))
    if bias is not None:
        bias = jnp.pad(bias, ((0, 0), (0, 0), (0, pad_t), (0, pad_s)))
    out = jax.nn.dot_product_attention(q, k, v, bias, is_causal=causal, query_seq_lengths=q_len,
                                       key_value_seq_lengths=kv_len, implementation=implementation)
    return out[:, :t]


def scaled_attention(q: Array, k: Array, v: Array, allowed: Array | None = None, bias: Array | None = None) -> Array:
    """Softmax attention in two einsums: the scale is folded into ``q`` (``[B, T, H, d]``, not the
    ``[B, H, T, S]`` scores), one einsum per head without a grouped reshape, and the boolean mask
    ``allowed`` (``[B|1, 1|H, T, S]``, from ``AttentionMask.dense`` without the batch broadcast) is
    broadcast inside the ``where`` rather than materialised per head. Scores and softmax in float32,
    as ``jax.nn.dot_product_attention``."""
    q = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if allowed is not None:
        logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bnts,bsnh->btnh", probs, v)


@functools.partial(jax.checkpoint, prevent_cse=False)
def fused_attention(q: Array, k: Array, v: Array, allowed: Array | None = None, bias: Array | None = None) -> Array:
    """``scaled_attention`` whose scores and probabilities are recomputed in the backward pass from
    ``q, k, v`` instead of being saved: a scanned stack then keeps no ``[depth, B, H, T, S]`` buffer
    of probabilities (less memory; on CPU not faster, and slower under a remat policy)."""
    return scaled_attention(q, k, v, allowed, bias)


def _einsum_attention(q: Array, k: Array, v: Array, mask: AttentionMask, *, dropout_rate: float = 0.0,
                      dropout_rng: Array | None = None, bias: Array | None = None,
                      with_logits: bool = False) -> tuple[Array, ...]:
    """Explicit softmax attention; returns the output and the (pre-dropout) probabilities, and with
    ``with_logits`` the masked float32 scores too."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum("btnh,bsnh->bnts", q, k).astype(jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    allowed = mask.dense(q.shape[1], k.shape[1], q.shape[0])
    if allowed is not None:
        logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    weights = probs
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        weights = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum("bnts,bsnh->btnh", weights.astype(v.dtype), v)
    return (out, probs, logits) if with_logits else (out, probs)


class Attention(nn.Module):
    """Multi-head attention with ``[embed, heads, head_dim]`` q/k/v kernels (self or cross).

    ``decode`` keeps a KV cache (collection ``cache``: ``cached_key``/``cached_value``
    ``[batch, max_len, heads, head_dim]`` with logical axes ``CACHE_AXES``, and ``cache_index``) for
    causal self-attention: the call that initialises the cache fixes ``max_len`` from its input's
    length; later calls (with ``mutable=["cache"]``) append their keys at ``cache_index`` and attend
    causally to everything cached so far, so a prompt can be prefilled and then decoded token by token.
    As cross-attention (``kv`` given), ``decode`` projects the context's keys/values once, at the call
    that initialises the cache, and every later call reuses them (its ``kv`` is then not read): that
    first call must see the context the decoding attends to.
    """

    num_heads: int
    head_dim: int | None = None
    qkv_bias: bool = True
    out_bias: bool = True
    dropout_rate: float = 0.0
    implementation: str = "xla"
    init_std: float | None = None
    decode: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, kv: Array | None = None, *, kv_lengths: Array | None = None,
                 mask: AttentionMask | Array | None = None, causal: bool = False, deterministic: bool = True,
                 return_probs: bool = False, return_parts: tuple[str, ...] = ()) -> Array | tuple[Array, Any]:
        """``return_probs``: ``(y, probs)``. ``return_parts`` (names from ``ATTENTION_PARTS``):
        ``(y, {name: array})``, computed on the einsum path."""
        unknown = sorted(set(return_parts) - set(ATTENTION_PARTS))
        if unknown:
            raise ValueError(f"unknown attention parts {unknown}; valid: {', '.join(ATTENTION_PARTS)}")
        if return_probs and return_parts:
            raise ValueError("ask for return_probs or return_parts, not both")
        width = x.shape[-1]
        head_dim = self.head_dim or width // self.num_heads
        is_self = kv is None
        kv = x if kv is None else kv
        proj = functools.partial(Proj, (self.num_heads, head_dim), ("embed", "heads", "kv"), use_bias=self.qkv_bias,
                                 init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
        q = nn.with_logical_constraint(checkpoint_name(proj(name="query")(x), "qkv_proj"), QKV_AXES)
        m = as_mask(mask, kv_lengths=kv_lengths, causal=causal)
        if self.decode and not is_self:
            k, v = self._cached_context(lambda: proj(name="key")(kv), lambda: proj(name="value")(kv))
        else:
            k = proj(name="key")(kv)
            v = proj(name="value")(kv)
            k, v = (checkpoint_name(t, "qkv_proj") for t in (k, v))
            k, v = (nn.with_logical_constraint(t, QKV_AXES) for t in (k, v))
        if self.decode and is_self:
            k, v, m = self._cached(k, v, m)
        rng = None
        if self.dropout_rate > 0.0 and not deterministic:
            rng = self.make_rng("dropout")
        parts = None
        if return_parts:
            out, probs, logits = _einsum_attention(q, k, v, m, dropout_rate=self.dropout_rate, dropout_rng=rng,
                                                   with_logits=True)
            known = {"probs": probs, "logits": logits, "queries": q, "keys": k}
            parts = {name: known[name] for name in return_parts}
        else:
            out = dot_product_attention(q, k, v, mask=m, implementation=self.implementation,
                                        dropout_rate=self.dropout_rate, dropout_rng=rng, return_probs=return_probs)
            out, probs = out if return_probs else (out, None)
        out = nn.with_logical_constraint(out, QKV_AXES)
        y = Proj((width,), ("heads", "kv", "embed"), in_dims=2, use_bias=self.out_bias, init_std=self.init_std,
                 dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)
        if return_parts:
            return y, parts
        return (y, probs) if return_probs else y

    def _cached_context(self, key: Callable[[], Array], value: Callable[[], Array]) -> tuple[Array, Array]:
        """Cross-attention keys/values: projected from the context by the call that initialises the cache
        and stored there (``cached_context_key``/``cached_context_value``); later calls reuse them, so a
        decoding step does not re-project the whole context."""
        init = nn.with_logical_partitioning(lambda project: project(), CACHE_AXES)
        cached_k = self.variable("cache", "cached_context_key", init, key)
        cached_v = self.variable("cache", "cached_context_value", init, value)
        keys = nn.with_logical_constraint(cached_k.value, CACHE_AXES)
        values = nn.with_logical_constraint(cached_v.value, CACHE_AXES)
        return keys, values

    def _cached(self, k: Array, v: Array, mask: AttentionMask) -> tuple[Array, Array, AttentionMask]:
        """Writes ``k, v`` into the cache at ``cache_index``; returns the whole cache and its causal mask."""
        ready = self.has_variable("cache", "cached_key")
        init = nn.with_logical_partitioning(jnp.zeros, CACHE_AXES)
        cached_k = self.variable("cache", "cached_key", init, k.shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", init, v.shape, v.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        if not ready:  # initialising: the input's length is the cache's capacity
            return k, v, mask.replace(causal=True)
        i = index.value
        zero = jnp.zeros((), jnp.int32)
        cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype),
                                                      (zero, i, zero, zero))
        cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype),
                                                      (zero, i, zero, zero))
        index.value = i + k.shape[1]
        keys = nn.with_logical_constraint(cached_k.value, CACHE_AXES)
        values = nn.with_logical_constraint(cached_v.value, CACHE_AXES)
        return keys, values, mask.replace(causal=True, offset=i)


class MapHead(nn.Module):
    """Multihead attention pooling: one learned query attends over the tokens, then an MLP."""

    num_heads: int
    mlp_dim: int
    ln_eps: float = 1e-6
    implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        width = x.shape[-1]
        probe = self.param("probe", logical(nn.initializers.xavier_uniform(), (None, "embed")), (1, width),
                           self.param_dtype)
        q = jnp.broadcast_to(probe.astype(self.dtype)[None], (x.shape[0], 1, width))
        h = Attention(self.num_heads, implementation=self.implementation, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="attn")(q, x)
        y = layer_norm(self.ln_eps, self.dtype, self.param_dtype, name="ln")(h)
        h = h + Mlp(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")(y)
        return h[:, 0]
