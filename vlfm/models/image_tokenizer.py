"""Frozen image tokenizer: images -> a grid of discrete ids (for MIM, prefix image modelling).

One interface for every model that needs image codes: ``codes = tokenizer(images)`` gives int32
[B, h, w], and ``tokenizer.codebook_size`` the vocabulary. The tokenizer holds its weights as
constants (jnp arrays on a frozen dataclass), not as Flax params, so no optimizer ever sees them and
no gradient flows through them.

Two sources of weights:
- ``fit_kmeans``: a k-means codebook of per-patch normalised pixels, fitted on any image array (the
  built-in data); vlfm can build it itself.
- ``load``: a released dVAE/VQ codebook in an ``.npz`` file with the layout
  ``codebook`` float [K, D], ``projection`` float [P*P*3, D] (patch pixels -> code space; omit for
  identity, D = P*P*3), ``patch_size`` int scalar, ``normalise`` bool scalar (per-patch mean/std);
  or a DALL-E dVAE encoder (FLAVA's codebook, ``vlfm.models.dvae``), which ``load`` recognises.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


def _patches(images: jax.Array, patch_size: int, normalise: bool) -> jax.Array:
    """[B,H,W,C] -> [B,h,w,P*P*C], optionally normalised per patch (removes brightness/contrast)."""
    b, hh, ww, c = images.shape
    h, w = hh // patch_size, ww // patch_size
    x = images[:, : h * patch_size, : w * patch_size].astype(jnp.float32)
    x = x.reshape(b, h, patch_size, w, patch_size, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, h, w, patch_size * patch_size * c)
    if normalise:
        x = (x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) + 1e-6)
    return x


@dataclasses.dataclass(frozen=True)
class ImageTokenizer:
    """Nearest-codeword tokenizer over (projected) image patches; frozen by construction."""

    codebook: jax.Array  # [K, D]
    patch_size: int
    projection: Optional[jax.Array] = None  # [P*P*C, D]
    normalise: bool = True

    @property
    def codebook_size(self) -> int:
        return int(self.codebook.shape[0])

    def features(self, images: jax.Array) -> jax.Array:
        x = _patches(images, self.patch_size, self.normalise)
        if self.projection is not None:
            x = x @ self.projection
        return x

    def __call__(self, images: jax.Array) -> jax.Array:
        """int32 codes [B, h, w]; stop_gradient so a caller's loss never reaches the codebook."""
        x = jax.lax.stop_gradient(self.features(images))
        cb = jax.lax.stop_gradient(jnp.asarray(self.codebook, jnp.float32))
        d = (x * x).sum(-1, keepdims=True) - 2 * x @ cb.T + (cb * cb).sum(-1)
        return jnp.argmin(d, axis=-1).astype(jnp.int32)

    def quantisation_error(self, images: jax.Array) -> jax.Array:
        """Mean squared distance of each patch feature to its codeword (lower = better codebook)."""
        x = self.features(images)
        q = jnp.asarray(self.codebook)[self(images)]
        return jnp.mean(jnp.sum((x - q) ** 2, -1))

    def save(self, path: str) -> None:
        arrays = dict(codebook=np.asarray(self.codebook), patch_size=np.int32(self.patch_size),
                      normalise=np.bool_(self.normalise))
        if self.projection is not None:
            arrays["projection"] = np.asarray(self.projection)
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str) -> "ImageTokenizer":
        """A nearest-codeword ``.npz``, or a dVAE encoder saved by ``vlfm.models.dvae`` (same interface)."""
        with np.load(path) as f:
            if "dvae_blocks_per_group" in f.files:
                from vlfm.models.dvae import DvaeTokenizer

                return DvaeTokenizer.load(path)  # type: ignore[return-value]
            missing = {"codebook", "patch_size"} - set(f.files)
            if missing:
                raise ValueError(f"{path}: missing {sorted(missing)}; expected codebook [K,D], "
                                 "patch_size, optional projection [P*P*C,D], normalise")
            proj = jnp.asarray(f["projection"]) if "projection" in f.files else None
            norm = bool(f["normalise"]) if "normalise" in f.files else True
            return cls(jnp.asarray(f["codebook"]), int(f["patch_size"]), proj, norm)


def fit_kmeans(images: np.ndarray, codebook_size: int, patch_size: int, *, iters: int = 20,
               seed: int = 0, normalise: bool = True) -> ImageTokenizer:
    """Lloyd's k-means on image patches, initialised from random patches (deterministic per seed)."""
    x = np.asarray(_patches(jnp.asarray(images), patch_size, normalise)).reshape(-1, patch_size * patch_size * images.shape[-1])
    rng = np.random.default_rng(seed)
    cb = x[rng.choice(len(x), codebook_size, replace=len(x) < codebook_size)].copy()
    for _ in range(iters):
        d = (x * x).sum(1, keepdims=True) - 2 * x @ cb.T + (cb * cb).sum(1)
        a = d.argmin(1)
        for k in range(codebook_size):
            m = a == k
            if m.any():
                cb[k] = x[m].mean(0)
    return ImageTokenizer(jnp.asarray(cb), patch_size, None, normalise)


def builtin_kmeans(codebook_size: int, patch_size: int, image_size: int, *, num_images: int = 2000,
                   normalise: bool = False, iters: int = 20, seed: int = 0,
                   cache_dir: str | None = None) -> ImageTokenizer:
    """A k-means tokenizer fitted on the first ``num_images`` built-in training images (one object each,
    scaled to [-1, 1] as the data pipeline scales them). Fitted once and cached as an ``.npz`` next to the
    built-in data (``VLFM_CACHE_DIR``, else ``~/.cache/vlfm``), named by every parameter of the fit."""
    import os
    import tempfile

    from vlfm.data import shapes
    from vlfm.data.builtin import IMAGE_MEAN, IMAGE_STD

    root = os.path.dirname(shapes.cache_path("train", num_images, image_size, 1, cache_dir))
    name = (f"kmeans_{shapes.DATASET_VERSION}_n{num_images}_s{image_size}_p{patch_size}_k{codebook_size}"
            f"_norm{int(normalise)}_it{iters}_seed{seed}.npz")
    path = os.path.join(root, name)
    if os.path.exists(path):
        return ImageTokenizer.load(path)
    images = shapes.load("train", num_images, image_size, 1, cache_dir=cache_dir)["image"]
    images = (images.astype(np.float32) / 255.0 - IMAGE_MEAN) / IMAGE_STD
    tok = fit_kmeans(images, codebook_size, patch_size, iters=iters, seed=seed, normalise=normalise)
    os.makedirs(root, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=name + ".", suffix=".npz")
    os.close(fd)
    try:
        tok.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return tok


@functools.lru_cache(maxsize=8)
def resolve_tokenizer(source: str, *, codebook_size: int, patch_size: int, image_size: int,
                      fit_images: int = 2000, normalise: bool = False) -> ImageTokenizer:
    """A model's frozen tokenizer from its config: ``"kmeans"`` (``builtin_kmeans``) or an ``.npz`` path
    (``ImageTokenizer.load``). Cached per process, so every trace of the model reuses one codebook; built
    eagerly even when first asked for inside a trace (a model's init under ``jax.eval_shape``)."""
    with jax.ensure_compile_time_eval():
        if source == "kmeans":
            return builtin_kmeans(codebook_size, patch_size, image_size, num_images=fit_images, normalise=normalise)
        if source.endswith(".npz"):
            return ImageTokenizer.load(source)
    raise ValueError(f"unknown image tokenizer {source!r}; valid: 'kmeans' (fitted on the built-in data) or the "
                     "path of an .npz codebook")
