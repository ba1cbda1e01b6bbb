"""Masked image modelling parts shared by FLAVA, VLC and the BEiT-style models.

- ``random_masking``: MAE's per-example random subset of patch tokens, dropped from the sequence,
  with the order that puts them back (``ids_restore``); ``restore`` puts a token in every dropped slot.
- ``replace_masked``: BEiT / FLAVA style, the sequence keeps its length and masked patches become a
  learned mask token (``MaskToken``).
- ``MaskedPredictionHead``: ``dense -> act -> LayerNorm -> decoder + bias`` over a vocabulary (discrete
  image codes of a frozen tokenizer, or text tokens): FLAVA's MIM / MLM / MMM heads.
- ``MaeDecoder``: MAE's light decoder from the kept tokens to ``P*P*C`` pixels per patch, with fixed
  2-D sin-cos positions; its targets come from ``patchify`` and its loss is ``mae_pixel``.
- Feature regression (Visual Parsing's MFR, R2D2's FgD) is the loss ``masked_feature_regression`` over
  any model's predicted and target features.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlfm.models import layers

Dtype = layers.Dtype


def random_masking(rng: jax.Array, num_patches: int, batch_size: int,
                   mask_ratio: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """MAE's random masking: ``(ids_keep [B, K], mask [B, N] bool (True = dropped), ids_restore [B, N])``.

    ``K = int(N * (1 - mask_ratio))`` patches are kept per example (at least one); they are the ones with
    the smallest uniform noise, so every subset of size K is equally likely. ``ids_restore`` is the
    inverse permutation: ``restore`` uses it to put the kept tokens back at their positions.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = max(1, int(num_patches * (1.0 - mask_ratio)))
    noise = jax.random.uniform(rng, (batch_size, num_patches))
    ids_shuffle = jnp.argsort(noise, axis=1)
    ids_restore = jnp.argsort(ids_shuffle, axis=1)
    mask = ids_restore >= keep  # position p is kept iff its rank in the shuffle is below keep
    return ids_shuffle[:, :keep].astype(jnp.int32), mask, ids_restore.astype(jnp.int32)


def keep_tokens(x: jax.Array, ids_keep: jax.Array) -> jax.Array:
    """The kept tokens ``[B, K, D]`` of ``x [B, N, D]`` in ``ids_keep`` order."""
    return jnp.take_along_axis(x, ids_keep[..., None], axis=1)


def restore(kept: jax.Array, fill: jax.Array, ids_restore: jax.Array) -> jax.Array:
    """``[B, K, D]`` kept tokens -> ``[B, N, D]`` in the original order, ``fill [D]`` in the dropped slots."""
    b, k, d = kept.shape
    n = ids_restore.shape[1]
    full = jnp.concatenate([kept, jnp.broadcast_to(fill.astype(kept.dtype), (b, n - k, d))], axis=1)
    return jnp.take_along_axis(full, ids_restore[..., None], axis=1)


def replace_masked(x: jax.Array, mask: jax.Array, token: jax.Array) -> jax.Array:
    """BEiT-style masking: ``x [B, N, D]`` with ``token [D]`` where ``mask [B, N]`` is True (same length)."""
    m = mask.astype(x.dtype)[..., None]
    return x * (1.0 - m) + token.astype(x.dtype) * m


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """``[B, H, W, C]`` -> ``[B, N, P*P*C]`` in raster patch order (row, column, channel inside a patch)."""
    b, hh, ww, c = images.shape
    h, w = hh // patch_size, ww // patch_size
    x = images[:, :h * patch_size, :w * patch_size].reshape(b, h, patch_size, w, patch_size, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * w, patch_size * patch_size * c)


class MaskToken(nn.Module):
    """A learned mask embedding ``[width]`` (zeros at init, as BEiT and FLAVA start it)."""

    width: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("embedding", layers.logical(nn.initializers.zeros, ("embed",)), (self.width,),
                          self.param_dtype)


class MaskedPredictionHead(nn.Module):
    """``dense -> act -> LayerNorm -> decoder (+ bias)`` to ``vocab_size`` logits (float32).

    HF ``FlavaMaskedPredictionHead`` / BERT's prediction head with an untied decoder; parameters
    ``transform``, ``ln``, ``decoder``.
    """

    vocab_size: int
    act: str = "gelu"
    ln_eps: float = 1e-12
    init_std: float | None = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        common = dict(init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
        h = layers.Proj((h.shape[-1],), ("embed", "proj"), name="transform", **common)(h)
        h = layers.activation(self.act)(h)
        h = layers.layer_norm(self.ln_eps, self.dtype, self.param_dtype, name="ln")(h)
        return layers.Proj((self.vocab_size,), ("embed", "vocab"), name="decoder", **common)(h).astype(jnp.float32)


class MaeDecoder(nn.Module):
    """MAE's decoder: kept tokens ``[B, n_prefix + K, D_enc]`` -> pixels ``[B, N, out_dim]`` of every patch.

    Embeds to ``width``, puts a learned mask token in each dropped slot (``ids_restore``), adds fixed 2-D
    sin-cos positions (zeros on the prefix tokens), runs ``depth`` pre-LN layers, a LayerNorm and a linear
    map to ``out_dim`` (``P*P*C``), and drops the prefix. MAE-Base: width 512, depth 8, 16 heads.
    """

    grid: tuple[int, int]
    out_dim: int
    width: int = 512
    depth: int = 8
    num_heads: int = 16
    mlp_dim: int = 2048
    n_prefix: int = 1
    ln_eps: float = 1e-6
    act: str = "gelu"
    init_std: float | None = None
    scan: bool = True
    remat: str = "none"
    attention: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, ids_restore: jax.Array, *, train: bool = False) -> jax.Array:
        common = dict(init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
        x = layers.Proj((self.width,), ("embed", "mlp"), name="embed", **common)(tokens)
        x = x.astype(self.dtype)
        prefix, kept = x[:, :self.n_prefix], x[:, self.n_prefix:]
        x = restore(kept, MaskToken(self.width, self.param_dtype, name="mask_token")(), ids_restore)
        pos = jnp.asarray(layers.sincos_2d(*self.grid, self.width), self.dtype)
        x = jnp.concatenate([prefix, x + pos[None]], axis=1)
        block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, norm="pre", ln_eps=self.ln_eps, act=self.act,
                     implementation=self.attention, init_std=self.init_std, dtype=self.dtype,
                     param_dtype=self.param_dtype)
        x = layers.Encoder(self.depth, block, 0.0, self.scan, self.remat, name="encoder")(x, train=train)
        x = layers.layer_norm(self.ln_eps, self.dtype, self.param_dtype, name="ln")(x)
        out = layers.Proj((self.out_dim,), ("mlp", "proj"), name="pred", **common)(x[:, self.n_prefix:])
        return out.astype(jnp.float32)
