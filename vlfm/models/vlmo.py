"""VLMo: one mixture-of-modality-experts transformer that is a dual encoder and a fusion encoder
(Bao et al., 2022; layout of microsoft/unilm ``vlmo``).

Text gets BERT embeddings (word + position + type, LayerNorm), images patch embeddings with a class
token (learned positions only without the relative position bias); both then get a modality-type
embedding (text 0, image 1, a second image 2 for NLVR2) and run through ``MomeTransformer``:

- the image-only and text-only passes (V-FFN / L-FFN in every layer) give the dual encoder: final
  LayerNorm, class token, a bias-free projection, L2 normalisation (``image_embed``, ``text_embed``,
  ``logit_scale``; ITC with ``softmax_contrastive``, and the similarities draw ITM hard negatives);
- ``vl_contrastive`` adds VLMo's second contrastive term: the same uni-modal passes' bottom layers,
  then the top (VL-FFN) layers in ``vl`` mode, with their own projections and temperature
  (``vl_image_embed``, ``vl_text_embed``, ``vl_logit_scale``; ``softmax_contrastive`` with
  ``prefix="vl_"``);
- the fused pass over ``[text; image]`` (bottom layers route text positions to L-FFN and image
  positions to V-FFN, top layers use VL-FFN) feeds MLM, ITM (tanh pooler on token 0) and the task
  heads of ``FusionModel``.

Two uni-modal objectives for VLMo's stagewise pretraining (a task's ``forward.method``):

- ``mim``: BEiT masked image modelling on the image-only pass: the patches of ``batch["image_mask"]``
  ([B, h, w], True = masked; ``vlfm.data.masking.block_mask``) are replaced by a learned mask token, and
  ``mim_head`` predicts their codes from the frozen image tokenizer (``image_tokenizer``, e.g. the
  ``kmeans`` codebook fitted on the built-in data): ``mim_logits [B, h*w, mim_vocab_size]`` and
  ``mim_targets [B, h*w]`` (-1 where not masked), for ``masked_xent``;
- ``text_mlm``: masked language modelling on the text-only pass (L-FFN in every layer, VL-FFN unused,
  as VLMo's language stage): ``mlm_logits`` over ``batch["mlm_text"]`` (else ``text``).

``multiway_attention`` gives each modality its own attention projections and LayerNorms, the final one
too (BEiT-3's multiway transformer); ``sub_ln`` adds BEiT-3's sub-LayerNorms (before the attention output
projection and before ``fc2``). The transformer matches torchscale's ``BEiT3`` (``tests/test_beit3_parity.py``);
BEiT-3's embeddings (absolute positions for both modalities, no text LayerNorm) are not a ``Vlmo`` option.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlfm.core.flops import transformer_flops
from vlfm.models import layers
from vlfm.models.dual_encoder import l2_normalize
from vlfm.models.fusion import FusionModel
from vlfm.models.image_tokenizer import resolve_tokenizer
from vlfm.models.mome import MomeTransformer
from vlfm.models.registry import MODELS
from vlfm.models.vilt import ImageEmbed, TextEmbed


@MODELS.register("vlmo")
class Vlmo(FusionModel):
    """VLMo (defaults: VLMo-Base, 12 layers, width 768, VL-FFN in the top 2, 224 px, patch 16, text 40).

    Batch: ``image [B, H, W, 3]``, ``text``/``text_mask [B, L]`` (+ ``mlm_text``, ``image2``); outputs as
    ``FusionModel`` describes plus the contrastive ones above. ``contrastive_dim`` is the size of the
    contrastive embeddings (VLMo: the width; 0 turns the dual-encoder head off).
    """

    vocab_size: int = 30522
    max_text_len: int = 40
    type_vocab_size: int = 2
    image_size: int = 224
    patch_size: int = 16
    num_types: int = 2
    vl_depth: int = 2
    multiway_attention: bool = False
    sub_ln: bool = False
    relative_position: bool = True
    # Text positions the relative-position table covers (None: ``max_text_len``). The public VLMo
    # checkpoints keep rows for 196 (``max_text_len_of_initckpt``) and fine-tune on shorter text.
    relative_text_len: int | None = None
    # Learned absolute positions for the image patches as well as the relative position bias (BEiT's and
    # VLMo's ``use_abs_pos_emb``): the bias alone gives offsets between patches, not where a patch is.
    # Without the bias (``relative_position=False``) the image embedding always has learned positions.
    image_abs_pos: bool = False
    qkv_bias: str = "qv"  # type: ignore[assignment]  # "qkv", "qv" (BEiT: no k bias), "none"
    layer_scale: float | None = 0.1
    ln_eps: float = 1e-6
    text_ln_eps: float = 1e-12
    init_std: float | None = 0.02
    contrastive_dim: int = 768
    vl_contrastive: bool = False
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)
    mim_vocab_size: int = 0  # > 0: the mask token and MIM head of ``mim`` (the tokenizer's codebook size)
    image_tokenizer: str = "kmeans"  # "kmeans" (fitted on the built-in data) or an .npz codebook
    tokenizer_fit_images: int = 2000
    tokenizer_normalise: bool = False

    PREDICT = dict(FusionModel.PREDICT,
                   encode_image=lambda m, b: m.encode_image_embed(b["image"]),
                   encode_text=lambda m, b: m.encode_text_embed(b["text"], b.get("text_mask")),
                   mim_logits=lambda m, b: m.mim(b)["mim_logits"],
                   text_mlm_logits=lambda m, b: m.text_mlm(b)["mlm_logits"])

    def setup(self):
        dtype, pdtype = self.dtypes
        if self.pair_classes and self.num_types < 3:
            raise ValueError("pair_classes (NLVR2) needs num_types=3: the second image has modality type 2")
        if self.vl_contrastive and not self.contrastive_dim:
            raise ValueError("vl_contrastive needs contrastive_dim > 0")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        grid = self.image_size // self.patch_size
        rel_text_len = self.relative_text_len or self.max_text_len
        if rel_text_len < self.max_text_len:
            raise ValueError(f"relative_text_len {rel_text_len} < max_text_len {self.max_text_len}: the relative "
                             "position table must cover every text position")
        self.text_embeddings = TextEmbed(self.vocab_size, self.width, self.max_text_len, self.type_vocab_size,
                                    ln_eps=self.text_ln_eps, dropout_rate=self.dropout_rate, init_std=self.init_std,
                                    dtypes=self.dtypes)
        self.image_embeddings = ImageEmbed(self.patch_size, self.width,
                                      pos_embedding="none" if self.relative_position else "learned",
                                      dropout_rate=self.dropout_rate, init_std=self.init_std, dtypes=self.dtypes)
        if self.image_abs_pos and self.relative_position:
            self.image_pos = layers.PosEmbed(grid * grid + 1, self.width, self.init_std or 0.02, param_dtype=pdtype)
        self.modality_embed = layers.PosEmbed(self.num_types, self.width, self.init_std or 0.02, axis_name="types",
                                              param_dtype=pdtype)
        self.transformer = MomeTransformer(
            self.depth, self.num_heads, self.mlp_dim, self.vl_depth, self.multiway_attention, ln_eps=self.ln_eps,
            act=self.act, qkv_bias=self.qkv_bias, layer_scale=self.layer_scale, sub_ln=self.sub_ln,
            dropout_rate=self.dropout_rate,
            attn_dropout_rate=self.attn_dropout_rate, drop_path_rate=self.drop_path_rate, init_std=self.init_std,
            relative_position=self.relative_position, image_grid=(grid, grid), max_text_len=rel_text_len,
            scan=self.scan, remat=self.remat, implementation=self.attention,
            attention_layers=tuple(self.attention_layers), dtype=dtype, param_dtype=pdtype)
        self.pooler = layers.Proj((self.width,), ("embed", "proj"), init_std=self.init_std, dtype=dtype,
                                  param_dtype=pdtype)
        if self.contrastive_dim:
            proj = lambda: layers.Proj((self.contrastive_dim,), ("embed", "proj"), use_bias=False,  # noqa: E731
                                       init_std=self.init_std, dtype=dtype, param_dtype=pdtype)
            scale = lambda name: self.param(name, layers.logical(  # noqa: E731
                nn.initializers.constant(self.logit_scale_init), ()), (), jnp.float32)
            self.itc_image_proj, self.itc_text_proj = proj(), proj()
            self.logit_scale = scale("logit_scale")
            if self.vl_contrastive:
                self.itc_vl_image_proj, self.itc_vl_text_proj = proj(), proj()
                self.vl_logit_scale = scale("vl_logit_scale")
        if self.mim_vocab_size:
            self.mask_token = self.param("mask_token", layers.logical(nn.initializers.truncated_normal(0.02),
                                                                      ("embed",)), (self.width,), pdtype)
            self.mim_head = layers.Proj((self.mim_vocab_size,), ("embed", "vocab"), init_std=self.init_std,
                                        dtype=dtype, param_dtype=pdtype)
        self.setup_heads()

    def text_vocab_size(self) -> int:
        return self.vocab_size

    # -- inputs -----------------------------------------------------------------------------------------

    def encode_text(self, ids: jax.Array, mask: jax.Array | None, train: bool) -> dict:
        mask = jnp.ones(ids.shape, bool) if mask is None else mask.astype(bool)
        return {"tokens": self.text_embeddings(ids, train=train), "mask": mask}

    def encode_image(self, images: jax.Array, train: bool, mask: jax.Array | None = None) -> dict:
        """Patch tokens with the class token first; ``mask [B, patches]`` (True = masked) swaps patches for
        the MIM mask token before the absolute positions (if any) are added."""
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"VLMo expects {self.image_size} px images, got {images.shape[1:3]}")
        tokens = self.image_embeddings(images, train=train)
        if mask is not None:
            if not self.relative_position:
                raise ValueError("mim needs relative_position=True (with image_abs_pos for absolute positions): the "
                                 "mask token must take a patch's place before its position is added")
            patches = jnp.where(mask[..., None], self.mask_token.astype(tokens.dtype), tokens[:, 1:])
            tokens = jnp.concatenate([tokens[:, :1], patches], axis=1)
        if self.image_abs_pos and self.relative_position:
            tokens = tokens + self.image_pos().astype(tokens.dtype)[None]
        return {"tokens": tokens}

    def _typed(self, tokens: jax.Array, kind: int) -> jax.Array:
        return tokens + self.modality_embed().astype(tokens.dtype)[kind]

    # -- the three modes --------------------------------------------------------------------------------

    def unimodal(self, text: dict | None, image: dict | None, train: bool, vl: bool = False) -> dict:
        """Image-only / text-only passes: final tokens (``image``, ``text``) and, with ``vl``, the same
        passes' bottom layers followed by the VL layers in ``vl`` mode (``vl_image``, ``vl_text``)."""
        out = {}
        for name, inputs, mode, kind in (("text", text, "text", 0), ("image", image, "image", 1)):
            if inputs is None:
                continue
            x = self._typed(inputs["tokens"], kind)
            key_mask = inputs.get("mask")
            if not vl:
                out[name] = self.transformer(x, mode=mode, key_mask=key_mask, train=train)
                continue
            bottom = self.transformer(x, mode=mode, key_mask=key_mask, part="bottom", train=train)
            out[name] = self.transformer(bottom, mode=mode, key_mask=key_mask, part="top", train=train)
            text_len = x.shape[1] if mode == "text" else 0
            out[f"vl_{name}"] = self.transformer(bottom, mode="vl", text_len=text_len, key_mask=key_mask, part="top",
                                                 train=train)
        return out

    def fuse(self, text: dict, image: dict, image_type: int, train: bool) -> dict:
        t = self._typed(text["tokens"], 0)
        v = self._typed(image["tokens"], image_type)
        image_mask = jnp.ones(v.shape[:2], bool)
        mask = jnp.concatenate([text["mask"], image_mask], axis=1)
        n = t.shape[1]
        x = self.transformer(jnp.concatenate([t, v], axis=1), mode="vl", text_len=n, key_mask=mask, train=train)
        return {"text_tokens": x[:, :n], "image_tokens": x[:, n:], "text_mask": text["mask"],
                "image_mask": image_mask, "pooled": jnp.tanh(self.pooler(x[:, 0])), "tokens": x}

    # -- uni-modal objectives of the stagewise pretraining ----------------------------------------------

    def mim(self, batch: dict, *, train: bool = False) -> dict:
        """BEiT masked image modelling on the image-only pass (module docstring): ``mim_logits`` and
        ``mim_targets`` (the tokenizer's codes of the masked patches, -1 elsewhere)."""
        if not self.mim_vocab_size:
            raise ValueError("mim needs mim_vocab_size > 0 (the image tokenizer's codebook size)")
        images = batch["image"]
        b, n = images.shape[0], (self.image_size // self.patch_size) ** 2
        mask = jnp.asarray(batch["image_mask"]).astype(bool).reshape(b, -1)
        if mask.shape[1] != n:
            raise ValueError(f"image_mask has {mask.shape[1]} cells, the image {n} patches")
        x = self._typed(self.encode_image(images, train, mask=mask)["tokens"], 1)
        h = self.transformer(x, mode="image", train=train)
        tok = resolve_tokenizer(self.image_tokenizer, codebook_size=self.mim_vocab_size, patch_size=self.patch_size,
                                image_size=self.image_size, fit_images=self.tokenizer_fit_images,
                                normalise=self.tokenizer_normalise)
        if tok.codebook_size != self.mim_vocab_size or tok.patch_size != self.patch_size:
            raise ValueError(f"image tokenizer {self.image_tokenizer!r} has {tok.codebook_size} codes of "
                             f"{tok.patch_size} px patches; the model has mim_vocab_size={self.mim_vocab_size} and "
                             f"patch_size={self.patch_size}")
        codes = tok(images).reshape(b, -1)  # stop_gradient inside
        return {"mim_logits": self.mim_head(h[:, 1:]).astype(jnp.float32),
                "mim_targets": jnp.where(mask, codes, -1)}

    def text_mlm(self, batch: dict, *, train: bool = False) -> dict:
        """Masked language modelling on the text-only pass (VLMo's language stage): ``mlm_logits`` over
        ``batch["mlm_text"]`` (else ``text``; targets ``mlm_targets`` from the batch)."""
        if not self.mlm:
            raise ValueError("text_mlm needs mlm=True (the MLM head)")
        ids = batch["mlm_text"] if "mlm_text" in batch else batch["text"]
        text = self.encode_text(ids, batch.get("text_mask"), train)
        h = self.transformer(self._typed(text["tokens"], 0), mode="text", key_mask=text["mask"], train=train)
        return {"mlm_logits": self.mlm_head(h)}

    # -- contrastive head -------------------------------------------------------------------------------

    def contrastive_outputs(self, text: dict, image: dict, train: bool = False) -> dict:
        if not self.contrastive_dim:
            return {}
        h = self.unimodal(text, image, train, vl=self.vl_contrastive)
        out = {"image_embed": l2_normalize(self.itc_image_proj(h["image"][:, 0])),
               "text_embed": l2_normalize(self.itc_text_proj(h["text"][:, 0])),
               "logit_scale": jnp.exp(jnp.minimum(self.logit_scale, self.max_logit_scale))}
        if self.vl_contrastive:
            out.update(vl_image_embed=l2_normalize(self.itc_vl_image_proj(h["vl_image"][:, 0])),
                       vl_text_embed=l2_normalize(self.itc_vl_text_proj(h["vl_text"][:, 0])),
                       vl_logit_scale=jnp.exp(jnp.minimum(self.vl_logit_scale, self.max_logit_scale)))
        return out

    def encode_image_embed(self, images: jax.Array) -> jax.Array:
        """Normalised contrastive image embedding: the image-only pass (dual-encoder retrieval)."""
        h = self.unimodal(None, self.encode_image(images, False), False)["image"]
        return l2_normalize(self.itc_image_proj(h[:, 0]))

    def encode_text_embed(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Normalised contrastive text embedding: the text-only pass."""
        h = self.unimodal(self.encode_text(ids, mask, False), None, False)["text"]
        return l2_normalize(self.itc_text_proj(h[:, 0]))

    @staticmethod
    def flops_per_example(cfg: Mapping[str, Any], text_len: int | None = None, inputs: tuple[str, ...] = (),
                          **_: Any) -> float:
        """Forward FLOPs of one training example: the uni-modal passes (with a contrastive head) and one
        fused pass per enabled objective (the VL passes counted as dense layers)."""
        del inputs
        width, depth, mlp = cfg.get("width", 768), cfg.get("depth", 12), cfg.get("mlp_dim", 3072)
        patch, size = cfg.get("patch_size", 16), cfg.get("image_size", 224)
        image = (size // patch) ** 2 + 1
        text = text_len or cfg.get("max_text_len", 40)
        embed = 2 * (image - 1) * patch * patch * 3 * width
        total = embed
        if cfg.get("contrastive_dim", 768):
            total += transformer_flops(image, width, depth, mlp) + transformer_flops(text, width, depth, mlp)
            if cfg.get("vl_contrastive"):
                vl = cfg.get("vl_depth", 2)
                total += transformer_flops(image, width, vl, mlp) + transformer_flops(text, width, vl, mlp)
        passes = int(bool(cfg.get("mlm"))) + int(cfg.get("itm", "none") != "none")
        passes += int(bool(cfg.get("vqa_answers") or cfg.get("num_classes"))) + 2 * int(bool(cfg.get("pair_classes")))
        return float(total + passes * transformer_flops(text + image, width, depth, mlp))
