"""Video and audio towers: a ViT over 3-D tubelets (ViViT's joint space-time attention) and a ViT over
overlapping spectrogram patches (AST). Both keep the ViT tower's encoder, final norm, pooling and head,
and replace only its input tokens.

Tubelets (Arnab et al. 2021): ``[B, T, H, W, 3]`` cut into ``tubelet_size x patch x patch`` blocks,
tokens in (time, row, column) order as HF ``VivitModel``; an image is a static clip of one tubelet
(``tubelet_size`` copies of it; with 2-D patches, a one-frame video). A 2-D ViT
patch kernel starts a tubelet kernel with ``inflate_kernel`` (ViViT's central-frame initialisation;
``init_from.inflate`` does it when a video model starts from an image checkpoint).

Divided space-time attention (TimeSformer, Bertasius et al. 2021; ``attention_type="divided"``): each
layer attends over time (every spatial position across the frames), then over space (every frame's
tokens, with the class token), then runs its MLP (``DividedSpaceTimeLayer``). Its positions are usually
TimeSformer's factorised ones (``pos_embedding="space_time"``: a spatial table shared by the frames,
the class token's entry first, plus a temporal table), as HF ``TimesformerModel``.

Space-only attention (TimeSformer's ``space_only`` baseline; ``attention_type="space_only"``): every
frame is an image of its own (its patches and a copy of the class token) through the plain ViT layers;
after the last layer the frames' class-token outputs are averaged into the clip's, as TimeSformer
averages its frames before the final norm. Its positions are the spatial table alone
(``pos_embedding="space"``: no temporal table, so the frames' order is never seen).

Spectrograms (Gong et al. 2021): ``[B, time, mel]`` log-mel features read as a one-channel image of
``mel`` rows and ``time`` columns, cut into ``patch x patch`` patches every ``frequency_stride`` /
``time_stride`` (overlapping at AST's 10), tokens in (frequency, time) order as HF ``ASTModel``; a class
and a distillation token in front, pooled by their mean (``pool="prefix"``).
"""

from __future__ import annotations

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from vlfm.core.tree import inflate_kernel  # noqa: F401  (re-exported: the tubelet kernel's initialisation)
from vlfm.models import layers
from vlfm.models.tower_base import run_encoder
from vlfm.models.towers import TOWERS
from vlfm.models.vit import VisionTransformer

ATTENTION_TYPES = ("joint", "divided", "space_only")
VIDEO_POSITIONS = ("learned", "space_time", "space")


def _with_prefix(module: VisionTransformer, x: jax.Array, n_prefix: int) -> jax.Array:
    """Prefix tokens (class, then distillation) in front of ``x``."""
    dtype, pdtype = module.dtypes
    names = ("cls", "dist")[:n_prefix]
    prefix = [module.param(name, layers.logical(nn.initializers.zeros, ("embed",)), (module.width,), pdtype)
              for name in names]
    if not prefix:
        return x
    return jnp.concatenate([jnp.broadcast_to(jnp.stack(prefix).astype(dtype), (x.shape[0], n_prefix, module.width)),
                            x], 1)


def _finish(module: VisionTransformer, x: jax.Array, *, train: bool) -> jax.Array:
    """Dropout and ``ln_pre`` on the positioned tokens."""
    dtype, pdtype = module.dtypes
    x = nn.Dropout(module.dropout_rate)(x, deterministic=not train)
    if module.pre_norm:
        x = layers.layer_norm(module.ln_eps, dtype, pdtype, name="ln_pre")(x)
    return nn.with_logical_constraint(x, layers.EMBED_AXES)


def _prefix_and_positions(module: VisionTransformer, x: jax.Array, n_prefix: int, *, train: bool) -> jax.Array:
    """Prefix tokens (class, then distillation), learned positions, dropout and ``ln_pre``."""
    dtype, pdtype = module.dtypes
    x = _with_prefix(module, x, n_prefix)
    if module.pos_embedding != "learned":
        raise ValueError(f"{type(module).__name__} supports pos_embedding='learned' only, got {module.pos_embedding!r}")
    pos = layers.PosEmbed(x.shape[1], module.width, param_dtype=pdtype, name="pos_embed")()
    return _finish(module, x + pos.astype(dtype)[None], train=train)


def _space_time_positions(module: "VideoTransformer", x: jax.Array, frames: int, n_prefix: int, *,
                          train: bool) -> jax.Array:
    """TimeSformer's factorised positions on ``[B, frames * N, D]`` tokens in (time, space) order: the
    spatial table ``pos_embed [n_prefix + N, D]`` (the class token's entry first) is shared by the
    frames, the temporal table ``time_embed [num_frames, D]`` by the positions of a frame (not the
    class token; ``pos_embedding="space"`` has none). A clip of fewer frames than the table (an
    image: one) reads its first rows."""
    dtype, pdtype = module.dtypes
    b, length, width = x.shape
    n = length // frames
    table = module.num_frames // module.tubelet_size if module.num_frames else frames
    if module.pos_embedding == "space_time" and frames > table:
        raise ValueError(f"a clip of {frames} tubelet frames is longer than the temporal position table "
                         f"({table}: num_frames={module.num_frames}, tubelet_size={module.tubelet_size})")
    space = layers.PosEmbed(n_prefix + n, width, param_dtype=pdtype, name="pos_embed")().astype(dtype)
    x = x.reshape(b, frames, n, width) + space[n_prefix:][None, None]
    if module.pos_embedding == "space_time":
        time = layers.PosEmbed(table, width, param_dtype=pdtype, name="time_embed")()[:frames].astype(dtype)
        x = x + time[None, :, None]
    x = _with_prefix(module, x.reshape(b, length, width), n_prefix)
    if n_prefix:
        x = x.at[:, :n_prefix].add(space[:n_prefix][None])
    return _finish(module, x, train=train)


class DividedSpaceTimeLayer(nn.Module):
    """One TimeSformer layer as a stack layer (``vlfm.models.stack``: ``(carry, drop_path_rate, xs,
    broadcast) -> (carry, extras)``) on ``[B, prefix + frames * N, D]`` tokens in (time, space) order.

    Pre-LN, as HF ``TimesformerLayer`` with ``attention_type="divided_space_time"``:
      time:  patches += temporal_dense(temporal_attn(temporal_ln(patches)))  over each position's frames
      space: every frame's patches with a copy of the class token attend among themselves,
             ``attn(ln1(.))``; the frames' class-token outputs are averaged into one residual
      MLP:   x += mlp(ln2(x))
    Drop-path drops a branch per example (HF draws the temporal branch's per position). ``extras``
    (when asked) holds the spatial attention's parts under their names (``probs [B * frames, H, ...]``)
    and the temporal one's as ``temporal_<part>`` (``[B * N, H, frames, frames]``).
    """

    num_heads: int
    mlp_dim: int
    frames: int
    prefix: int = 1
    ln_eps: float = 1e-6
    act: str = "gelu"
    qkv_bias: bool = True
    layer_scale: float | None = None
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    implementation: str = "xla"
    return_attention: bool = False
    attention_outputs: tuple[str, ...] = ("probs",)
    init_std: float | None = None
    deterministic: bool = True
    dtype: layers.Dtype = jnp.float32
    param_dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, drop_path_rate, xs, broadcast):
        if xs is not None or any(v is not None for v in (broadcast or {}).values()):
            raise ValueError("divided space-time attention takes no per-layer inputs and no masks")
        if self.prefix not in (0, 1):
            raise ValueError(f"divided space-time attention takes at most one prefix (class) token, got {self.prefix}")
        det, t, p = self.deterministic, self.frames, self.prefix
        x = nn.with_logical_constraint(x, layers.EMBED_AXES)
        b, length, d = x.shape
        if (length - p) % t:
            raise ValueError(f"{length - p} tokens do not split into {t} frames")
        n = (length - p) // t
        ln = lambda name: layers.layer_norm(self.ln_eps, self.dtype, self.param_dtype, name=name)  # noqa: E731
        attention = lambda name: layers.Attention(  # noqa: E731
            self.num_heads, qkv_bias=self.qkv_bias, dropout_rate=self.attn_dropout_rate,
            implementation=self.implementation, init_std=self.init_std, dtype=self.dtype,
            param_dtype=self.param_dtype, name=name)
        dropout = nn.Dropout(self.dropout_rate)
        extras = {}

        def attend(module, h, prefix_name):
            if not self.return_attention:
                return module(h, deterministic=det)
            out, parts = module(h, deterministic=det, return_parts=tuple(self.attention_outputs))
            extras.update({prefix_name + k: v for k, v in parts.items()})
            return out

        def scaled(h, name):
            if self.layer_scale is None:
                return h
            gamma = self.param(name, layers.logical(nn.initializers.constant(self.layer_scale), ("embed",)), (d,),
                               self.param_dtype)
            return h * gamma.astype(h.dtype)

        def branch(h):
            return layers.drop_path(self, dropout(h, deterministic=det), drop_path_rate, det)

        cls, patches = x[:, :p], x[:, p:]
        # Time: each spatial position attends over its frames.
        h = einops.rearrange(patches, "b (t n) d -> (b n) t d", t=t)
        h = attend(attention("temporal_attn"), ln("temporal_ln")(h), "temporal_")
        h = einops.rearrange(h, "(b n) t d -> b (t n) d", b=b)
        h = layers.Proj((d,), ("embed", "proj"), init_std=self.init_std, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="temporal_dense")(h)
        patches = patches + branch(scaled(h, "ls_temporal"))
        # Space: each frame's tokens attend among themselves, with a copy of the class token per frame.
        h = einops.rearrange(patches, "b (t n) d -> (b t) n d", t=t)
        if p:
            h = jnp.concatenate([jnp.repeat(cls, t, axis=0), h], axis=1)
        h = attend(attention("attn"), ln("ln1")(h), "")
        spatial = einops.rearrange(h[:, p:], "(b t) n d -> b (t n) d", b=b)
        if p:
            spatial = jnp.concatenate([h[:, :p].reshape(b, t, p, d).mean(axis=1), spatial], axis=1)
        x = jnp.concatenate([cls, patches], axis=1) + branch(scaled(spatial, "ls1"))
        mlp = layers.Mlp(self.mlp_dim, self.act, self.dropout_rate, self.init_std, self.dtype, self.param_dtype,
                         name="mlp")
        x = x + branch(scaled(mlp(ln("ln2")(x), deterministic=det), "ls2"))
        x = nn.with_logical_constraint(x.astype(self.dtype), layers.EMBED_AXES)
        return x, extras


@TOWERS.register("video_vit")
class VideoTransformer(VisionTransformer):
    """Videos ``[B, T, H, W, 3]`` (or images ``[B, H, W, 3]``) -> ViT outputs over tubelet tokens.

    ``attention_type``: ``joint`` (every token attends to every token: ViViT's spatio-temporal model),
    ``divided`` (TimeSformer: time, then space, in every layer; at most one prefix token) or
    ``space_only`` (TimeSformer's baseline: each frame alone, class tokens averaged at the end).
    ``pos_embedding``: ``learned`` (one table over all tokens, ViViT), ``space_time`` (TimeSformer's
    spatial table plus a temporal one) or ``space`` (the spatial table alone). ``num_frames``: the input frames the temporal table is made
    for (None: the frames of the input that initialises the model); shorter clips, and images, read
    its first rows. An image is a static clip of one tubelet (``tubelet_size`` copies of it), so image
    and video batches share every parameter whatever the tubelet's length.
    """

    tubelet_size: int = 2
    attention_type: str = "joint"
    num_frames: int | None = None

    def _frames(self, video: jax.Array) -> int:
        """Input frames; an image counts as the static clip of one tubelet that ``embed`` makes of it."""
        return self.tubelet_size if video.ndim == 4 else video.shape[1]

    def embed(self, video: jax.Array, *, train: bool) -> tuple[jax.Array, int]:
        dtype, pdtype = self.dtypes
        if self.pos_embedding not in VIDEO_POSITIONS:
            raise ValueError(f"unknown video_vit pos_embedding {self.pos_embedding!r}; valid: "
                             f"{', '.join(VIDEO_POSITIONS)}")
        if video.ndim == 4:  # an image: a static clip of one tubelet (one frame for 2-D patches)
            video = jnp.repeat(video[:, None], self.tubelet_size, axis=1)
        b, t, h, w, _ = video.shape
        p, k = self.patch_size, self.tubelet_size
        if t % k or h % p or w % p:
            raise ValueError(f"video {(t, h, w)} is not divisible into tubelets of {(k, p, p)} (frames, rows, columns)")
        blocks = einops.rearrange(video, "b (t k) (h p1) (w p2) c -> b (t h w) k p1 p2 c", k=k, p1=p, p2=p)
        x = layers.Proj((self.width,), ("frames", "patch_h", "patch_w", "channels", "embed"), in_dims=4,
                        use_bias=self.patch_bias, init_std=self.init_std, dtype=dtype, param_dtype=pdtype,
                        name="tubelet_embed")(blocks)
        n_prefix = 1 if self.class_token else 0
        if self.pos_embedding in ("space_time", "space"):
            return _space_time_positions(self, x, t // k, n_prefix, train=train), n_prefix
        return _prefix_and_positions(self, x, n_prefix, train=train), n_prefix

    def encode(self, x: jax.Array, video: jax.Array, *, train: bool) -> tuple[jax.Array, dict]:
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(f"unknown video_vit attention_type {self.attention_type!r}; valid: "
                             f"{', '.join(ATTENTION_TYPES)}")
        if self.attention_type == "joint":
            return run_encoder(self, x, norm="pre", train=train)
        if self.attention_type == "space_only":
            return self._per_frame(x, self._frames(video) // self.tubelet_size, train=train)
        if self.depth == 0:
            raise ValueError("attention_type='divided' needs layers of this tower (depth > 0); with none it would "
                             "change nothing")
        dtype, pdtype = self.dtypes
        block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, frames=self._frames(video) // self.tubelet_size,
                     prefix=1 if self.class_token else 0, ln_eps=self.ln_eps, act=self.act, qkv_bias=self.qkv_bias,
                     layer_scale=self.layer_scale, dropout_rate=self.dropout_rate,
                     attn_dropout_rate=self.attn_dropout_rate, implementation=self.attention,
                     attention_outputs=tuple(self.attention_outputs), init_std=self.init_std, dtype=dtype,
                     param_dtype=pdtype)
        stack = layers.Stack((layers.Segment(self.depth, block, DividedSpaceTimeLayer),), self.drop_path_rate,
                             self.scan, self.remat, self.collect_hidden, tuple(self.attention_layers), name="encoder")
        out = stack(x.astype(dtype), train=train)
        if self.collect_hidden:
            out, hidden = out
            return out, {"hidden": hidden}
        return out, {}


    def _per_frame(self, x: jax.Array, frames: int, *, train: bool) -> tuple[jax.Array, dict]:
        """Space-only attention: ``[B, prefix + frames * N, D]`` -> every frame with a copy of the prefix
        through the ViT layers as one image (batch ``B * frames``) -> back in (time, space) order, the
        frames' prefix outputs averaged. Hidden states are regrouped the same way; sown attention maps
        stay per frame (``[B * frames, H, prefix + N, prefix + N]``)."""
        p = 1 if self.class_token else 0
        b, length, d = x.shape
        n = (length - p) // frames

        def split(h):  # [..., B, prefix + T N, D] -> [..., B T, prefix + N, D]
            lead = h.shape[:-3]
            patches = h[..., p:, :].reshape(*lead, b * frames, n, d)
            prefix = jnp.repeat(h[..., :p, :], frames, axis=-3)
            return jnp.concatenate([prefix, patches], axis=-2)

        def merge(h):  # [..., B T, prefix + N, D] -> [..., B, prefix + T N, D]
            lead = h.shape[:-3]
            prefix = h[..., :p, :].reshape(*lead, b, frames, p, d).mean(axis=-3)
            patches = h[..., p:, :].reshape(*lead, b, frames * n, d)
            return jnp.concatenate([prefix, patches], axis=-2)

        out, extras = run_encoder(self, split(x), norm="pre", train=train)
        if "hidden" in extras:
            extras["hidden"] = merge(extras["hidden"])
        return merge(out), extras


@TOWERS.register("spectrogram_vit")
class SpectrogramTransformer(VisionTransformer):
    """Log-mel spectrograms ``[B, time, mel]`` -> ViT outputs over overlapping patches (AST).
    ``distillation_token`` adds DeiT's second prefix token (AST keeps it from its DeiT start)."""

    patch_size: int = 16
    frequency_stride: int = 10
    time_stride: int = 10
    distillation_token: bool = True
    pool: str = "prefix"

    def embed(self, spectrogram: jax.Array, *, train: bool) -> tuple[jax.Array, int]:
        dtype, pdtype = self.dtypes
        if spectrogram.ndim != 3:
            raise ValueError(f"spectrogram_vit takes [batch, time, mel] features, got shape {spectrogram.shape}")
        image = jnp.swapaxes(spectrogram, 1, 2)[..., None]  # [B, mel, time, 1]: rows are frequencies
        p = self.patch_size
        if image.shape[1] < p or image.shape[2] < p:
            raise ValueError(f"spectrogram {spectrogram.shape[1:]} (time, mel) is smaller than one {p}x{p} patch")
        patches = jax.lax.conv_general_dilated_patches(
            image.astype(dtype), (p, p), (self.frequency_stride, self.time_stride), "VALID",
            dimension_numbers=("NHWC", "OIHW", "NHWC"))  # [B, F', T', p*p], (row, column) within a patch
        patches = einops.rearrange(patches, "b f t (p1 p2 c) -> b (f t) p1 p2 c", p1=p, p2=p, c=1)
        x = layers.Proj((self.width,), ("patch_h", "patch_w", "channels", "embed"), in_dims=3,
                        use_bias=self.patch_bias, init_std=self.init_std, dtype=dtype, param_dtype=pdtype,
                        name="patch_embed")(patches)
        if self.distillation_token and not self.class_token:
            raise ValueError("distillation_token needs class_token=True")
        n_prefix = (1 if self.class_token else 0) + (1 if self.distillation_token else 0)
        return _prefix_and_positions(self, x, n_prefix, train=train), n_prefix
