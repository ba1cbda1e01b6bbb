"""The DALL-E dVAE encoder as a frozen image tokenizer (FLAVA's MIM targets, BEiT's).

Same interface as ``vlfm.models.image_tokenizer.ImageTokenizer``: ``codes = tokenizer(images)`` gives
int32 ``[B, h, w]``, with ``codebook_size`` and ``patch_size`` (the model's patch size the grid matches).
The weights are constants (numpy arrays in HF ``FlavaImageCodebook``'s naming, ``blocks.*``), never
parameters; codes are computed under ``stop_gradient``.

The network (HF ``FlavaImageCodebook``, OpenAI's ``dall_e`` encoder): a 7x7 input conv, four groups of
``blocks_per_group`` residual blocks (``id_path`` 1x1 conv when the width changes, plus ``post_gain`` =
1 / (4 * blocks_per_group)^2 times ``relu, conv3x3, relu, conv3x3, relu, conv3x3, relu, conv1x1``) with
2x2 max-pooling after the first three, then ``relu, conv1x1`` to the vocabulary; the code of a cell is
the argmax. Its input is the image at ``input_size`` (8 pixels per code), in [0, 1] mapped to
``0.8 * x + 0.1`` (``map_pixels``). Model images are normalised, so ``pixel_mean`` / ``pixel_std``
undo that normalisation first.

``.npz`` layout (``save`` / ``load``; ``ImageTokenizer.load`` dispatches here when it finds it):
``dvae/<HF name>`` arrays, ``dvae_blocks_per_group``, ``patch_size``, ``input_size``, ``pixel_mean``,
``pixel_std``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LOGIT_LAPLACE_EPS = 0.1


def _conv(x: jax.Array, weight: np.ndarray, bias: np.ndarray) -> jax.Array:
    """torch Conv2d (``[out, in, kh, kw]``, 'same' padding, stride 1) on NHWC ``x``."""
    kernel = jnp.asarray(np.transpose(weight, (2, 3, 1, 0)), jnp.float32)
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return y + jnp.asarray(bias, jnp.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class DvaeTokenizer:
    """DALL-E dVAE encoder with frozen weights; ``__call__`` gives the argmax codes of each 8x8 cell."""

    weights: Mapping[str, np.ndarray]
    blocks_per_group: int
    patch_size: int
    input_size: int
    pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def codebook_size(self) -> int:
        return int(self.weights["blocks.output.conv.weight"].shape[0])

    def _w(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return self.weights[f"{name}.weight"], self.weights[f"{name}.bias"]

    def logits(self, pixels: jax.Array) -> jax.Array:
        """Code logits ``[B, s/8, s/8, K]`` of ``pixels [B, s, s, 3]`` already mapped (``map_pixels``)."""
        x = _conv(pixels.astype(jnp.float32), *self._w("blocks.input"))
        gain = 1.0 / (4 * self.blocks_per_group) ** 2
        for group in range(1, 5):
            for block in range(1, self.blocks_per_group + 1):
                name = f"blocks.group_{group}.group.block_{block}"
                identity = _conv(x, *self._w(f"{name}.id_path")) if f"{name}.id_path.weight" in self.weights else x
                h = x
                for conv in range(1, 5):
                    h = _conv(jax.nn.relu(h), *self._w(f"{name}.res_path.path.conv_{conv}"))
                x = identity + gain * h
            if group < 4:
                x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return _conv(jax.nn.relu(x), *self._w("blocks.output.conv"))

    def __call__(self, images: jax.Array) -> jax.Array:
        """int32 codes ``[B, h, w]`` of model-normalised images ``[B, H, W, 3]``."""
        x = jax.lax.stop_gradient(images.astype(jnp.float32))
        x = jnp.clip(x * jnp.asarray(self.pixel_std) + jnp.asarray(self.pixel_mean), 0.0, 1.0)
        if x.shape[1:3] != (self.input_size, self.input_size):
            x = jax.image.resize(x, (x.shape[0], self.input_size, self.input_size, 3), "bilinear")
        x = (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS
        return jnp.argmax(self.logits(x), axis=-1).astype(jnp.int32)

    @classmethod
    def from_hf(cls, tensors: Mapping[str, np.ndarray], config: Mapping[str, Any], *, image_size: int,
                patch_size: int, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0)) -> "DvaeTokenizer":
        """From HF ``FlavaImageCodebook`` tensors (``blocks.*``) and its config dict; the grid matches a
        model of ``image_size`` px in ``patch_size`` px patches."""
        weights = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
        groups = config.get("num_groups", 4)
        if groups != 4 or config.get("input_channels", 3) != 3:
            raise ValueError(f"dVAE: only 4 groups over 3 input channels are supported, got num_groups={groups}, "
                             f"input_channels={config.get('input_channels', 3)}")
        blocks = max(int(k.split("block_")[1].split(".")[0]) for k in weights if ".block_" in k)
        grid = image_size // patch_size
        return cls(weights, blocks, patch_size, grid * 8, tuple(pixel_mean), tuple(pixel_std))

    def save(self, path: str) -> None:
        np.savez(path, **{f"dvae/{k}": v for k, v in self.weights.items()},
                 dvae_blocks_per_group=np.int32(self.blocks_per_group), patch_size=np.int32(self.patch_size),
                 input_size=np.int32(self.input_size), pixel_mean=np.asarray(self.pixel_mean, np.float32),
                 pixel_std=np.asarray(self.pixel_std, np.float32))

    @classmethod
    def load(cls, path: str) -> "DvaeTokenizer":
        with np.load(path) as f:
            weights = {k[len("dvae/"):]: f[k] for k in f.files if k.startswith("dvae/")}
            return cls(weights, int(f["dvae_blocks_per_group"]), int(f["patch_size"]), int(f["input_size"]),
                       tuple(float(v) for v in f["pixel_mean"]), tuple(float(v) for v in f["pixel_std"]))
