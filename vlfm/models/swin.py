"""Swin Transformer image tower (Liu et al., 2021) and Florence's CoSwin (Yuan et al., 2021).

Swin: non-overlapping patches -> stages of transformer blocks that attend inside ``window x window``
windows, every second block over windows shifted by ``window // 2`` (a cyclic shift of the feature map;
an attention mask keeps the wrapped-around regions apart), each block with its own learned relative
position bias table ``[(2w-1)^2, heads]``; between stages a patch merging halves the grid and doubles the
width (the 2x2 neighbours concatenated, LayerNorm, a linear map ``4C -> 2C``). A final LayerNorm, then the
mean of the tokens is the pooled output. Layout and numerics follow HF ``SwinModel`` (``vlfm.convert.hf_swin``
imports its checkpoints): a stage whose grid is not larger than the window gets no shift and a window of
the whole grid.

CoSwin (``coswin``): Florence replaces Swin's patch embedding and patch merging by CvT's convolutional
embeddings: an overlapping convolution (stem: kernel 7, stride 4, padding 2; between stages: kernel 3,
stride 2, padding 1) followed by a LayerNorm. Florence released no code; the kernel sizes are CvT's.

Parameters: ``patch_embed`` (or ``conv_embed``), ``ln_embed``, ``stage_{s}/pair_{i}/block_{0,1}/...``
(``stage_{s}/pairs/...`` with a leading ``layers`` axis when ``scan``: a stage's blocks alternate
unshifted / shifted windows, so a pair of blocks is the repeating unit that is scanned and rematerialised),
``merge_{s}`` between stages ``s`` and ``s + 1`` (``norm``, ``reduction``; CoSwin: ``conv``, ``norm``) and
``ln_final``.
Outputs: ``tokens [B, L, C]`` (the last stage's grid, row-major; ``prepend_pooled`` puts the pooled vector
first, as METER's Swin does, so a fusion model that reads token 0 reads the image summary),
``pooled [B, C]``, ``grid (h, w)`` and, with ``num_classes``, ``logits``.
"""

from __future__ import annotations

import functools

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlfm.models import layers
from vlfm.models.towers import TOWERS

MASK_VALUE = -100.0  # added to the scores of a shifted window's cross-region pairs (Swin's and HF's value)
EMBEDDINGS = ("patch", "conv")


def relative_position_index(window: int) -> np.ndarray:
    """``[w*w, w*w]`` indices into the ``[(2w-1)^2]`` bias table: ``(dy + w - 1) * (2w - 1) + dx + w - 1``."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return (rel[0] * (2 * window - 1) + rel[1]).astype(np.int32)


def window_geometry(grid: tuple[int, int], window: int) -> tuple[int, int]:
    """``(window, shift)`` of a stage's shifted blocks: a grid no larger than the window is one unshifted
    window of the whole grid (Swin, HF)."""
    if min(grid) <= window:
        return min(grid), 0
    return window, window // 2


def shift_mask(grid: tuple[int, int], window: int, shift: int) -> np.ndarray:
    """Boolean ``[num_windows, w*w, w*w]``: True where two tokens of a shifted window came from different
    regions of the unshifted map (they must not attend to each other)."""
    h, w = grid
    rows = (np.arange(h) >= h - window).astype(int) + (np.arange(h) >= h - shift)
    cols = (np.arange(w) >= w - window).astype(int) + (np.arange(w) >= w - shift)
    region = rows[:, None] * 3 + cols[None, :]
    win = einops.rearrange(region, "(hn wh) (wn ww) -> (hn wn) (wh ww)", wh=window, ww=window)
    return win[:, :, None] != win[:, None, :]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window of ``x [B, nW, N, C]``, with a relative position bias
    (parameter ``rel_pos_bias [(2w-1)^2, heads]``: its name ends in ``bias``, so the default optimizer leaves
    it undecayed, as Swin does) and an optional ``[nW, N, N]`` shift mask."""

    num_heads: int
    window: int
    qkv_bias: bool = True
    attn_dropout_rate: float = 0.0
    init_std: float | None = 0.02
    deterministic: bool = True
    dtype: layers.Dtype = jnp.float32
    param_dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
        head_dim = width // self.num_heads
        proj = functools.partial(layers.Proj, (self.num_heads, head_dim), ("embed", "heads", "kv"),
                                 use_bias=self.qkv_bias, init_std=self.init_std, dtype=self.dtype,
                                 param_dtype=self.param_dtype)
        q, k, v = (proj(name=n)(x) for n in ("query", "key", "value"))
        logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k).astype(jnp.float32) * head_dim ** -0.5
        table = self.param("rel_pos_bias", layers.logical(nn.initializers.truncated_normal(0.02), ("pos", "heads")),
                           ((2 * self.window - 1) ** 2, self.num_heads), self.param_dtype)
        index = relative_position_index(self.window)
        bias = jnp.transpose(table.astype(jnp.float32)[index], (2, 0, 1))  # [H, N, N]
        logits = logits + bias
        if mask is not None:
            logits = logits + jnp.where(jnp.asarray(mask), MASK_VALUE, 0.0)[None, :, None]
        probs = jax.nn.softmax(logits, axis=-1)
        probs = nn.Dropout(self.attn_dropout_rate)(probs, deterministic=self.deterministic)
        out = jnp.einsum("bwhqk,bwkhd->bwqhd", probs.astype(self.dtype), v)
        return layers.Proj((width,), ("heads", "kv", "embed"), in_dims=2, init_std=self.init_std, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="out")(out)


class SwinBlock(nn.Module):
    """Pre-LN block on ``x [B, h*w, C]``: ``x += attn(ln1(x))`` over (shifted) windows, ``x += mlp(ln2(x))``."""

    num_heads: int
    mlp_dim: int
    grid: tuple[int, int]
    window: int
    shift: int = 0
    qkv_bias: bool = True
    ln_eps: float = 1e-5
    act: str = "gelu"
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    init_std: float | None = 0.02
    deterministic: bool = True
    dtype: layers.Dtype = jnp.float32
    param_dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, drop_path_rate: jax.Array | float = 0.0) -> jax.Array:
        (h, w), win, s, det = self.grid, self.window, self.shift, self.deterministic
        if h % win or w % win:
            raise ValueError(f"a {h}x{w} grid does not split into {win}x{win} windows (pick image, patch and window "
                             f"sizes whose grids divide)")
        x = nn.with_logical_constraint(x, layers.EMBED_AXES)
        ln = functools.partial(layers.layer_norm, self.ln_eps, self.dtype, self.param_dtype)
        dropout = nn.Dropout(self.dropout_rate)

        def branch(y):
            return layers.drop_path(self, dropout(y, deterministic=det), drop_path_rate, det)

        y = ln(name="ln1")(x).reshape(x.shape[0], h, w, x.shape[-1])
        if s:
            y = jnp.roll(y, (-s, -s), axis=(1, 2))
        y = einops.rearrange(y, "b (hn wh) (wn ww) c -> b (hn wn) (wh ww) c", wh=win, ww=win)
        y = WindowAttention(self.num_heads, win, self.qkv_bias, self.attn_dropout_rate, self.init_std, det, self.dtype,
                            self.param_dtype, name="attn")(y, shift_mask((h, w), win, s) if s else None)
        y = einops.rearrange(y, "b (hn wn) (wh ww) c -> b (hn wh) (wn ww) c", hn=h // win, wh=win)
        if s:
            y = jnp.roll(y, (s, s), axis=(1, 2))
        x = x + branch(y.reshape(x.shape))
        mlp = layers.Mlp(self.mlp_dim, act=self.act, dropout_rate=self.dropout_rate, init_std=self.init_std,
                         dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")
        x = x + branch(mlp(ln(name="ln2")(x), deterministic=det))
        return nn.with_logical_constraint(x.astype(self.dtype), layers.EMBED_AXES)


class SwinPair(nn.Module):
    """Two blocks (unshifted, then shifted windows) as a stack layer (``vlfm.models.stack``): the per-layer
    input ``xs`` is the pair's two drop-path rates."""

    num_heads: int
    mlp_dim: int
    grid: tuple[int, int]
    window: int
    shift: int
    block: dict
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, drop_path_rate, xs, broadcast):
        del drop_path_rate, broadcast  # the rates come per block in xs
        for i, shift in enumerate((0, self.shift)):
            x = SwinBlock(self.num_heads, self.mlp_dim, tuple(self.grid), self.window, shift,
                          deterministic=self.deterministic, name=f"block_{i}", **self.block)(x, xs[i])
        return x, {}


def patch_merge(x: jax.Array) -> jax.Array:
    """``[B, h, w, C] -> [B, h/2, w/2, 4C]``: each 2x2 neighbourhood's tokens in Swin's order (top-left,
    bottom-left, top-right, bottom-right)."""
    return jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)


class PatchMerging(nn.Module):
    """Swin's patch merging ``[B, h, w, C] -> [B, h/2, w/2, 2C]``: ``reduction(norm(patch_merge(x)))``."""

    ln_eps: float = 1e-5
    init_std: float | None = 0.02
    dtype: layers.Dtype = jnp.float32
    param_dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        x = layers.layer_norm(self.ln_eps, self.dtype, self.param_dtype, name="norm")(patch_merge(x))
        return layers.Proj((2 * c,), ("mlp", "embed"), use_bias=False, init_std=self.init_std, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="reduction")(x)


class ConvEmbed(nn.Module):
    """CvT's convolutional embedding: an overlapping strided convolution, then LayerNorm. The padding,
    ``(kernel - stride + 1) // 2`` on each side, makes the output grid exactly ``input / stride`` (CvT's
    kernel 7, stride 4, padding 2 and kernel 3, stride 2, padding 1)."""

    features: int
    kernel: int
    stride: int
    ln_eps: float = 1e-5
    init_std: float | None = 0.02
    dtype: layers.Dtype = jnp.float32
    param_dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = layers.kernel_initializer(self.init_std, in_axis=(0, 1, 2), out_axis=3)
        x = nn.Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                    padding=[((self.kernel - self.stride + 1) // 2,) * 2] * 2, dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    kernel_init=layers.logical(init, ("patch_h", "patch_w", "channels", "embed")),
                    bias_init=layers.logical(nn.initializers.zeros, ("embed",)), name="conv")(x)
        return layers.layer_norm(self.ln_eps, self.dtype, self.param_dtype, name="norm")(x)


@TOWERS.register("swin")
class SwinTransformer(nn.Module):
    """Images ``[B, H, W, 3]`` -> ``{"tokens", "pooled", "grid", "logits"?}`` (see the module docstring).

    ``depths``/``num_heads`` per stage; stage ``s`` has width ``embed_dim * 2**s``. ``embedding``: ``patch``
    (Swin) or ``conv`` (CoSwin; a ``stem_kernel`` convolution with stride ``patch_size``, and a
    ``merge_kernel`` convolution with stride 2). ``abs_pos_embed`` adds learned absolute positions
    after the patch embedding (Swin's ``ape``, off by default). Drop-path rates rise linearly over all
    blocks. ``collect_hidden``/``norm_hidden`` exist for the fusion models' interface and must stay False
    (the stages' widths differ).
    """

    image_size: int = 224
    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ln_eps: float = 1e-5
    act: str = "gelu"
    embedding: str = "patch"
    patch_norm: bool = True
    stem_kernel: int = 7
    merge_kernel: int = 3
    abs_pos_embed: bool = False
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    init_std: float | None = 0.02
    pool: str = "avg"
    prepend_pooled: bool = False
    num_classes: int = 0
    scan: bool = False
    remat: str = "none"
    collect_hidden: bool = False
    norm_hidden: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def dtypes(self) -> tuple[jnp.dtype, jnp.dtype]:
        return jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)

    @property
    def width(self) -> int:
        """Width of the output tokens (the last stage's)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def _check(self, images: jax.Array) -> None:
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {self.embedding!r}; valid: {', '.join(EMBEDDINGS)}")
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {tuple(self.depths)} and num_heads {tuple(self.num_heads)} differ in length")
        if any(d % 2 for d in self.depths):
            raise ValueError(f"every stage needs an even depth (unshifted/shifted pairs), got {tuple(self.depths)}")
        if self.pool not in ("avg", "none"):
            raise ValueError(f"unknown pool {self.pool!r}; valid: avg, none")
        if self.collect_hidden or self.norm_hidden:
            raise ValueError("a Swin tower has no single-width hidden-state stack: collect_hidden and norm_hidden "
                             "must be False")
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"images of {images.shape[1:3]} pixels, but image_size={self.image_size}")

    def embed(self, images: jax.Array, train: bool) -> tuple[jax.Array, tuple[int, int]]:
        """Patch (Swin) or convolutional (CoSwin) embedding -> ``[B, h, w, C]``."""
        dtype, pdtype = self.dtypes
        if self.embedding == "patch":
            x, grid = layers.PatchEmbed(self.patch_size, self.embed_dim, init_std=self.init_std, dtype=dtype,
                                        param_dtype=pdtype, name="patch_embed")(images)
            if self.patch_norm:
                x = layers.layer_norm(self.ln_eps, dtype, pdtype, name="ln_embed")(x)
        else:
            x = ConvEmbed(self.embed_dim, self.stem_kernel, self.patch_size, self.ln_eps, self.init_std, dtype, pdtype,
                          name="conv_embed")(images)
            grid = x.shape[1:3]
            x = x.reshape(x.shape[0], -1, self.embed_dim)
        if self.abs_pos_embed:
            x = x + layers.PosEmbed(x.shape[1], self.embed_dim, param_dtype=pdtype, name="pos_embed")().astype(dtype)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        return x, tuple(grid)

    def merge(self, x: jax.Array, grid: tuple[int, int], stage: int) -> tuple[jax.Array, tuple[int, int]]:
        """Between stages ``stage`` and ``stage + 1``: ``[B, h*w, C] -> [B, h*w/4, 2C]`` (module ``merge_{stage}``)."""
        dtype, pdtype = self.dtypes
        (h, w), c = grid, x.shape[-1]
        if h % 2 or w % 2:
            raise ValueError(f"stage {stage}'s {h}x{w} grid cannot be merged 2x2")
        x = x.reshape(x.shape[0], h, w, c)
        if self.embedding == "patch":
            x = PatchMerging(self.ln_eps, self.init_std, dtype, pdtype, name=f"merge_{stage}")(x)
        else:
            x = ConvEmbed(2 * c, self.merge_kernel, 2, self.ln_eps, self.init_std, dtype, pdtype,
                          name=f"merge_{stage}")(x)
        grid = x.shape[1:3]
        return x.reshape(x.shape[0], -1, x.shape[-1]), tuple(grid)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> dict:
        self._check(images)
        dtype, pdtype = self.dtypes
        x, grid = self.embed(images, train)
        x = nn.with_logical_constraint(x.astype(dtype), layers.EMBED_AXES)
        rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).astype(np.float32)
        block = dict(qkv_bias=self.qkv_bias, ln_eps=self.ln_eps, act=self.act, dropout_rate=self.dropout_rate,
                     attn_dropout_rate=self.attn_dropout_rate, init_std=self.init_std, dtype=dtype, param_dtype=pdtype)
        start = 0
        for s, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
            if s:
                x, grid = self.merge(x, grid, s - 1)
            width = x.shape[-1]
            window, shift = window_geometry(grid, self.window_size)
            pair = dict(num_heads=heads, mlp_dim=int(width * self.mlp_ratio), grid=grid, window=window, shift=shift,
                        block=block)
            stage = _Stage((layers.Segment(depth // 2, pair, SwinPair, "pair"),), scan=self.scan, remat=self.remat,
                           name=f"stage_{s}")
            x = stage(x, jnp.asarray(rates[start:start + depth].reshape(-1, 2)), train=train)
            start += depth
        x = layers.layer_norm(self.ln_eps, dtype, pdtype, name="ln_final")(x)
        outputs = {"grid": grid}
        pooled = x.mean(axis=1) if self.pool == "avg" else None
        if self.prepend_pooled:
            if pooled is None:
                raise ValueError("prepend_pooled needs pool='avg'")
            x = jnp.concatenate([pooled[:, None], x], axis=1)
        outputs["tokens"] = x
        outputs["pooled"] = pooled
        if self.num_classes:
            if pooled is None:
                raise ValueError("a classifier head needs pool='avg'")
            outputs["logits"] = layers.Proj((self.num_classes,), ("embed", "classes"), zero_init=True, dtype=dtype,
                                            param_dtype=pdtype, name="head")(pooled).astype(jnp.float32)
        return outputs


class _Stage(nn.Module):
    """One stage's block pairs through ``vlfm.models.stack.run_segments`` (scanned or unrolled, remat)."""

    segments: tuple
    scan: bool = False
    remat: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, rates: jax.Array, *, train: bool = False) -> jax.Array:
        x, _ = layers.run_segments(self, self.segments, x, rates, None, scan=self.scan, remat=self.remat, train=train)
        return x


@TOWERS.register("coswin")
class CoSwin(SwinTransformer):
    """Florence's CoSwin: a Swin tower with CvT's convolutional embeddings (``embedding="conv"``)."""

    embedding: str = "conv"
