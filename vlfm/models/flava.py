"""FLAVA (Singh et al., 2022): image and text encoders, a multimodal encoder over both, and the
unimodal and multimodal pretraining heads.

Layout and numerics follow HF ``FlavaModel`` / ``FlavaForPreTraining`` (``vlfm.convert.hf_flava``
imports their checkpoints):

- image encoder: ViT (patches, [CLS], learned positions; a learned mask token replaces masked patches
  before the positions are added), pre-LN layers, final LayerNorm, tanh pooler;
- text encoder: BERT embeddings (word + position + type, LayerNorm) and the same pre-LN layers,
  final LayerNorm, tanh pooler;
- multimodal encoder: its own [CLS_M] before ``[Linear_i2m(image hidden); Linear_t2m(text hidden)]``,
  pre-LN layers, final LayerNorm, tanh pooler. It reads the unimodal encoders' last layer outputs
  *before* their final LayerNorm; the contrastive projections read the normalised [CLS] tokens.

One model serves every FLAVA task; what the batch holds picks the objectives (no trainer change):

- ``image`` alone: ``mim`` gives ``mim_logits [B, N, V_img]`` and ``mim_targets`` (codes of the masked
  patches, -1 elsewhere);
- ``text`` alone (masked ids + ``mlm_targets``): ``mlm`` gives ``mlm_logits [B, L, V]``;
- ``image`` + ``text`` (+ ``mlm_text``, ``mlm_targets``): ``image_embed``, ``text_embed``, ``logit_scale``
  (global contrastive, unmasked passes); ``itm``: ``itm_logits``, ``itm_labels``; ``mmm``:
  ``mmm_image_logits`` / ``mmm_image_targets`` and ``mmm_text_logits`` / ``mmm_text_targets``.

The multimodal pass reads the masked image and the masked text (``mlm_text``, else ``text``), as
FLAVA's does; ITM and MMM share it. In training, ``itm`` gives a random half of the pairs another
row's image (``sampling`` stream; tests inject ``itm_image_index``) and MMM targets count on the
matching pairs only (FLAVA's ``pos_mask``). Image masks: ``batch["image_mask"]`` ([B, h, w] or
[B, N], e.g. BEiT blocks from the data pipeline) or, without one, a random ``mim_ratio`` of the
patches (``masking`` stream; a fixed key at evaluation). MIM targets: ``batch["mim_targets"]`` (e.g.
precomputed dVAE codes) or the codes of the frozen ``tokenizer`` (``vlfm.models.image_tokenizer``).
``itm_masked=False`` gives ITM its own multimodal pass over the unmasked image and text (the inputs
the ``itm_score`` evaluation reads), at the cost of a third multimodal pass per step.

Fine-tuning heads (off by default) read the multimodal encoder's pooled [CLS_M] of the unmasked pair:
``vqa_answers`` (``vqa_logits``), ``num_classes`` (``logits``: visual entailment) and ``pair_classes``
(``logits`` of ``image``, ``image2`` and ``text``: NLVR2, the text fused with each image and the two
pooled vectors concatenated), each a ``ClassifierHead`` (dense 2x width, LayerNorm, GELU, dense) as
the other fusion models use.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlfm.losses.itm import random_negatives
from vlfm.models import heads, layers
from vlfm.models.fusion import take_rows
from vlfm.models.image_tokenizer import ImageTokenizer, resolve_tokenizer
from vlfm.models.dual_encoder import l2_normalize
from vlfm.models.masked_image import MaskedPredictionHead, MaskToken, random_masking, replace_masked
from vlfm.models.registry import MODELS
from vlfm.models.vilt import TextEmbed

Dtype = layers.Dtype


class _FlavaPart(nn.Module):
    """Fields every FLAVA encoder shares (one set of sizes, as ``FlavaConfig()`` uses)."""

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    ln_eps: float = 1e-12
    act: str = "gelu"
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    init_std: float | None = 0.02
    scan: bool = True
    remat: str = "none"
    attention: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def encode(self, x: jax.Array, key_mask: jax.Array | None, train: bool) -> dict:
        """The layers, the final LayerNorm and the pooler: ``hidden`` (before the LayerNorm),
        ``tokens`` (after it) and ``pooled``."""
        block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, norm="pre", ln_eps=self.ln_eps, act=self.act,
                     dropout_rate=self.dropout_rate, attn_dropout_rate=self.attn_dropout_rate,
                     implementation=self.attention, init_std=self.init_std, dtype=self.dtype,
                     param_dtype=self.param_dtype)
        hidden = layers.Encoder(self.depth, block, self.drop_path_rate, self.scan, self.remat, name="encoder")(
            x, key_mask=key_mask, train=train)
        tokens = layers.layer_norm(self.ln_eps, self.dtype, self.param_dtype, name="ln_final")(hidden)
        pooled = jnp.tanh(layers.Proj((self.width,), ("embed", "proj"), init_std=self.init_std, dtype=self.dtype,
                                      param_dtype=self.param_dtype, name="pooler")(tokens[:, 0]))
        return {"hidden": hidden, "tokens": tokens, "pooled": pooled}


class FlavaImageEncoder(_FlavaPart):
    """Images ``[B, H, W, 3]`` (+ ``mask [B, N]``: patches replaced by the mask token) -> hidden, tokens,
    pooled over ``[CLS; patches]``."""

    image_size: int = 224
    patch_size: int = 16

    @nn.compact
    def __call__(self, images: jax.Array, mask: jax.Array | None = None, *, train: bool = False) -> dict:
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"FLAVA expects {self.image_size} px images, got {images.shape[1:3]}")
        x, _ = layers.PatchEmbed(self.patch_size, self.width, init_std=self.init_std, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name="patch_embed")(images)
        token = MaskToken(self.width, self.param_dtype, name="mask_token")()  # always created: part of the model
        if mask is not None:
            x = replace_masked(x, mask.reshape(x.shape[0], -1), token)
        cls = self.param("cls", layers.logical(nn.initializers.zeros, ("embed",)), (self.width,), self.param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, self.width)), x], axis=1)
        pos = layers.PosEmbed(x.shape[1], self.width, self.init_std or 0.02, param_dtype=self.param_dtype,
                              name="pos_embed")()
        x = nn.Dropout(self.dropout_rate)(x + pos.astype(x.dtype)[None], deterministic=not train)
        return self.encode(nn.with_logical_constraint(x, layers.EMBED_AXES), None, train)


class FlavaTextEncoder(_FlavaPart):
    """Token ids ``[B, L]`` (+ ``mask``) -> hidden, tokens, pooled (BERT embeddings, pre-LN layers)."""

    vocab_size: int = 30522
    max_len: int = 512
    type_vocab_size: int = 2

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array | None = None, *, train: bool = False) -> dict:
        x = TextEmbed(self.vocab_size, self.width, self.max_len, self.type_vocab_size, ln_eps=self.ln_eps,
                      dropout_rate=self.dropout_rate, init_std=self.init_std, dtypes=(self.dtype, self.param_dtype),
                      name="embed")(ids, train=train)
        return self.encode(x, None if mask is None else mask.astype(bool), train)


class FlavaMultimodalEncoder(_FlavaPart):
    """``[CLS_M; image states; text states]`` -> hidden, tokens, pooled (text padding masked out)."""

    @nn.compact
    def __call__(self, image: jax.Array, text: jax.Array, text_mask: jax.Array | None, *,
                 train: bool = False) -> dict:
        b = image.shape[0]
        cls = self.param("cls", layers.logical(nn.initializers.zeros, ("embed",)), (self.width,), self.param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(image.dtype), (b, 1, self.width)), image, text], axis=1)
        key_mask = None
        if text_mask is not None:
            key_mask = jnp.concatenate([jnp.ones((b, 1 + image.shape[1]), bool), text_mask.astype(bool)], axis=1)
        return self.encode(x, key_mask, train)


class ItmHead(nn.Module):
    """FLAVA's ITM head: its own tanh pooler on [CLS_M], then ``Linear(width, 2)``."""

    init_std: float | None = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        common = dict(init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
        pooled = jnp.tanh(layers.Proj((tokens.shape[-1],), ("embed", "proj"), name="pooler", **common)(tokens[:, 0]))
        return layers.Proj((2,), ("embed", "classes"), name="classifier", **common)(pooled).astype(jnp.float32)


def _unit(x: jax.Array) -> jax.Array:
    return l2_normalize(x, eps=1e-12)  # torch F.normalize's epsilon


@MODELS.register("flava")
class Flava(nn.Module):
    """FLAVA (defaults: HF ``FlavaConfig()``; 241,356,289 parameters without heads, as ``FlavaModel``).

    Heads (each off by default): ``mim`` (MIM on images alone), ``mlm`` (MLM on text alone), ``mmm``
    (masked image and text through the multimodal encoder), ``itm``. The contrastive projections and
    ``logit_scale`` are part of the base model (``FlavaModel`` has them); the temperature is
    ``exp(logit_scale)`` with ``logit_scale`` clipped to [0, ``max_logit_scale``] (FLAVA clamps it to
    [0, ln 100]). Head LayerNorms use ``head_ln_eps`` (HF: the encoders' 1e-12; torchmultimodal 1e-5).
    """

    width: int = 768
    num_heads: int = 12
    mlp_dim: int = 3072
    image_depth: int = 12
    text_depth: int = 12
    mm_depth: int = 6
    image_size: int = 224
    patch_size: int = 16
    vocab_size: int = 30522
    max_text_len: int = 512
    type_vocab_size: int = 2
    ln_eps: float = 1e-12
    act: str = "gelu"
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    init_std: float | None = 0.02
    projection_dim: int = 768
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)
    mim: bool = False
    mlm: bool = False
    mmm: bool = False
    itm: bool = False
    itm_masked: bool = True
    vqa_answers: int = 0
    num_classes: int = 0
    pair_classes: int = 0
    classifier_ln_eps: float = 1e-5
    image_vocab_size: int = 8192
    head_ln_eps: float = 1e-12
    mim_ratio: float = 0.4
    tokenizer: str = "kmeans"
    tokenizer_fit_images: int = 2000
    tokenizer_normalise: bool = False
    scan: bool = True
    remat: str = "none"
    attention: str = "xla"
    dtype: str = "float32"
    param_dtype: str = "float32"

    PREDICT = {
        "mlm_logits": lambda m, b: m.masked_text_logits(b),
        "itm_score": lambda m, b: m.itm_score(b),
        "encode_image": lambda m, b: m.encode_image(b["image"]),
        "encode_text": lambda m, b: m.encode_text(b["text"], b.get("text_mask")),
        "mim_tokens": lambda m, b: m.image_tokens(b, "mim"),
        "mmm_image_tokens": lambda m, b: m.image_tokens(b, "mmm_image"),
        "vqa_logits": lambda m, b: m(b)["vqa_logits"],
        "logits": lambda m, b: m(b)["logits"],
    }

    def setup(self):
        dtype, pdtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
        part = dict(width=self.width, num_heads=self.num_heads, mlp_dim=self.mlp_dim, ln_eps=self.ln_eps,
                    act=self.act, dropout_rate=self.dropout_rate, attn_dropout_rate=self.attn_dropout_rate,
                    drop_path_rate=self.drop_path_rate, init_std=self.init_std, scan=self.scan, remat=self.remat,
                    attention=self.attention, dtype=dtype, param_dtype=pdtype)
        self.image_encoder = FlavaImageEncoder(depth=self.image_depth, image_size=self.image_size,
                                               patch_size=self.patch_size, **part)
        self.text_encoder = FlavaTextEncoder(depth=self.text_depth, vocab_size=self.vocab_size,
                                             max_len=self.max_text_len, type_vocab_size=self.type_vocab_size, **part)
        self.mm_encoder = FlavaMultimodalEncoder(depth=self.mm_depth, **part)
        common = dict(init_std=self.init_std, dtype=dtype, param_dtype=pdtype)
        proj = lambda n, out: layers.Proj((out,), ("embed", "proj"), name=n, **common)  # noqa: E731
        self.image_projection = proj("image_projection", self.projection_dim)
        self.text_projection = proj("text_projection", self.projection_dim)
        self.image_to_mm = proj("image_to_mm", self.width)
        self.text_to_mm = proj("text_to_mm", self.width)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.logit_scale_init), (), jnp.float32)
        head = lambda n, vocab: MaskedPredictionHead(vocab, self.act, self.head_ln_eps, name=n, **common)  # noqa: E731
        if self.mim:
            self.mim_head = head("mim_head", self.image_vocab_size)
        if self.mlm:
            self.mlm_head = head("mlm_head", self.vocab_size)
        if self.mmm:
            self.mmm_image_head = head("mmm_image_head", self.image_vocab_size)
            self.mmm_text_head = head("mmm_text_head", self.vocab_size)
        if self.itm:
            self.itm_head = ItmHead(**common)
        classifier = lambda n: heads.ClassifierHead(2 * self.width, n, self.classifier_ln_eps, **common)  # noqa: E731
        if self.vqa_answers:
            self.vqa_head = classifier(self.vqa_answers)
        if self.num_classes:
            self.cls_head = classifier(self.num_classes)
        if self.pair_classes:
            self.pair_head = classifier(self.pair_classes)

    # ---------------------------------------------------------------------------------------------
    # Encoders and embeddings

    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def temperature(self) -> jax.Array:
        return jnp.exp(jnp.clip(self.logit_scale, 0.0, self.max_logit_scale))

    def encode_image(self, images: jax.Array) -> jax.Array:
        """L2-normalised image embeddings (projected [CLS] after the final LayerNorm)."""
        return _unit(self.image_projection(self.image_encoder(images)["tokens"][:, 0]))

    def encode_text(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """L2-normalised text embeddings (projected [CLS] after the final LayerNorm)."""
        return _unit(self.text_projection(self.text_encoder(ids, mask)["tokens"][:, 0]))

    def fuse(self, image: dict, text: dict, text_mask: jax.Array | None, train: bool = False) -> dict:
        """The multimodal encoder over the unimodal encoders' ``hidden`` (pre-final-LayerNorm) states."""
        return self.mm_encoder(self.image_to_mm(image["hidden"]), self.text_to_mm(text["hidden"]), text_mask,
                               train=train)

    # ---------------------------------------------------------------------------------------------
    # Masks and targets

    def image_tokenizer(self) -> ImageTokenizer:
        """The frozen tokenizer (a constant built once per process, never a parameter)."""
        tok = resolve_tokenizer(self.tokenizer, codebook_size=self.image_vocab_size, patch_size=self.patch_size,
                                image_size=self.image_size, fit_images=self.tokenizer_fit_images,
                                normalise=self.tokenizer_normalise)
        if tok.codebook_size != self.image_vocab_size or tok.patch_size != self.patch_size:
            raise ValueError(f"image tokenizer {self.tokenizer!r} has {tok.codebook_size} codes of {tok.patch_size}px "
                             f"patches; the model needs {self.image_vocab_size} codes of {self.patch_size}px")
        return tok

    def image_mask(self, batch: dict) -> jax.Array:
        """``[B, N]`` bool: the batch's ``image_mask``, else a random ``mim_ratio`` of the patches."""
        b, n = batch["image"].shape[0], self.num_patches()
        if "image_mask" in batch:
            return batch["image_mask"].reshape(b, n).astype(bool)
        rng = self.make_rng("masking") if self.has_rng("masking") else jax.random.key(0)
        return random_masking(rng, n, b, self.mim_ratio)[1]

    def mim_targets(self, batch: dict, mask: jax.Array) -> jax.Array:
        """Codes ``[B, N]`` at masked patches, -1 elsewhere (``batch["mim_targets"]`` or the tokenizer's)."""
        b, n = mask.shape
        if "mim_targets" in batch:
            codes = batch["mim_targets"].reshape(b, n)
        else:
            codes = self.image_tokenizer()(batch["image"]).reshape(b, n)
        return jnp.where(mask, codes, -1).astype(jnp.int32)

    # ---------------------------------------------------------------------------------------------
    # Objectives

    def __call__(self, batch: dict, *, train: bool = False) -> dict:
        has_image, has_text = "image" in batch, "text" in batch
        if has_image and has_text:
            return self.pair_objectives(batch, train)
        if has_image:
            return self.image_objectives(batch, train)
        if has_text:
            return self.text_objectives(batch, train)
        raise ValueError(f"FLAVA needs 'image' and/or 'text' in the batch, got {sorted(batch)}")

    def image_objectives(self, batch: dict, train: bool) -> dict:
        """MIM on images alone: the masked image through the image encoder and the MIM head."""
        if not self.mim:
            raise ValueError("an image-only task needs model.mim=True (masked image modelling)")
        mask = self.image_mask(batch)
        out = self.image_encoder(batch["image"], mask, train=train)
        return {"mim_logits": self.mim_head(out["tokens"][:, 1:]), "mim_targets": self.mim_targets(batch, mask)}

    def text_objectives(self, batch: dict, train: bool) -> dict:
        """MLM on text alone (``text`` holds the masked ids, ``mlm_targets`` the answers)."""
        if not self.mlm:
            raise ValueError("a text-only task needs model.mlm=True (masked language modelling)")
        out = self.text_encoder(batch["text"], batch.get("text_mask"), train=train)
        return {"mlm_logits": self.mlm_head(out["tokens"])}

    def pair_objectives(self, batch: dict, train: bool) -> dict:
        """Global contrastive on the unmasked passes; ITM and MMM on one multimodal pass over the masked
        image and masked text."""
        text_mask = batch.get("text_mask")
        image = self.image_encoder(batch["image"], train=train)
        text = self.text_encoder(batch["text"], text_mask, train=train)
        out = {"image_embed": _unit(self.image_projection(image["tokens"][:, 0])),
               "text_embed": _unit(self.text_projection(text["tokens"][:, 0])),
               "logit_scale": self.temperature()}
        cache = {}

        def plain() -> dict:  # the multimodal pass over the unmasked pair, run once however many heads read it
            if "fused" not in cache:
                cache["fused"] = self.fuse(image, text, text_mask, train)
            return cache["fused"]

        out.update(self.task_logits(batch, plain, text, train))
        if not (self.itm or self.mmm):  # FlavaModel's forward: the multimodal pass over the unmasked inputs
            out["mm_pooled"] = plain()["pooled"]
            return out
        b = batch["image"].shape[0]
        mask = self.image_mask(batch)
        masked_image = self.image_encoder(batch["image"], mask, train=train)
        masked_text = self.text_encoder(batch.get("mlm_text", batch["text"]), text_mask, train=train)
        rows = jnp.arange(b, dtype=jnp.int32)
        image_idx, labels = rows, jnp.ones((b,), jnp.int32)
        if self.itm and train:
            if "itm_image_index" in batch:
                image_idx = batch["itm_image_index"].astype(jnp.int32)
                labels = (image_idx == rows).astype(jnp.int32)
            else:
                image_idx, labels = random_negatives(self.make_rng("sampling"), b)
        fused = self.fuse(take_rows(masked_image, image_idx), masked_text, text_mask, train)["tokens"]
        if self.itm:
            itm_fused = fused
            if not self.itm_masked:  # the pairs' own multimodal pass over the unmasked image and text
                itm_fused = self.fuse(take_rows(image, image_idx), text, text_mask, train)["tokens"] \
                    if train else plain()["tokens"]
            out.update(itm_logits=self.itm_head(itm_fused), itm_labels=labels)
        if self.mmm:
            n, length = self.num_patches(), batch["text"].shape[1]
            match = labels[:, None] == 1
            image_targets = take_rows(self.mim_targets(batch, mask), image_idx)
            out["mmm_image_logits"] = self.mmm_image_head(fused[:, 2:2 + n])
            out["mmm_image_targets"] = jnp.where(match, image_targets, -1)
            out["mmm_text_logits"] = self.mmm_text_head(fused[:, -length:])
            if "mlm_targets" in batch:
                out["mmm_text_targets"] = jnp.where(match, batch["mlm_targets"], -1).astype(jnp.int32)
        return out

    def task_logits(self, batch: dict, plain, text: dict, train: bool) -> dict:
        """Fine-tuning heads on the multimodal encoder's pooled [CLS_M] of the unmasked pair (``plain()``):
        ``vqa_logits``, ``logits`` (one image: visual entailment; ``image2`` too: NLVR2, the text fused
        with each image and the two pooled vectors concatenated, as the fusion models do)."""
        out = {}
        if self.vqa_answers:
            out["vqa_logits"] = self.vqa_head(plain()["pooled"])
        if self.num_classes:
            out["logits"] = self.cls_head(plain()["pooled"])
        if self.pair_classes:
            if "image2" not in batch:
                raise ValueError("model.pair_classes (NLVR2) needs 'image2' in the batch")
            second = self.fuse(self.image_encoder(batch["image2"], train=train), text, batch.get("text_mask"), train)
            out["logits"] = self.pair_head(jnp.concatenate([plain()["pooled"], second["pooled"]], axis=-1))
        return out

    # ---------------------------------------------------------------------------------------------
    # Evaluation entry points

    def encode(self, batch: dict) -> dict:
        """Every state HF ``FlavaModel`` returns, for the batch's unmasked ``image`` and ``text`` (and the
        masked image when ``image_mask`` is given): ``{image, text, mm}_{tokens, pooled}``, and the
        normalised contrastive embeddings ``image_embed``, ``text_embed``."""
        text_mask = batch.get("text_mask")
        image = self.image_encoder(batch["image"], batch.get("image_mask"))
        text = self.text_encoder(batch["text"], text_mask)
        mm = self.fuse(image, text, text_mask)
        out = {f"{part}_{k}": v[k] for part, v in (("image", image), ("text", text), ("mm", mm))
               for k in ("tokens", "pooled")}
        out["image_embed"] = _unit(self.image_projection(image["tokens"][:, 0]))
        out["text_embed"] = _unit(self.text_projection(text["tokens"][:, 0]))
        return out

    def masked_text_logits(self, batch: dict) -> jax.Array:
        """MLM logits of text alone, or MMM text logits of pairs (``mlm_text`` with its image)."""
        if "image" in batch:
            return self.pair_objectives(batch, False)["mmm_text_logits"]
        return self.text_objectives(batch, False)["mlm_logits"]

    def image_tokens(self, batch: dict, which: str) -> dict:
        """``{"predicted", "labels"}`` of the masked patches (labels -1 elsewhere), for ``token_accuracy``
        with ``pad_id=-1``; masks from the batch or a fixed key."""
        out = self.image_objectives(batch, False) if which == "mim" else self.pair_objectives(batch, False)
        return {"predicted": jnp.argmax(out[f"{which}_logits"], -1), "labels": out[f"{which}_targets"]}

    def itm_score(self, batch: dict) -> jax.Array:
        """Match score ``logit(match) - logit(no match)`` of each (image, text) row, unmasked inputs."""
        text_mask = batch.get("text_mask")
        image = self.image_encoder(batch["image"])
        text = self.text_encoder(batch["text"], text_mask)
        logits = self.itm_head(self.fuse(image, text, text_mask)["tokens"])
        return logits[:, 1] - logits[:, 0]
