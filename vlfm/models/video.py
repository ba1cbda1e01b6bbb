"""Video and audio towers: a ViT over 3-D tubelets (ViViT's joint space-time attention) and a ViT over
overlapping spectrogram patches (AST). Both keep the ViT tower's encoder, final norm, pooling and head,
and replace only its input tokens.

Tubelets (Arnab et al. 2021): ``[B, T, H, W, 3]`` cut into ``tubelet_size x patch x patch`` blocks,
tokens in (time, row, column) order as HF ``VivitModel``; an image is a one-frame video. A 2-D ViT
patch kernel starts a tubelet kernel with ``inflate_kernel`` (ViViT's central-frame initialisation;
``init_from.inflate`` does it when a video model starts from an image checkpoint).

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
from vlfm.models.towers import TOWERS
from vlfm.models.vit import VisionTransformer


def _prefix_and_positions(module: VisionTransformer, x: jax.Array, n_prefix: int, *, train: bool) -> jax.Array:
    """Prefix tokens (class, then distillation), learned positions, dropout and ``ln_pre``."""
    dtype, pdtype = module.dtypes
    b = x.shape[0]
    names = ("cls", "dist")[:n_prefix]
    prefix = [module.param(name, layers.logical(nn.initializers.zeros, ("embed",)), (module.width,), pdtype)
              for name in names]
    if prefix:
        x = jnp.concatenate([jnp.broadcast_to(jnp.stack(prefix).astype(dtype), (b, n_prefix, module.width)), x], 1)
    if module.pos_embedding != "learned":
        raise ValueError(f"{type(module).__name__} supports pos_embedding='learned' only, got {module.pos_embedding!r}")
    pos = layers.PosEmbed(x.shape[1], module.width, param_dtype=pdtype, name="pos_embed")()
    x = nn.Dropout(module.dropout_rate)(x + pos.astype(dtype)[None], deterministic=not train)
    if module.pre_norm:
        x = layers.layer_norm(module.ln_eps, dtype, pdtype, name="ln_pre")(x)
    return nn.with_logical_constraint(x, layers.EMBED_AXES)


@TOWERS.register("video_vit")
class VideoTransformer(VisionTransformer):
    """Videos ``[B, T, H, W, 3]`` (or images ``[B, H, W, 3]``) -> ViT outputs over tubelet tokens, with
    joint attention over all of them (ViViT's spatio-temporal model)."""

    tubelet_size: int = 2

    def embed(self, video: jax.Array, *, train: bool) -> tuple[jax.Array, int]:
        dtype, pdtype = self.dtypes
        if video.ndim == 4:
            video = video[:, None]
        b, t, h, w, _ = video.shape
        p, k = self.patch_size, self.tubelet_size
        if t % k or h % p or w % p:
            raise ValueError(f"video {(t, h, w)} is not divisible into tubelets of {(k, p, p)} (frames, rows, columns)")
        blocks = einops.rearrange(video, "b (t k) (h p1) (w p2) c -> b (t h w) k p1 p2 c", k=k, p1=p, p2=p)
        x = layers.Proj((self.width,), ("frames", "patch_h", "patch_w", "channels", "embed"), in_dims=4,
                        use_bias=self.patch_bias, init_std=self.init_std, dtype=dtype, param_dtype=pdtype,
                        name="tubelet_embed")(blocks)
        n_prefix = 1 if self.class_token else 0
        return _prefix_and_positions(self, x, n_prefix, train=train), n_prefix


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
