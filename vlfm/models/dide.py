"""DiDE: a dual encoder distilled from a fusion encoder (Wang et al., arXiv 2112.08723).

Image and text are encoded apart (two towers), so retrieval and classification can run on cached
embeddings; task heads see the two pooled vectors only through ``heads.InteractionHead``
(``[u; v; |u-v|; u*v]`` -> MLP). For cross-modal attention distillation the towers sow their last
layer's self-attention queries and keys into the ``attention`` collection
(``image_tower/encoder/{queries,keys}``, ``text_tower/encoder/{queries,keys}``; a task's
``forward.mutable=("attention",)`` returns them under ``outputs["attention"]``), from which the loss
``kd_cross_attention`` forms the student's image-to-text and text-to-image attention.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlfm.models import heads, layers
from vlfm.models.dual_encoder import l2_normalize
from vlfm.models.registry import MODELS
from vlfm.models.towers import TOWERS, build_tower


def _tower_depth(cfg: dict) -> int:
    if "depth" in cfg:
        return int(cfg["depth"])
    cls = TOWERS.get(cfg["name"])
    return next(f.default for f in dataclasses.fields(cls) if f.name == "depth")


@MODELS.register("dide")
class DiDE(nn.Module):
    """Dual-encoder student. Batch: ``image``, ``text`` (+ ``text_mask``; ``image2`` for NLVR2).

    Outputs: ``image_pooled``/``text_pooled``; with ``embed_dim`` the contrastive ``image_embed``,
    ``text_embed``, ``logit_scale`` (retrieval, as ``dual_encoder``); with ``num_classes`` (visual
    entailment), ``vqa_answers`` or ``pair_classes`` (NLVR2: each image with the sentence) the
    interaction head's ``logits`` / ``vqa_logits``; with ``itm`` the ``itm_logits`` of the batch's own
    pairs (for soft-label distillation of a teacher's ITM). ``distill_attention`` makes both towers
    sow their last layer's queries and keys (the towers need the same heads and head width).
    """

    image: Any
    text: Any
    embed_dim: int = 0
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)
    distill_attention: bool = True
    interaction_dim: int = 0  # hidden width of the interaction MLP (0: twice the tower width)
    num_classes: int = 0
    vqa_answers: int = 0
    pair_classes: int = 0
    itm: bool = False
    init_std: float | None = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"

    PREDICT = {
        "encode_image": lambda m, b: m.encode_image(b["image"]),
        "encode_text": lambda m, b: m.encode_text(b["text"], b.get("text_mask")),
        "logits": lambda m, b: m(b)["logits"],
        "vqa_logits": lambda m, b: m(b)["vqa_logits"],
    }

    def setup(self):
        dtype, pdtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
        image, text = dict(self.image), dict(self.text)
        if self.distill_attention:
            sow = lambda cfg: dict(attention_layers=(_tower_depth(cfg) - 1,),  # noqa: E731
                                   attention_outputs=("queries", "keys"))
            self.image_tower = build_tower(image, **sow(image))
            self.text_tower = build_tower(text, **sow(text))
        else:
            self.image_tower = build_tower(image)
            self.text_tower = build_tower(text)
        common = dict(init_std=self.init_std, dtype=dtype, param_dtype=pdtype)
        if self.embed_dim:
            self.image_proj = layers.Proj((self.embed_dim,), ("embed", "proj"), use_bias=False, name="image_proj",
                                          **common)
            self.text_proj = layers.Proj((self.embed_dim,), ("embed", "proj"), use_bias=False, name="text_proj",
                                         **common)
            self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.logit_scale_init), (),
                                          jnp.float32)
        width = self.image_tower.width
        head = lambda n, name: heads.InteractionHead(self.interaction_dim or 2 * width, n, name=name,  # noqa: E731
                                                     **common)
        if self.num_classes:
            self.cls_head = head(self.num_classes, "cls_head")
        if self.vqa_answers:
            self.vqa_head = head(self.vqa_answers, "vqa_head")
        if self.pair_classes:
            self.pair_head = head(self.pair_classes, "pair_head")
        if self.itm:
            self.itm_head = head(2, "itm_head")

    def pooled_image(self, images: jax.Array, train: bool = False) -> jax.Array:
        return self.image_tower(images, train=train)["pooled"]

    def pooled_text(self, ids: jax.Array, mask: jax.Array | None = None, train: bool = False) -> jax.Array:
        return self.text_tower(ids, mask, train=train)["pooled"]

    def encode_image(self, images: jax.Array, train: bool = False) -> jax.Array:
        return l2_normalize(self.image_proj(self.pooled_image(images, train)))

    def encode_text(self, ids: jax.Array, mask: jax.Array | None = None, train: bool = False) -> jax.Array:
        return l2_normalize(self.text_proj(self.pooled_text(ids, mask, train)))

    def __call__(self, batch: dict, *, train: bool = False) -> dict:
        u = self.pooled_image(batch["image"], train)
        v = self.pooled_text(batch["text"], batch.get("text_mask"), train)
        out = {"image_pooled": u, "text_pooled": v}
        if self.embed_dim:
            out.update(image_embed=l2_normalize(self.image_proj(u)), text_embed=l2_normalize(self.text_proj(v)),
                       logit_scale=jnp.exp(jnp.minimum(self.logit_scale, self.max_logit_scale)))
        if self.num_classes:
            out["logits"] = self.cls_head([(u, v)])
        if self.vqa_answers:
            out["vqa_logits"] = self.vqa_head([(u, v)])
        if self.pair_classes:
            u2 = self.pooled_image(batch["image2"], train)
            out["logits"] = self.pair_head([(u, v), (u2, v)])
        if self.itm:
            out["itm_logits"] = self.itm_head([(u, v)])
        return out
