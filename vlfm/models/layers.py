"""Shared transformer parts: projections, embeddings, attention, MLP, blocks and the layer stack.

Every parameter is created with logical axis names, so that the sharding rules of
``vlfm.core.sharding`` decide how it is laid out on the mesh. Kernels with several output axes are
einsum projections (``Proj``) rather than ``nn.DenseGeneral``, whose reshape breaks N-D logical
annotations under a mesh.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

Dtype = Any
Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}

REMAT_POLICIES: dict[str, Any] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_proj": jax.checkpoint_policies.save_only_these_names("qkv_proj", "mlp_in"),
}

ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "auto")


def activation(name: str) -> Callable[[Array], Array]:
    if name not in ACTIVATIONS:
        raise KeyError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


def kernel_initializer(init_std: float | None, in_axis=-2, out_axis=-1) -> Callable:
    """Xavier-uniform when ``init_std`` is None (ViT, CLIP), else truncated normal (BERT: 0.02)."""
    if init_std is None:
        return nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=in_axis, out_axis=out_axis)
    return nn.initializers.truncated_normal(init_std)


def logical(init: Callable, axes: Sequence[str | None]) -> Callable:
    return nn.with_logical_partitioning(init, tuple(axes))


class Proj(nn.Module):
    """``y = x @ W (+ b)`` contracting the last ``in_dims`` axes into ``features`` (any rank)."""

    features: tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    in_dims: int = 1
    use_bias: bool = True
    init_std: float | None = None
    zero_init: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = tuple(self.features)
        in_shape = x.shape[-self.in_dims:]
        n_in, n_out = len(in_shape), len(features)
        if len(self.kernel_axes) != n_in + n_out:
            raise ValueError(f"kernel_axes {self.kernel_axes} do not match {n_in} input and {n_out} output axes")
        if self.zero_init:
            init = nn.initializers.zeros
        else:
            init = kernel_initializer(self.init_std, tuple(range(n_in)), tuple(range(n_in, n_in + n_out)))
        kernel = self.param("kernel", logical(init, self.kernel_axes), (*in_shape, *features), self.param_dtype)
        letters = "abcdefghijklmnop"
        xs, fs = letters[:n_in], letters[n_in:n_in + n_out]
        y = jnp.einsum(f"...{xs},{xs}{fs}->...{fs}", x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", logical(nn.initializers.zeros, self.kernel_axes[n_in:]), features,
                              self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
                        scale_init=logical(nn.initializers.ones, ("embed",)),
                        bias_init=logical(nn.initializers.zeros, ("embed",)))


class TokenEmbed(nn.Module):
    """Token embedding table ``[vocab, embed]``; ``attend`` gives tied output logits."""

    vocab_size: int
    width: int
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.embedding = self.param("embedding", logical(nn.initializers.normal(self.init_std), ("vocab", "embed")),
                                    (self.vocab_size, self.width), self.param_dtype)

    def __call__(self, ids: Array) -> Array:
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x: Array) -> Array:
        return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding.astype(self.dtype))


class PosEmbed(nn.Module):
    """Learned absolute position (or token-type) embeddings ``[length, embed]``."""

    length: int
    width: int
    init_std: float = 0.02
    axis_name: str = "pos"
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self) -> Array:
        return self.param("embedding", logical(nn.initializers.normal(self.init_std), (self.axis_name, "embed")),
                          (self.length, self.width), self.param_dtype)


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sine-cosine position embeddings ``[height*width, dim]`` (MAE / big_vision layout)."""
    if dim % 4:
        raise ValueError(f"sincos_2d needs a width divisible by 4, got {dim}")
    y, x = np.mgrid[:height, :width]
    omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4 - 1 if dim > 4 else 1))
    y = np.einsum("m,d->md", y.ravel(), omega)
    x = np.einsum("m,d->md", x.ravel(), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens; a strided convolution written as one projection.

    The kernel is ``[patch, patch, channels, embed]`` (a conv kernel in HWIO layout).
    """

    patch_size: int
    width: int
    use_bias: bool = True
    init_std: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: Array) -> tuple[Array, tuple[int, int]]:
        p = self.patch_size
        b, h, w, c = images.shape
        if h % p or w % p:
            raise ValueError(f"image size {(h, w)} is not divisible by the patch size {p}")
        patches = einops.rearrange(images, "b (h p1) (w p2) c -> b (h w) p1 p2 c", p1=p, p2=p)
        tokens = Proj((self.width,), ("patch_h", "patch_w", "channels", "embed"), in_dims=3, use_bias=self.use_bias,
                      init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(patches)
        return tokens, (h // p, w // p)


def _resolve_implementation(implementation: str, dtype: Dtype) -> str:
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r}; valid: {ATTENTION_IMPLEMENTATIONS}")
    if implementation == "auto":
        on_gpu = jax.default_backend() == "gpu"
        return "cudnn" if on_gpu and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"
    return implementation


def dot_product_attention(q: Array, k: Array, v: Array, *, kv_lengths: Array | None = None,
                          mask: Array | None = None, causal: bool = False, implementation: str = "xla",
                          dropout_rate: float = 0.0, dropout_rng: Array | None = None) -> Array:
    """Multi-head attention on ``[batch, seq, heads, head_dim]`` inputs.

    Padding is given as ``kv_lengths`` (right padding: the first ``n`` keys are real) or a general
    boolean ``mask`` ``[batch, heads|1, q_len, kv_len]``. ``cudnn`` pads both sequences to a multiple
    of 16 (cuDNN's fused kernel rejects other lengths) and passes the real lengths, so the padding
    never changes the result. Attention-probability dropout needs explicit probabilities and so uses
    the einsum path.
    """
    impl = _resolve_implementation(implementation, q.dtype)
    if dropout_rate > 0.0 and dropout_rng is not None:
        return _einsum_attention(q, k, v, kv_lengths=kv_lengths, mask=mask, causal=causal,
                                 dropout_rate=dropout_rate, dropout_rng=dropout_rng)
    if impl == "cudnn" and mask is None:
        b, t, s = q.shape[0], q.shape[1], k.shape[1]
        pad_t, pad_s = -t % 16, -s % 16
        q_len = jnp.full((b,), t, jnp.int32)
        kv_len = jnp.full((b,), s, jnp.int32) if kv_lengths is None else kv_lengths.astype(jnp.int32)
        q = jnp.pad(q, ((0, 0), (0, pad_t), (0, 0), (0, 0)))
        k = jnp.pad(k, ((0, 0), (0, pad_s), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad_s), (0, 0), (0, 0)))
        out = jax.nn.dot_product_attention(q, k, v, is_causal=causal, query_seq_lengths=q_len,
                                           key_value_seq_lengths=kv_len, implementation="cudnn")
        return out[:, :t]
    if kv_lengths is not None:
        key_ok = jnp.arange(k.shape[1])[None, :] < kv_lengths[:, None]
        key_mask = key_ok[:, None, None, :]
        mask = key_mask if mask is None else jnp.logical_and(mask, key_mask)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="xla")


def _einsum_attention(q, k, v, *, kv_lengths, mask, causal, dropout_rate, dropout_rng):
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum("btnh,bsnh->bnts", q, k).astype(jnp.float32) * scale
    allowed = jnp.ones(logits.shape[-2:], bool)[None, None]
    if causal:
        allowed = jnp.logical_and(allowed, jnp.tril(allowed[0, 0])[None, None])
    if kv_lengths is not None:
        allowed = jnp.logical_and(allowed, (jnp.arange(k.shape[1])[None, :] < kv_lengths[:, None])[:, None, None])
    if mask is not None:
        allowed = jnp.logical_and(allowed, mask)
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(v.dtype)
    return jnp.einsum("bnts,bsnh->btnh", probs, v)


class Attention(nn.Module):
    """Multi-head attention with ``[embed, heads, head_dim]`` q/k/v kernels (self or cross)."""

    num_heads: int
    head_dim: int | None = None
    qkv_bias: bool = True
    out_bias: bool = True
    dropout_rate: float = 0.0
    implementation: str = "xla"
    init_std: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, kv: Array | None = None, *, kv_lengths: Array | None = None,
                 mask: Array | None = None, causal: bool = False, deterministic: bool = True) -> Array:
        width = x.shape[-1]
        head_dim = self.head_dim or width // self.num_heads
        kv = x if kv is None else kv
        proj = functools.partial(Proj, (self.num_heads, head_dim), ("embed", "heads", "kv"), use_bias=self.qkv_bias,
                                 init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
        q = proj(name="query")(x)
        k = proj(name="key")(kv)
        v = proj(name="value")(kv)
        q, k, v = (checkpoint_name(t, "qkv_proj") for t in (q, k, v))
        q = nn.with_logical_constraint(q, ("batch", "seq", "heads", "kv"))
        k = nn.with_logical_constraint(k, ("batch", "seq", "heads", "kv"))
        v = nn.with_logical_constraint(v, ("batch", "seq", "heads", "kv"))
        rng = None
        if self.dropout_rate > 0.0 and not deterministic:
            rng = self.make_rng("dropout")
        out = dot_product_attention(q, k, v, kv_lengths=kv_lengths, mask=mask, causal=causal,
                                    implementation=self.implementation, dropout_rate=self.dropout_rate,
                                    dropout_rng=rng)
        out = nn.with_logical_constraint(out, ("batch", "seq", "heads", "kv"))
        return Proj((width,), ("heads", "kv", "embed"), in_dims=2, use_bias=self.out_bias, init_std=self.init_std,
                    dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)


class Mlp(nn.Module):
    """Two-layer feed-forward block ``embed -> mlp -> embed``."""

    mlp_dim: int
    act: str = "gelu"
    dropout_rate: float = 0.0
    init_std: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        width = x.shape[-1]
        h = Proj((self.mlp_dim,), ("embed", "mlp"), init_std=self.init_std, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="fc1")(x)
        h = checkpoint_name(h, "mlp_in")
        h = nn.with_logical_constraint(h, ("batch", "seq", "mlp"))
        h = activation(self.act)(h)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return Proj((width,), ("mlp", "embed"), init_std=self.init_std, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="fc2")(h)


def drop_path(module: nn.Module, x: Array, rate: Array | float, deterministic: bool) -> Array:
    """Stochastic depth: drops the whole residual branch per example with probability ``rate``."""
    if deterministic or (isinstance(rate, float) and rate == 0.0):
        return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / jnp.maximum(keep, 1e-6), 0.0).astype(x.dtype)


class TransformerBlock(nn.Module):
    """One transformer layer, pre-LN (ViT, CLIP) or post-LN (BERT).

    pre-LN:  x += drop_path(ls1 * attn(ln1(x)));  x += drop_path(ls2 * mlp(ln2(x)))
    post-LN: x = ln1(x + attn(x));                 x = ln2(x + mlp(x))

    ``cross_attention`` adds a sublayer between the two that attends to ``context`` (another sequence):
    pre-LN ``x += cross_attn(ln_cross(x), context)``, post-LN ``x = ln_cross(x + cross_attn(x, context))``
    (the post-LN form is BERT's cross layer, used by METER and BridgeTower). Padding of ``x`` is given
    by ``kv_lengths`` (right padding) or a boolean ``key_mask [B, T]``; padding of ``context`` by
    ``context_mask [B, S]``.
    """

    num_heads: int
    mlp_dim: int
    head_dim: int | None = None
    norm: str = "pre"
    ln_eps: float = 1e-6
    act: str = "gelu"
    qkv_bias: bool = True
    layer_scale: float | None = None
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    causal: bool = False
    cross_attention: bool = False
    implementation: str = "xla"
    init_std: float | None = None
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, drop_path_rate: Array | float = 0.0, kv_lengths: Array | None = None,
                 key_mask: Array | None = None, context: Array | None = None,
                 context_mask: Array | None = None) -> Array:
        if self.norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {self.norm!r}")
        if self.cross_attention != (context is not None):
            raise ValueError("a block with cross_attention needs a context, and only such a block takes one")
        det = self.deterministic
        x = nn.with_logical_constraint(x, ("batch", "seq", "embed"))
        ln = functools.partial(layer_norm, self.ln_eps, self.dtype, self.param_dtype)
        attention = functools.partial(Attention, self.num_heads, self.head_dim, qkv_bias=self.qkv_bias,
                                      dropout_rate=self.attn_dropout_rate, implementation=self.implementation,
                                      init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
        attn = attention(name="attn")
        self_mask = None if key_mask is None else key_mask[:, None, None, :].astype(bool)
        mlp = Mlp(self.mlp_dim, self.act, self.dropout_rate, self.init_std, self.dtype, self.param_dtype, name="mlp")
        dropout = nn.Dropout(self.dropout_rate)

        def scaled(h, name):
            if self.layer_scale is None:
                return h
            gamma = self.param(name, logical(nn.initializers.constant(self.layer_scale), ("embed",)),
                               (h.shape[-1],), self.param_dtype)
            return h * gamma.astype(h.dtype)

        def cross(q):
            mask = None if context_mask is None else context_mask[:, None, None, :].astype(bool)
            return attention(name="cross_attn")(q, context, mask=mask, deterministic=det)

        if self.norm == "pre":
            h = attn(ln(name="ln1")(x), kv_lengths=kv_lengths, mask=self_mask, causal=self.causal, deterministic=det)
            x = x + drop_path(self, dropout(scaled(h, "ls1"), deterministic=det), drop_path_rate, det)
            if self.cross_attention:
                x = x + dropout(cross(ln(name="ln_cross")(x)), deterministic=det)
            h = mlp(ln(name="ln2")(x), deterministic=det)
            x = x + drop_path(self, dropout(scaled(h, "ls2"), deterministic=det), drop_path_rate, det)
        else:
            h = attn(x, kv_lengths=kv_lengths, mask=self_mask, causal=self.causal, deterministic=det)
            x = ln(name="ln1")(x + dropout(h, deterministic=det))
            if self.cross_attention:
                x = ln(name="ln_cross")(x + dropout(cross(x), deterministic=det))
            h = mlp(x, deterministic=det)
            x = ln(name="ln2")(x + dropout(h, deterministic=det))
        return nn.with_logical_constraint(x.astype(self.dtype), ("batch", "seq", "embed"))


class _ScanBlock(TransformerBlock):
    """``TransformerBlock`` with the ``(carry, per-layer input)`` signature that ``nn.scan`` wants."""

    collect: bool = False

    def __call__(self, x, drop_path_rate, kv_lengths, key_mask=None):  # type: ignore[override]
        y = super().__call__(x, drop_path_rate, kv_lengths, key_mask)
        return y, (y if self.collect else None)


class Encoder(nn.Module):
    """A stack of ``depth`` identical blocks, scanned (one compiled layer) or unrolled.

    With ``scan`` the parameters carry a leading ``layers`` axis. ``remat`` names a checkpoint policy
    (``none``, ``full``, ``dots``, ``dots_no_batch``, ``save_proj``). Drop-path rates rise linearly
    from 0 to ``drop_path_rate`` over depth. ``collect_hidden`` also returns every layer's output.
    Padding is ``kv_lengths`` (right padding) or a boolean ``key_mask [B, T]`` (any pattern).
    """

    depth: int
    block: dict  # TransformerBlock fields (num_heads, mlp_dim, norm, ...)
    drop_path_rate: float = 0.0
    scan: bool = True
    remat: str = "none"
    collect_hidden: bool = False

    @nn.compact
    def __call__(self, x: Array, *, kv_lengths: Array | None = None, key_mask: Array | None = None,
                 train: bool = False):
        rates = np.linspace(0.0, self.drop_path_rate, self.depth).astype(np.float32) if self.depth > 1 else \
            np.zeros((self.depth,), np.float32)
        kwargs = dict(self.block, deterministic=not train)
        x = x.astype(kwargs.get("dtype", jnp.float32))  # the scan carry keeps one dtype throughout
        if self.remat != "none" and self.remat not in REMAT_POLICIES:
            raise KeyError(f"unknown remat policy {self.remat!r}; valid: none, {', '.join(REMAT_POLICIES)}")
        if self.scan:
            cls = _ScanBlock
            if self.remat != "none":
                cls = nn.remat(cls, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
            stack = nn.scan(cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                            in_axes=(0, nn.broadcast, nn.broadcast), length=self.depth,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x, hidden = stack(collect=self.collect_hidden, name="layers", **kwargs)(x, jnp.asarray(rates), kv_lengths,
                                                                                   key_mask)
            return (x, hidden) if self.collect_hidden else x
        cls = TransformerBlock
        if self.remat != "none":
            cls = nn.remat(cls, policy=REMAT_POLICIES[self.remat])
        hidden = []
        for i in range(self.depth):
            x = cls(name=f"layer_{i}", **kwargs)(x, float(rates[i]), kv_lengths, key_mask)
            hidden.append(x)
        return (x, jnp.stack(hidden)) if self.collect_hidden else x


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
