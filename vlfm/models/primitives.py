"""Transformer building blocks without attention: projections, norms, embeddings, activations, drop-path.

Every parameter is created with logical axis names, so that the sharding rules of
``vlfm.core.sharding`` decide how it is laid out on the mesh. Kernels with several output axes are
einsum projections (``Proj``) rather than ``nn.DenseGeneral``, whose reshape breaks N-D logical
annotations under a mesh.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


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


def drop_path(module: nn.Module, x: Array, rate: Array | float, deterministic: bool) -> Array:
    """Stochastic depth: drops the whole residual branch per example with probability ``rate``."""
    if deterministic or (isinstance(rate, float) and rate == 0.0):
        return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / jnp.maximum(keep, 1e-6), 0.0).astype(x.dtype)
