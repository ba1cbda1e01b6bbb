"""Dual encoder (CLIP / SigLIP): an image tower and a text tower projected into one space."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from vlfm.models import layers
from vlfm.models.registry import MODELS
from vlfm.models.towers import build_tower


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


@MODELS.register("dual_encoder")
class DualEncoder(nn.Module):
    """``batch["image"], batch["text"] (+ "text_mask")`` -> normalised embeddings and temperature.

    The temperature is ``exp(logit_scale)`` (CLIP init ``log(1/0.07)``, SigLIP ``log(10)``), capped at
    ``max_logit_scale`` (open_clip caps at 100). ``logit_bias_init`` adds SigLIP's learnable bias.
    Projections have no bias, as in CLIP. ``input_key``: the batch key the image tower reads (``video``
    for a video tower: ``video_vit``, a video-text dual encoder; the outputs keep their names).
    """

    image: Any
    text: Any
    input_key: str = "image"
    embed_dim: int = 512
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)
    logit_bias_init: float | None = None
    proj_init_std: float | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"

    # The batch keys each training method reads (vlfm.train.batch_keys): other keys stay on the host.
    INPUTS = {"__call__": ("image", "text", "text_mask")}
    # Functions of (module, batch) that evaluators may call, by name.
    PREDICT = {
        "encode_image": lambda m, b: m.encode_image(b[m.input_key]),
        "encode_text": lambda m, b: m.encode_text(b["text"], b.get("text_mask")),
    }

    def setup(self):
        pdtype = jnp.dtype(self.param_dtype)
        self.image_tower = build_tower(self.image)
        self.text_tower = build_tower(self.text)
        proj = lambda name: layers.Proj((self.embed_dim,), ("embed", "proj"), use_bias=False,
                                        init_std=self.proj_init_std, dtype=jnp.dtype(self.dtype),
                                        param_dtype=pdtype, name=name)
        self.image_proj = proj("image_proj")
        self.text_proj = proj("text_proj")
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.logit_scale_init), (), jnp.float32)
        if self.logit_bias_init is not None:
            self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.logit_bias_init), (),
                                         jnp.float32)

    def encode_image(self, images: jax.Array, train: bool = False) -> jax.Array:
        return l2_normalize(self.image_proj(self.image_tower(images, train=train)["pooled"]))

    def encode_text(self, ids: jax.Array, mask: jax.Array | None = None, train: bool = False) -> jax.Array:
        return l2_normalize(self.text_proj(self.text_tower(ids, mask, train=train)["pooled"]))

    def __call__(self, batch: dict, *, train: bool = False) -> dict:
        out = {
            "image_embed": self.encode_image(batch[self.input_key], train),
            "text_embed": self.encode_text(batch["text"], batch.get("text_mask"), train),
            "logit_scale": jnp.exp(jnp.minimum(self.logit_scale, self.max_logit_scale)),
        }
        if self.logit_bias_init is not None:
            out["logit_bias"] = self.logit_bias
        return out
