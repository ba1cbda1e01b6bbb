"""Visual Parsing (Xue et al., NeurIPS 2021): a Transformer visual backbone ("visual parsing") whose
tokens, through a linear layer and a LayerNorm, join the BERT word embeddings in one multimodal
transformer, pretrained with MLM, ITM and masked feature regression (MFR).

The paper's backbone is a Swin Transformer; here it is any image tower of ``vlfm.models.TOWERS`` (a ViT
in ``configs/visual_parsing_tiny.py``). Its class token, when it has one, stays an image token and is
never masked.

MFR (``mfr=True``): a third fused pass sees the clean text and the image with grouped masked tokens
(``vlfm.models.grouped_masking``: groups of mutually similar tokens, by the centred cosine of the
backbone's features, are masked whole, so a masked token has no visible near-copy). Masked tokens
become a learned mask embedding; every image token then gets a learned position embedding, so the
multimodal transformer knows where a masked token sits. A linear head regresses the backbone feature
of each masked token (the target is taken under ``stop_gradient``, before masking). Outputs
``mfr_pred``, ``mfr_target``, ``mfr_mask`` for the loss ``masked_feature_regression`` and ``mfr_copy``
(each token's most similar visible token's feature: the copy baseline, which shows how much the
masking leaks). The masks draw from the ``masking`` stream (a fixed key at evaluation). MLM sees the
clean image and ITM clean pairs (conditional masking: one modality masked per pass).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vlfm.models import layers
from vlfm.models.fusion import FusionModel, take_rows
from vlfm.models.grouped_masking import centred_cosine, grouped_mask, nearest_visible, similarity_groups
from vlfm.models.masked_image import MaskToken, replace_masked
from vlfm.models.registry import MODELS
from vlfm.models.tower_base import encoder_module
from vlfm.models.towers import build_tower
from vlfm.models.vilt import TextEmbed


@MODELS.register("visual_parsing")
class VisualParsing(FusionModel):
    """Batch: ``image [B, H, W, 3]``, ``text``/``text_mask [B, L]`` (+ ``mlm_text``). ``image`` is the
    backbone's tower config; the tower fields (``width``, ``depth``, ``num_heads`` ...) describe the
    multimodal transformer (``norm``: ``post`` as BERT, or ``pre``). Outputs as ``FusionModel``
    describes plus the MFR ones of the module docstring."""

    image: Any = None
    vocab_size: int = 30522
    max_text_len: int = 40
    type_vocab_size: int = 2
    num_types: int = 2
    norm: str = "post"
    ln_eps: float = 1e-12
    init_std: float | None = 0.02
    mfr: bool = True
    mfr_ratio: float = 0.15
    mfr_top_k: int = 1  # each seed's group: itself and its top_k most similar tokens ...
    mfr_threshold: float | None = None  # ... and every token at least this (centred cosine) similar

    def setup(self):
        dtype, pdtype = self.dtypes
        if self.image is None:
            raise ValueError("visual_parsing needs an image tower config (model.image, e.g. name='vit')")
        if self.pair_classes and self.num_types < 3:
            raise ValueError("pair_classes (NLVR2) needs num_types=3: the second image has modality type 2")
        self.image_tower = build_tower(self.image)
        tower = self.image_tower
        if not hasattr(tower, "image_size") or not hasattr(tower, "patch_size"):
            raise ValueError(f"visual_parsing needs an image tower with image_size and patch_size, got {tower!r}")
        self.n_prefix = 1 if getattr(tower, "class_token", False) else 0
        self.num_patches = (tower.image_size // tower.patch_size) ** 2
        common = dict(init_std=self.init_std, dtype=dtype, param_dtype=pdtype)
        self.text_embed = TextEmbed(self.vocab_size, self.width, self.max_text_len, self.type_vocab_size,
                                    ln_eps=self.ln_eps, dropout_rate=self.dropout_rate, init_std=self.init_std,
                                    dtypes=self.dtypes)
        self.visual_proj = layers.Proj((self.width,), ("embed", "proj"), **common)
        self.visual_ln = layers.layer_norm(self.ln_eps, dtype, pdtype)
        self.image_pos = layers.PosEmbed(self.n_prefix + self.num_patches, self.width, self.init_std or 0.02,
                                         param_dtype=pdtype)
        self.modality_embed = layers.PosEmbed(self.num_types, self.width, self.init_std or 0.02, axis_name="types",
                                              param_dtype=pdtype)
        self.encoder = encoder_module(self, norm=self.norm, name=None)
        self.ln_final = layers.layer_norm(self.ln_eps, dtype, pdtype) if self.norm == "pre" else None
        self.pooler = layers.Proj((self.width,), ("embed", "proj"), **common)
        if self.mfr:
            self.mask_token = MaskToken(self.width, pdtype)
            self.mfr_head = layers.Proj((tower.width,), ("embed", "proj"), **common)
        self.setup_heads()

    def text_vocab_size(self) -> int:
        return self.vocab_size

    def encode_text(self, ids: jax.Array, mask: jax.Array | None, train: bool) -> dict:
        mask = jnp.ones(ids.shape, bool) if mask is None else mask.astype(bool)
        return {"tokens": self.text_embed(ids, train=train), "mask": mask}

    def encode_image(self, images: jax.Array, train: bool) -> dict:
        """``features``: the backbone's output tokens (MFR's targets); ``tokens``: them through the
        linear layer and LayerNorm, in the multimodal width."""
        features = self.image_tower(images, train=train)["tokens"]
        if features.shape[1] != self.n_prefix + self.num_patches:
            raise ValueError(f"the image tower gave {features.shape[1]} tokens, expected "
                             f"{self.n_prefix} + {self.num_patches}")
        return {"tokens": self.visual_ln(self.visual_proj(features)), "features": features}

    def fuse(self, text: dict, image: dict, image_type: int, train: bool) -> dict:
        types = self.modality_embed().astype(text["tokens"].dtype)
        t = text["tokens"] + types[0]
        v = image["tokens"] + self.image_pos().astype(image["tokens"].dtype)[None] + types[image_type]
        image_mask = jnp.ones(v.shape[:2], bool)
        mask = jnp.concatenate([text["mask"], image_mask], axis=1)
        x = self.encoder(jnp.concatenate([t, v], axis=1), key_mask=mask, train=train)
        if self.ln_final is not None:
            x = self.ln_final(x)
        n = t.shape[1]
        return {"text_tokens": x[:, :n], "image_tokens": x[:, n:], "text_mask": text["mask"],
                "image_mask": image_mask, "pooled": jnp.tanh(self.pooler(x[:, 0])), "tokens": x}

    def mfr_outputs(self, text: dict, image: dict, train: bool) -> dict:
        """The MFR pass: clean text, grouped-masked image tokens (module docstring)."""
        p = self.n_prefix
        features = jax.lax.stop_gradient(image["features"][:, p:].astype(jnp.float32))
        similarity = centred_cosine(features)
        groups = similarity_groups(similarity, self.mfr_top_k, self.mfr_threshold)
        rng = self.make_rng("masking") if self.has_rng("masking") else jax.random.key(0)
        mask = grouped_mask(rng, groups, self.mfr_ratio)
        tokens = image["tokens"]
        patches = replace_masked(tokens[:, p:], mask, self.mask_token())
        fused = self.fuse(text, {"tokens": jnp.concatenate([tokens[:, :p], patches], axis=1)}, 1, train)
        return {"mfr_pred": self.mfr_head(fused["image_tokens"][:, p:]).astype(jnp.float32),
                "mfr_target": features, "mfr_mask": mask,
                "mfr_copy": nearest_visible(features, mask, similarity)}

    def __call__(self, batch: dict, *, train: bool = False) -> dict:
        if not self.mfr:
            return super().__call__(batch, train=train)
        if self.vqa_answers or self.num_classes or self.pair_classes:
            raise ValueError("mfr=True is the pretraining objective; fine-tune task heads with mfr=False")
        image = self.encode_image(batch["image"], train)
        text = self.encode_text(batch["text"], batch.get("text_mask"), train)
        out = self.mfr_outputs(text, image, train)
        if self.mlm:
            masked = self.encode_text(batch["mlm_text"], batch.get("text_mask"), train) if "mlm_text" in batch \
                else text
            out["mlm_logits"] = self.mlm_head(self.fuse(masked, image, 1, train)["text_tokens"])
        if self.itm != "none":
            text_idx, image_idx, labels = self.itm_pairs(batch, out, batch["text"].shape[0], train)
            pairs = self.fuse(take_rows(text, text_idx), take_rows(image, image_idx), 1, train)
            out.update(self.itm_outputs(pairs), itm_labels=labels,
                       **{f"itm_{k}": pairs[k] for k in ("text_tokens", "image_tokens", "text_mask", "image_mask")})
        if not train:
            plain = self.fuse(text, image, 1, train)
            out.update({k: plain[k] for k in ("pooled", "text_tokens", "image_tokens")})
        return out

    PREDICT = dict(FusionModel.PREDICT,
                   mfr=lambda m, b: m.mfr_outputs(m.encode_text(b["text"], b.get("text_mask"), False),
                                                  m.encode_image(b["image"], False), False))
