"""METER and BridgeTower: uni-modal towers, then co-attention (or merged-attention) fusion layers.

Both encode the image with a (CLIP-)ViT tower and the text with a BERT/RoBERTa tower, project each
into the fusion width (one linear map per modality, shared across layers) and add a token-type
embedding (text 0, image 1; a second image 2 for NLVR2). Then:

- METER (Dou et al., 2022): ``depth`` co-attention layers on the *last* uni-modal layer's output
  (``fusion="merged"``: one self-attention stack over both, the paper's alternative);
- BridgeTower (Xu et al., 2023): the top ``depth`` uni-modal layers feed the ``depth`` cross-modal
  layers through bridge layers ``LN(T̃_l + X_{l-1})`` (``bridge``: ``add``, ``scaled_add``,
  ``interpolate``), the first layer's inputs through a LayerNorm; the image tower's ``ln_post`` is
  applied to every bridged layer. Layout and numerics follow HF ``BridgeTowerModel``.

The pooled vector is ``[tanh pooler(text[:, 0]); tanh pooler(image[:, 0])]`` (2 x width). A
contrastive head (``contrastive_dim``) maps the uni-modal class tokens to normalised embeddings, as
``BridgeTowerForContrastiveLearning`` does for text and image (``contrastive_cross`` adds its head on
the fused pair, output as ``cross_embed`` at evaluation); its similarities also draw ITM hard negatives
(``itm="hard"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from vlfm.core.flops import transformer_flops
from vlfm.models import layers
from vlfm.models.dual_encoder import l2_normalize
from vlfm.models.flops import tower_flops
from vlfm.models.fusion import CoAttentionFusion, FusionModel, MergedFusion
from vlfm.models.registry import MODELS
from vlfm.models.towers import build_tower

FUSIONS = ("co_attention", "merged")


class CoAttentionModel(FusionModel):
    """Shared by ``meter`` and ``bridgetower``; the tower fields (``width``, ``depth``, ``num_heads``,
    ``mlp_dim``, ``ln_eps``, ``dropout_rate``, ``scan``, ``remat``, ``drop_path_rate``,
    ``attention_layers`` ...) describe the fusion layers."""

    image: Any = None
    text: Any = None
    fusion: str = "co_attention"
    bridge: str = "none"
    exchange: bool = True  # False: two independent cross encoders over the towers' outputs (R2D2)
    pooler: bool = True  # False: ``pooled`` is the two first tokens as they are (R2D2's heads read them)
    input_norm: bool = False
    bridge_ln_eps: float = 1e-5
    num_types: int = 2
    contrastive_dim: int = 0
    contrastive_cross: bool = False
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)
    ln_eps: float = 1e-5
    dropout_rate: float = 0.1
    attn_dropout_rate: float = 0.1
    init_std: float | None = 0.02

    def setup(self):
        dtype, pdtype = self.dtypes
        if self.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {self.fusion!r}; valid: {', '.join(FUSIONS)}")
        if self.bridge != "none" and self.fusion != "co_attention":
            raise ValueError("bridge layers need fusion='co_attention'")
        if not self.exchange and self.fusion != "co_attention":
            raise ValueError("exchange=False (independent cross encoders) needs fusion='co_attention'")
        if self.pair_classes and self.num_types < 3:
            raise ValueError("pair_classes (NLVR2) needs num_types=3: the second image has token type 2")
        bridged = self.bridge != "none"
        self.image_tower = build_tower(self.image, collect_hidden=bridged, norm_hidden=bridged)
        self.text_tower = build_tower(self.text, collect_hidden=bridged)
        for name, tower in (("image", self.image_tower), ("text", self.text_tower)):
            if bridged and tower.depth < self.depth:
                raise ValueError(f"the {name} tower has {tower.depth} layers, fewer than the {self.depth} bridged")
        proj = lambda: layers.Proj((self.width,), ("embed", "proj"), init_std=self.init_std, dtype=dtype,  # noqa: E731
                                   param_dtype=pdtype)
        self.text_transform, self.image_transform = proj(), proj()
        self.type_embed = layers.PosEmbed(self.num_types, self.width, self.init_std or 0.02, axis_name="types",
                                          param_dtype=pdtype)
        fusion = dict(depth=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim, ln_eps=self.ln_eps,
                      act=self.act, dropout_rate=self.dropout_rate, attn_dropout_rate=self.attn_dropout_rate,
                      init_std=self.init_std, implementation=self.attention, dtype=dtype, param_dtype=pdtype)
        stack = dict(scan=self.scan, remat=self.remat, drop_path_rate=self.drop_path_rate,
                     attention_layers=tuple(self.attention_layers))
        if self.fusion == "co_attention":
            self.fusion_layers = CoAttentionFusion(bridge=self.bridge, bridge_ln_eps=self.bridge_ln_eps,
                                                   input_norm=self.input_norm, exchange=self.exchange, **stack,
                                                   **fusion)
        else:
            self.fusion_layers = MergedFusion(**stack, **fusion)
        if self.pooler:
            self.text_pooler, self.image_pooler = proj(), proj()
        if self.contrastive_dim:
            head = lambda: layers.Proj((self.contrastive_dim,), ("embed", "proj"), init_std=self.init_std,  # noqa: E731
                                       dtype=dtype, param_dtype=pdtype)
            self.itc_text_head, self.itc_image_head = head(), head()
            if self.contrastive_cross:
                self.itc_cross_head = head()
            self.logit_scale = self.param("logit_scale", layers.logical(
                nn.initializers.constant(self.logit_scale_init), ()), (), jnp.float32)
        self.setup_heads()

    def text_vocab_size(self) -> int:
        return self.text_tower.vocab_size

    def _layers(self, out: dict) -> jax.Array:
        """The uni-modal layers the fusion reads, batch-major ``[B, n, L, D]``: the top ``depth`` with a
        bridge, else the tower's final tokens."""
        if self.bridge == "none":
            return out["tokens"][:, None]
        return jnp.swapaxes(out["hidden"][-self.depth:], 0, 1)

    def encode_text(self, ids: jax.Array, mask: jax.Array | None, train: bool) -> dict:
        out = self.text_tower(ids, mask, train=train)
        mask = jnp.ones(ids.shape, bool) if mask is None else mask.astype(bool)
        return {"layers": self.text_transform(self._layers(out)), "mask": mask, "last": out["tokens"]}

    def encode_image(self, images: jax.Array, train: bool) -> dict:
        return {"layers": self.image_transform(self._layers(self.image_tower(images, train=train)))}

    def fuse(self, text: dict, image: dict, image_type: int, train: bool) -> dict:
        types = self.type_embed().astype(text["layers"].dtype)
        x, y = self.fusion_layers(text["layers"] + types[0], image["layers"] + types[image_type], text["mask"],
                                  train=train)
        if self.pooler:
            pooled = jnp.concatenate([jnp.tanh(self.text_pooler(x[:, 0])), jnp.tanh(self.image_pooler(y[:, 0]))], -1)
        else:
            pooled = jnp.concatenate([x[:, 0], y[:, 0]], -1)
        return {"text_tokens": x, "image_tokens": y, "text_mask": text["mask"],
                "image_mask": jnp.ones(y.shape[:2], bool), "pooled": pooled}

    def _image_embed(self, image: dict) -> jax.Array:
        """Normalised contrastive embedding of the last bridged image layer's class token (+ its type)."""
        types = self.type_embed().astype(image["layers"].dtype)
        return l2_normalize(self.itc_image_head(image["layers"][:, -1, 0] + types[1]))

    def _text_embed(self, tokens: jax.Array) -> jax.Array:
        """Normalised contrastive embedding of the text tower's first token."""
        return l2_normalize(self.itc_text_head(tokens[:, 0]))

    def contrastive_outputs(self, text: dict, image: dict, train: bool = False) -> dict:
        del train  # the towers have already run
        if not self.contrastive_dim:
            return {}
        return {"image_embed": self._image_embed(image), "text_embed": self._text_embed(text["last"]),
                "logit_scale": jnp.exp(jnp.minimum(self.logit_scale, self.max_logit_scale))}

    def encode_image_embed(self, images: jax.Array) -> jax.Array:
        """Normalised contrastive image embedding (the dual-encoder half, for retrieval)."""
        return self._image_embed(self.encode_image(images, False))

    def encode_text_embed(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Normalised contrastive text embedding."""
        return self._text_embed(self.text_tower(ids, mask)["tokens"])

    def __call__(self, batch: dict, *, train: bool = False) -> dict:
        out = super().__call__(batch, train=train)
        if self.contrastive_dim and self.contrastive_cross and not train:
            out["cross_embed"] = l2_normalize(self.itc_cross_head(out["pooled"]))
        return out

    PREDICT = dict(FusionModel.PREDICT,
                   encode_image=lambda m, b: m.encode_image_embed(b["image"]),
                   encode_text=lambda m, b: m.encode_text_embed(b["text"], b.get("text_mask")))

    @staticmethod
    def flops_per_example(cfg: Mapping[str, Any], text_len: int | None = None, inputs: tuple[str, ...] = (),
                          **_: Any) -> float:
        """Forward FLOPs of one training example: towers (text twice with MLM), their projections to the
        fusion width (of each bridged layer), fusion per pass; poolers and heads are left out."""
        del inputs
        image_flops, image_width = tower_flops(cfg["image"])
        text_flops, text_width = tower_flops(cfg["text"], text_len)
        p, size = cfg["image"].get("patch_size", 16), cfg["image"].get("image_size", 224)
        s, t = (size // p) ** 2 + 1, text_len or cfg["text"].get("max_len", 40)
        d, m, depth = cfg.get("width", 768), cfg.get("mlp_dim", 3072), cfg.get("depth", 6)
        if cfg.get("fusion", MODELS.get(cfg["name"]).fusion) == "merged":  # one transformer on the concatenated tokens
            fusion = transformer_flops(s + t, d, depth, m)
        else:  # per co-attention layer pair: self-attention, cross-attention (q, k, v, out) and MLP on each side
            fusion = depth * sum(2 * q * (4 * d * d + 2 * d * m) + 4 * q * q * d + 4 * q * kv * d + 4 * (q + kv) * d * d
                                 for q, kv in ((t, s), (s, t)))
        text_passes = 1 + int(bool(cfg.get("mlm")))
        bridge = cfg.get("bridge", MODELS.get(cfg["name"]).bridge)  # the class default: none (METER), add
        bridged = depth if bridge != "none" else 1  # each bridged layer is projected
        transforms = 2 * bridged * d * (s * image_width + text_passes * t * text_width)
        itm = cfg.get("itm", "none")
        passes = 3 * int(itm == "hard") + int(itm == "random") + int(bool(cfg.get("mlm")))
        passes += int(bool(cfg.get("vqa_answers") or cfg.get("num_classes"))) + 2 * int(bool(cfg.get("pair_classes")))
        return float(image_flops + text_flops * text_passes + transforms + max(passes, 1) * fusion)


@MODELS.register("meter")
class Meter(CoAttentionModel):
    """METER: co-attention on the last uni-modal layer (``fusion="merged"`` for merged attention)."""


@MODELS.register("bridgetower")
class BridgeTower(CoAttentionModel):
    """BridgeTower (defaults: bridges of type ``add`` with input LayerNorms, as HF ``BridgeTowerModel``)."""

    bridge: str = "add"
    input_norm: bool = True
