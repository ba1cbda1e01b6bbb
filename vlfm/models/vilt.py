"""ViLT: one pre-LN transformer over ``[text tokens; image patches]`` (Kim et al., 2021).

Text tokens get BERT embeddings (word + position + type, LayerNorm), image patches ViT embeddings
(patch projection, class token, learned positions); both then get a modality-type embedding (text 0,
image 1, a second image 2 for NLVR2) and run through one ViT-style encoder with a final LayerNorm and
a tanh pooler on token 0. Layout and numerics follow HF ``ViltModel`` (``vlfm.convert.hf_fusion``
imports its checkpoints); the encoder is a ViT's, so ViLT starts from ViT-B/32 weights
(``hf_fusion.vilt_params_from_vit``).

Images are used at the model's ``image_size`` in raster patch order: HF ViLT's random patch sampling
(``max_image_length``) is a pretraining augmentation that is not reproduced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlfm.core.flops import transformer_flops
from vlfm.models import layers
from vlfm.models.fusion import FusionModel
from vlfm.models.registry import MODELS
from vlfm.models.text import bert_embeddings
from vlfm.models.tower_base import encoder_module
from vlfm.models.vit import patch_embeddings


class TextEmbed(nn.Module):
    """BERT input embeddings as a module (``token_embed``, ``pos_embed``, ``type_embed``, ``ln_embed``)."""

    vocab_size: int
    width: int
    max_len: int
    type_vocab_size: int = 2
    pos_offset: int = 0
    ln_eps: float = 1e-12
    dropout_rate: float = 0.0
    init_std: float | None = 0.02
    dtypes: tuple = (jnp.float32, jnp.float32)

    @nn.compact
    def __call__(self, ids: jax.Array, type_ids: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        return bert_embeddings(self, ids, type_ids, train=train)[0]


class ImageEmbed(nn.Module):
    """ViT input tokens as a module (``patch_embed``, ``cls``, ``pos_embed``)."""

    patch_size: int
    width: int
    patch_bias: bool = True
    class_token: bool = True
    pos_embedding: str = "learned"
    pre_norm: bool = False
    ln_eps: float = 1e-12
    dropout_rate: float = 0.0
    init_std: float | None = None
    dtypes: tuple = (jnp.float32, jnp.float32)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        return patch_embeddings(self, images, train=train)[0]


@MODELS.register("vilt")
class Vilt(FusionModel):
    """ViLT (defaults: HF ``ViltConfig()``, ViLT-B/32 at 384 px: 111,595,008 parameters without heads).

    Batch: ``image [B, H, W, 3]``, ``text``/``text_mask [B, L]`` (+ ``mlm_text``, ``image2`` as the
    objectives need); outputs as ``FusionModel`` describes, plus the fused sequence is available via
    ``fuse``. ``num_types`` is the number of modality-type rows (3 for NLVR2's second image).
    """

    vocab_size: int = 30522
    max_text_len: int = 40
    type_vocab_size: int = 2
    image_size: int = 384
    patch_size: int = 32
    num_types: int = 2
    ln_eps: float = 1e-12
    init_std: float | None = 0.02

    def setup(self):
        dtype, pdtype = self.dtypes
        if self.pair_classes and self.num_types < 3:
            raise ValueError("pair_classes (NLVR2) needs num_types=3: the second image has modality type 2")
        self.text_embed = TextEmbed(self.vocab_size, self.width, self.max_text_len, self.type_vocab_size,
                                    ln_eps=self.ln_eps, dropout_rate=self.dropout_rate, init_std=self.init_std,
                                    dtypes=self.dtypes)
        self.image_embed = ImageEmbed(self.patch_size, self.width, ln_eps=self.ln_eps,
                                      dropout_rate=self.dropout_rate, init_std=self.init_std, dtypes=self.dtypes)
        self.modality_embed = layers.PosEmbed(self.num_types, self.width, self.init_std or 0.02, axis_name="types",
                                              param_dtype=pdtype)
        self.encoder = encoder_module(self, norm="pre", name=None)
        self.ln_final = layers.layer_norm(self.ln_eps, dtype, pdtype)
        self.pooler = layers.Proj((self.width,), ("embed", "proj"), init_std=self.init_std, dtype=dtype,
                                  param_dtype=pdtype)
        self.setup_heads()

    def text_vocab_size(self) -> int:
        return self.vocab_size

    def encode_text(self, ids: jax.Array, mask: jax.Array | None, train: bool) -> dict:
        mask = jnp.ones(ids.shape, bool) if mask is None else mask.astype(bool)
        return {"tokens": self.text_embed(ids, train=train), "mask": mask}

    def encode_image(self, images: jax.Array, train: bool) -> dict:
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"ViLT expects {self.image_size} px images, got {images.shape[1:3]}")
        return {"tokens": self.image_embed(images, train=train)}

    def fuse(self, text: dict, image: dict, image_type: int, train: bool) -> dict:
        types = self.modality_embed().astype(text["tokens"].dtype)
        t = text["tokens"] + types[0]
        v = image["tokens"] + types[image_type]
        image_mask = jnp.ones(v.shape[:2], bool)
        mask = jnp.concatenate([text["mask"], image_mask], axis=1)
        x = self.encoder(jnp.concatenate([t, v], axis=1), key_mask=mask, train=train)
        x = self.ln_final(x)
        n = t.shape[1]
        return {"text_tokens": x[:, :n], "image_tokens": x[:, n:], "text_mask": text["mask"],
                "image_mask": image_mask, "pooled": jnp.tanh(self.pooler(x[:, 0])), "tokens": x}

    @staticmethod
    def flops_per_example(cfg: Mapping[str, Any], text_len: int | None = None, inputs: tuple[str, ...] = (),
                          **_: Any) -> float:
        """Forward FLOPs of one training example: one fused pass per enabled objective/head."""
        del inputs
        width, mlp = cfg.get("width", 768), cfg.get("mlp_dim", 3072)
        patch, size = cfg.get("patch_size", 32), cfg.get("image_size", 384)
        patches = (size // patch) ** 2
        tokens = (text_len or cfg.get("max_text_len", 40)) + patches + 1
        one = transformer_flops(tokens, width, cfg.get("depth", 12), mlp) + 2 * patches * patch * patch * 3 * width
        passes = int(bool(cfg.get("mlm"))) + int(cfg.get("itm", "none") != "none")
        passes += int(bool(cfg.get("vqa_answers") or cfg.get("num_classes"))) + 2 * int(bool(cfg.get("pair_classes")))
        return float(max(passes, 1) * one)
