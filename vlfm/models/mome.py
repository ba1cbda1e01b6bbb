"""Mixture-of-modality-experts (MoME) transformer: one pre-LN stack that runs as an image encoder, a
text encoder or a fusion encoder over ``[text; image]`` (VLMo), or as BEiT-3's multiway transformer.

Layer ``l``, on a sequence whose first ``split`` positions are text and the rest image::

    x += drop_path(g1 * attn(ln1(x), bias_l))     shared attention (VLMo); per modality with
                                                  ``multiway_attention`` (BEiT-3: ln1, q, k, v, out)
    x += drop_path(g2 * ffn_m(ln2_m(x)))          a feed-forward expert (with its own LayerNorm) per
                                                  modality m: ``ffn_text`` on the text positions,
                                                  ``ffn_image`` on the image positions; the top
                                                  ``vl_depth`` layers also hold ``ffn_vl``, which
                                                  takes every position in ``vl`` mode

Modes: ``image`` (every position image, ``split=0``), ``text`` (every position text) and ``vl`` (the
first ``text_len`` positions text). The routing is static slicing, never a gather: a mode only decides
which slice each expert sees. All three modes use one parameter set (initialisation creates every
expert whichever mode runs). ``g1, g2`` are layer scales, ``bias_l`` the BEiT-style relative position
bias of layer ``l`` (one table shared by all layers, ``RelativePositionBias``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlfm.models.attention import QKV_AXES, dot_product_attention
from vlfm.models.feedforward import Mlp
from vlfm.models.masks import AttentionMask
from vlfm.models.primitives import Array, Dtype, Proj, drop_path, layer_norm, logical
from vlfm.models.stack import EMBED_AXES, Segment, run_segments

MODES = ("image", "text", "vl")
QKV_BIAS = ("qkv", "qv", "none")
PARTS = ("all", "bottom", "top")


# ----------------------------------------------------------------------------------------------------
# Relative position bias (BEiT / VLMo layout)

def image_relative_index(grid: tuple[int, int]) -> np.ndarray:
    """``[1 + h*w, 1 + h*w]`` indices into the image part of the table (BEiT): patch pairs by 2-D offset
    (query minus key), ``(2h-1)(2w-1)`` entries, then 3 for class->patch, patch->class, class->class."""
    h, w = grid
    n = (2 * h - 1) * (2 * w - 1) + 3
    coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :]
    index = np.zeros((h * w + 1,) * 2, np.int32)
    index[1:, 1:] = (rel[0] + h - 1) * (2 * w - 1) + (rel[1] + w - 1)
    index[0, :] = n - 3
    index[:, 0] = n - 2
    index[0, 0] = n - 1
    return index


def num_relative_entries(grid: tuple[int, int], max_text_len: int) -> int:
    """Rows of the table: image entries, text->image, image->text, then ``2 * max_text_len`` text entries."""
    return (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3 + 2 + 2 * max_text_len


def text_relative_index(length: int, grid: tuple[int, int], max_text_len: int) -> np.ndarray:
    """``[length, length]`` indices of the text part (VLMo): tokens after the first by 1-D offset (key
    minus query), and 3 entries for [CLS]->token, token->[CLS], [CLS]->[CLS] at the end of the table."""
    if not 1 <= length <= max_text_len:
        raise ValueError(f"text of {length} tokens: the relative position table covers 1..{max_text_len}")
    total = num_relative_entries(grid, max_text_len)
    base = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3 + 2
    pos = np.arange(length - 1)
    index = np.zeros((length, length), np.int32)
    index[1:, 1:] = pos[None, :] - pos[:, None] + (max_text_len - 2) + base
    index[0, :] = total - 3
    index[:, 0] = total - 2
    index[0, 0] = total - 1
    return index


def relative_position_index(mode: str, length: int, grid: tuple[int, int], max_text_len: int,
                            text_len: int = 0) -> np.ndarray:
    """``[length, length]`` table rows of a sequence in ``mode`` (``vl``: ``text_len`` text positions, then
    the image with its class token; the cross-modal pairs share one entry per direction; a ``vl`` sequence
    of text only or image only, VLMo's contrast through the VL experts, uses that modality's rows)."""
    image_entries = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
    image_len = grid[0] * grid[1] + 1
    if mode == "text" or (mode == "vl" and text_len == length):
        return text_relative_index(length, grid, max_text_len)
    if mode == "image":
        text_len = 0
    elif mode != "vl":
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if length - text_len != image_len:
        raise ValueError(f"a relative position bias for a {grid[0]}x{grid[1]} grid needs {image_len} image tokens "
                         f"(class token first), got {length - text_len}")
    if text_len == 0:
        return image_relative_index(grid)
    top = np.concatenate([text_relative_index(text_len, grid, max_text_len),
                          np.full((text_len, image_len), image_entries, np.int32)], axis=1)
    bottom = np.concatenate([np.full((image_len, text_len), image_entries + 1, np.int32),
                             image_relative_index(grid)], axis=1)
    return np.concatenate([top, bottom], axis=0)


class RelativePositionBias(nn.Module):
    """One table ``[entries, depth * heads]`` for every layer (VLMo); ``__call__`` gives the biases of
    layers ``[first, stop)`` as ``[stop - first, heads, T, T]`` (layer ``l`` reads columns
    ``l*heads:(l+1)*heads``)."""

    num_heads: int
    depth: int
    grid: tuple[int, int]
    max_text_len: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, mode: str, length: int, text_len: int = 0, first: int = 0, stop: int | None = None) -> Array:
        stop = self.depth if stop is None else stop
        grid = tuple(self.grid)
        table = self.param("table", logical(nn.initializers.truncated_normal(0.02), ("pos", None)),
                           (num_relative_entries(grid, self.max_text_len), self.depth * self.num_heads),
                           self.param_dtype)
        index = relative_position_index(mode, length, grid, self.max_text_len, text_len)
        cols = table[:, first * self.num_heads:stop * self.num_heads]
        bias = jnp.take(cols, jnp.asarray(index.reshape(-1)), axis=0)
        bias = bias.reshape(length, length, stop - first, self.num_heads)
        return jnp.transpose(bias, (2, 3, 0, 1)).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------
# The layer

class FfnExpert(nn.Module):
    """One modality expert: its own pre-FFN LayerNorm (``ln``) and MLP (``mlp``)."""

    mlp_dim: int
    act: str = "gelu"
    ln_eps: float = 1e-6
    dropout_rate: float = 0.0
    init_std: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    sub_ln: bool = False

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        h = layer_norm(self.ln_eps, self.dtype, self.param_dtype, name="ln")(x)
        return Mlp(self.mlp_dim, self.act, self.dropout_rate, self.init_std, self.dtype, self.param_dtype,
                   sub_ln_eps=self.ln_eps if self.sub_ln else None, name="mlp")(h, deterministic=deterministic)


class QkvProj(nn.Module):
    """q, k, v projections ``[embed, heads, head_dim]``; ``bias``: ``qkv``, ``qv`` (BEiT: no k bias) or ``none``."""

    num_heads: int
    head_dim: int
    bias: str = "qv"
    init_std: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array, Array]:
        proj = functools.partial(Proj, (self.num_heads, self.head_dim), ("embed", "heads", "kv"),
                                 init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
        qv = self.bias in ("qkv", "qv")
        q = proj(use_bias=qv, name="query")(x)
        k = proj(use_bias=self.bias == "qkv", name="key")(x)
        v = proj(use_bias=qv, name="value")(x)
        return tuple(nn.with_logical_constraint(t, QKV_AXES) for t in (q, k, v))


def route(split: int, length: int, text_fn: Callable[[Array], Any], image_fn: Callable[[Array], Any],
          x: Array) -> Any:
    """``text_fn`` on positions ``[:split]``, ``image_fn`` on ``[split:]`` (static slices), concatenated."""
    if split == 0:
        return image_fn(x)
    if split == length:
        return text_fn(x)
    parts = text_fn(x[:, :split]), image_fn(x[:, split:])
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1), *parts)


def text_split(mode: str, text_len: int, length: int) -> int:
    """Number of leading text positions of a ``length``-token sequence in ``mode``."""
    if mode == "image":
        return 0
    if mode == "text":
        return length
    if mode != "vl":
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if not 0 <= text_len <= length:
        raise ValueError(f"text_len {text_len} outside a sequence of {length} tokens")
    return text_len


def _sub_ln_then(norm: nn.Module, out: nn.Module, att: Array) -> Array:
    """BEiT-3's sub-LayerNorm on the attention output (heads merged), then the output projection."""
    b, t, h, d = att.shape
    return out(norm(att.reshape(b, t, h * d)).reshape(b, t, h, d))


class MomeLayer(nn.Module):
    """One MoME layer as a stack layer (``vlfm.models.stack``): carry ``x [B, T, D]``, per-layer input the
    relative position bias ``[H, T, T]`` (or None), broadcast ``{"mask": AttentionMask | None}``.

    ``mode`` and ``text_len`` (static) choose the routing; ``vl_ffn`` marks a layer that holds the VL
    expert. Parameters: ``ln1``, ``qkv``, ``attn_out`` (or ``ln1_{text,image}``, ``qkv_{text,image}``,
    ``attn_out_{text,image}`` with ``multiway_attention``), ``ffn_{image,text[,vl]}/{ln,mlp}``,
    ``ls1``/``ls2`` (layer scale).
    """

    num_heads: int
    mlp_dim: int
    mode: str = "vl"
    text_len: int = 0
    vl_ffn: bool = False
    multiway_attention: bool = False
    head_dim: int | None = None
    ln_eps: float = 1e-6
    act: str = "gelu"
    qkv_bias: str = "qv"
    layer_scale: float | None = None
    sub_ln: bool = False
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    implementation: str = "xla"
    init_std: float | None = None
    return_attention: bool = False
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def split(self, length: int) -> int:
        """Number of leading text positions of a ``length``-token sequence in this layer's mode."""
        return text_split(self.mode, self.text_len, length)

    @nn.compact
    def __call__(self, x, drop_path_rate, xs, broadcast):
        if self.qkv_bias not in QKV_BIAS:
            raise ValueError(f"unknown qkv_bias {self.qkv_bias!r}; valid: {', '.join(QKV_BIAS)}")
        det = self.deterministic
        x = nn.with_logical_constraint(x, EMBED_AXES)
        width, length = x.shape[-1], x.shape[1]
        split = self.split(length)
        head_dim = self.head_dim or width // self.num_heads
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ln = functools.partial(layer_norm, self.ln_eps, self.dtype, self.param_dtype)
        qkv = functools.partial(QkvProj, self.num_heads, head_dim, self.qkv_bias, self.init_std, **common)
        out = functools.partial(Proj, (width,), ("heads", "kv", "embed"), in_dims=2, init_std=self.init_std, **common)
        ffn = functools.partial(FfnExpert, self.mlp_dim, self.act, self.ln_eps, self.dropout_rate, self.init_std,
                                sub_ln=self.sub_ln, **common)
        if self.multiway_attention:
            ln1 = {m: ln(name=f"ln1_{m}") for m in ("text", "image")}
            proj = {m: qkv(name=f"qkv_{m}") for m in ("text", "image")}
            attn_out = {m: out(name=f"attn_out_{m}") for m in ("text", "image")}
            attn_ln = {m: ln(name=f"attn_ln_{m}") for m in ("text", "image")} if self.sub_ln else None
        else:
            shared_ln, shared_proj, shared_out = ln(name="ln1"), qkv(name="qkv"), out(name="attn_out")
            ln1 = dict.fromkeys(("text", "image"), shared_ln)
            proj = dict.fromkeys(("text", "image"), shared_proj)
            attn_out = dict.fromkeys(("text", "image"), shared_out)
            attn_ln = dict.fromkeys(("text", "image"), ln(name="attn_ln")) if self.sub_ln else None
        if attn_ln is not None:  # sub-LayerNorm over the merged heads, then the output projection
            attn_out = {m: functools.partial(_sub_ln_then, attn_ln[m], attn_out[m]) for m in attn_out}
        experts = {m: ffn(name=f"ffn_{m}") for m in (("text", "image", "vl") if self.vl_ffn else ("text", "image"))}
        dropout = nn.Dropout(self.dropout_rate)

        def branch(h, name):  # layer scale, dropout, stochastic depth of a residual branch
            if self.layer_scale is not None:
                gamma = self.param(name, logical(nn.initializers.constant(self.layer_scale), ("embed",)), (width,),
                                   self.param_dtype)
                h = h * gamma.astype(h.dtype)
            return drop_path(self, dropout(h, deterministic=det), drop_path_rate, det)

        # attention: LN and q/k/v per modality slice (shared modules unless multiway), one softmax over all
        q, k, v = route(split, length, lambda h: proj["text"](ln1["text"](h)),
                        lambda h: proj["image"](ln1["image"](h)), x)
        mask = (broadcast or {}).get("mask")
        rng = self.make_rng("dropout") if self.attn_dropout_rate > 0.0 and not det else None
        bias = None if xs is None else xs[None]
        att = dot_product_attention(q, k, v, mask=mask if mask is not None else AttentionMask(),
                                    implementation=self.implementation, dropout_rate=self.attn_dropout_rate,
                                    dropout_rng=rng, return_probs=self.return_attention, bias=bias)
        att, probs = att if self.return_attention else (att, None)
        att = nn.with_logical_constraint(att, QKV_AXES)
        x = x + branch(route(split, length, attn_out["text"], attn_out["image"], att), "ls1")

        # feed-forward: the VL expert on everything (top layers, vl mode), else text / image experts by slice
        if self.mode == "vl" and self.vl_ffn:
            y = experts["vl"](x, deterministic=det)
            touched = {"vl"}
        else:
            y = route(split, length, lambda h: experts["text"](h, deterministic=det),
                      lambda h: experts["image"](h, deterministic=det), x)
            touched = {m for m, n in (("text", split), ("image", length - split)) if n}
        x = x + branch(y, "ls2")
        if self.is_initializing():  # one parameter set for every mode: create what this mode did not use
            empty = x[:, :0]
            for m in set(experts) - touched:
                experts[m](empty)
            if self.multiway_attention:
                for m, n in (("text", split), ("image", length - split)):
                    if not n:
                        attn_out[m](proj[m](ln1[m](empty))[0])
        x = nn.with_logical_constraint(x.astype(self.dtype), EMBED_AXES)
        return x, ({"probs": probs} if self.return_attention else {})


# ----------------------------------------------------------------------------------------------------
# The transformer

class MomeTransformer(nn.Module):
    """``depth`` MoME layers, the top ``vl_depth`` with a VL expert, and a final LayerNorm (``ln_final``).

    ``__call__(x, *, mode, text_len=0, key_mask=None, part="all", train)``: ``part="bottom"`` runs the
    layers below the VL ones and returns their output (no final norm); ``part="top"`` runs the VL layers
    (in any mode) and the final norm on such an output, so a model can run the bottom once and the top
    on it in two modes (VLMo's image-text contrast through the VL expert). ``key_mask [B, T]`` marks the
    real tokens. With ``relative_position`` the image tokens must be ``[class; grid patches]`` and text
    at most ``max_text_len`` tokens ([CLS] first). Bottom layers are parameters ``layers`` (scanned) or
    ``layer_{i}``, VL layers ``vl_layers`` / ``vl_layer_{i}``; the relative-position table is
    ``rel_pos/table``. Attention probabilities of ``attention_layers`` (global indices) are sown into
    the ``attention`` collection (``probs``).
    """

    depth: int
    num_heads: int
    mlp_dim: int
    vl_depth: int = 0
    multiway_attention: bool = False
    head_dim: int | None = None
    ln_eps: float = 1e-6
    act: str = "gelu"
    qkv_bias: str = "qv"
    layer_scale: float | None = None
    sub_ln: bool = False
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    init_std: float | None = None
    relative_position: bool = False
    image_grid: tuple[int, int] = (14, 14)
    max_text_len: int = 40
    final_norm: bool = True
    scan: bool = True
    remat: str = "none"
    implementation: str = "xla"
    attention_layers: tuple[int, ...] = ()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def block(self, mode: str, text_len: int) -> dict:
        """``MomeLayer`` fields of a bottom layer in ``mode``."""
        return dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, mode=mode, text_len=text_len,
                    multiway_attention=self.multiway_attention, head_dim=self.head_dim, ln_eps=self.ln_eps,
                    act=self.act, qkv_bias=self.qkv_bias, layer_scale=self.layer_scale, sub_ln=self.sub_ln,
                    dropout_rate=self.dropout_rate, attn_dropout_rate=self.attn_dropout_rate,
                    implementation=self.implementation, init_std=self.init_std, dtype=self.dtype,
                    param_dtype=self.param_dtype)

    @nn.compact
    def __call__(self, x: Array, *, mode: str, text_len: int = 0, key_mask: Array | None = None,
                 part: str = "all", train: bool = False) -> Array:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}; valid: {', '.join(PARTS)}")
        if not 0 <= self.vl_depth <= self.depth:
            raise ValueError(f"vl_depth {self.vl_depth} outside 0..depth ({self.depth})")
        start = self.depth - self.vl_depth
        first, stop = {"all": (0, self.depth), "bottom": (0, start), "top": (start, self.depth)}[part]
        length = x.shape[1]
        block = self.block(mode, text_len)
        segments = [Segment(n, dict(block, vl_ffn=vl), MomeLayer, name)
                    for n, vl, name, lo in ((start, False, "layer", 0), (self.vl_depth, True, "vl_layer", start))
                    if n and first <= lo < stop]
        bias = None
        if self.relative_position:
            bias = RelativePositionBias(self.num_heads, self.depth, tuple(self.image_grid), self.max_text_len,
                                        self.param_dtype, name="rel_pos")(mode, length, text_len, first, stop)
        mask = None if key_mask is None else AttentionMask(key_mask=key_mask.astype(bool))
        x = x.astype(self.dtype)  # the scan carry keeps one dtype
        if segments:
            x, _ = run_segments(self, segments, x, bias, {"mask": mask}, drop_path_rate=self.drop_path_rate,
                                scan=self.scan, remat=self.remat, train=train,
                                attention_layers=[i for i in self.attention_layers if first <= i < stop],
                                first_layer=first, total_depth=self.depth)
        if self.final_norm and part != "bottom":
            ln = functools.partial(layer_norm, self.ln_eps, self.dtype, self.param_dtype)
            if self.multiway_attention:  # BEiT-3: every LayerNorm is per modality, the last one too
                norms = {m: ln(name=f"ln_final_{m}") for m in ("text", "image")}
                split = text_split(mode, text_len, length)
                if self.is_initializing():  # one parameter set for every mode
                    for m, n in (("text", split), ("image", length - split)):
                        if not n:
                            norms[m](x[:, :0])
                x = route(split, length, norms["text"], norms["image"], x)
            else:
                x = ln(name="ln_final")(x)
        return x
