"""Vision Transformer (ViT / CLIP image tower).

Covers the ViT family (Ti/S/B/L/H at any patch size) and CLIP's image encoder (``ln_pre``, no patch
bias, QuickGELU) through options, so HF ``ViTModel`` and ``CLIPVisionModel`` weights load directly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from vlfm.models import layers
from vlfm.models.tower_base import TransformerTower, run_encoder
from vlfm.models.towers import TOWERS

# name -> (width, depth, heads, mlp_dim)
VARIANTS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "M": (512, 12, 8, 2048),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}


def variant(name: str) -> dict:
    """``"B/16"`` -> ViT fields (width, depth, num_heads, mlp_dim, patch_size)."""
    size, _, patch = name.partition("/")
    if size not in VARIANTS:
        raise KeyError(f"unknown ViT variant {name!r}; valid sizes: {', '.join(VARIANTS)}")
    width, depth, heads, mlp = VARIANTS[size]
    out = dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp)
    if patch:
        out["patch_size"] = int(patch)
    return out


def patch_embeddings(module: nn.Module, images: jax.Array, *, train: bool) -> tuple[jax.Array, int]:
    """ViT input tokens (patches, optional class token, positions, dropout, optional ``ln_pre``),
    created in ``module``.

    ``module`` supplies ``patch_size, width, patch_bias, init_std, class_token, pos_embedding,
    dropout_rate, pre_norm, ln_eps`` and ``dtypes``; its parameters are ``patch_embed``, ``cls``,
    ``pos_embed`` and ``ln_pre``. Returns the tokens and the number of prefix (class) tokens.
    """
    dtype, pdtype = module.dtypes
    x, (gh, gw) = layers.PatchEmbed(module.patch_size, module.width, use_bias=module.patch_bias,
                                    init_std=module.init_std, dtype=dtype, param_dtype=pdtype,
                                    name="patch_embed")(images)
    b = x.shape[0]
    n_prefix = 1 if module.class_token else 0
    if module.class_token:
        cls = module.param("cls", layers.logical(nn.initializers.zeros, ("embed",)), (module.width,), pdtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, module.width)), x], axis=1)
    if module.pos_embedding == "learned":
        pos = layers.PosEmbed(x.shape[1], module.width, param_dtype=pdtype, name="pos_embed")()
        x = x + pos.astype(dtype)[None]
    elif module.pos_embedding == "sincos2d":
        pos = jnp.asarray(layers.sincos_2d(gh, gw, module.width), dtype)
        x = x.at[:, n_prefix:].add(pos[None])
    elif module.pos_embedding != "none":
        raise ValueError(f"unknown pos_embedding {module.pos_embedding!r}; valid: learned, sincos2d, none")
    x = nn.Dropout(module.dropout_rate)(x, deterministic=not train)
    if module.pre_norm:
        x = layers.layer_norm(module.ln_eps, dtype, pdtype, name="ln_pre")(x)
    return nn.with_logical_constraint(x, layers.EMBED_AXES), n_prefix


@TOWERS.register("vit")
class VisionTransformer(TransformerTower):
    """Images ``[B, H, W, 3]`` -> ``{"tokens", "pooled", "logits"?}``.

    ``pool``: ``cls`` (class token), ``prefix`` (mean of the prefix tokens: AST's class and distillation
    tokens), ``gap`` (mean of patch tokens), ``map`` (attention pooling) or ``none``. ``pooler="dense_tanh"`` adds BERT/HF-ViT's tanh pooler on the pooled vector.
    ``num_classes > 0`` adds a (zero-initialised) linear classifier. ``norm_hidden`` applies the final
    LayerNorm to every collected layer output too (BridgeTower's shared ``ln_post``).
    """

    image_size: int = 224
    patch_size: int = 16
    pos_embedding: str = "learned"
    class_token: bool = True
    pool: str = "cls"
    pre_norm: bool = False
    patch_bias: bool = True
    final_norm: bool = True
    pooler: str = "none"
    num_classes: int = 0
    norm_hidden: bool = False

    def embed(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, int]:
        """Input tokens and the number of prefix tokens; towers for other inputs (video tubelets,
        spectrogram patches) replace this and keep everything after it."""
        return patch_embeddings(self, images, train=train)

    def encode(self, x: jax.Array, images: jax.Array, *, train: bool) -> tuple[jax.Array, dict]:
        """The layer stack over the input tokens (``run_encoder``); towers whose layers depend on the
        input's layout (divided space-time attention needs the number of frames) replace this."""
        return run_encoder(self, x, norm="pre", train=train)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> dict:
        dtype, pdtype = self.dtypes
        if self.norm_hidden and not (self.collect_hidden and self.final_norm):
            raise ValueError("norm_hidden needs collect_hidden=True and final_norm=True")
        x, n_prefix = self.embed(images, train=train)
        out, outputs = self.encode(x, images, train=train)
        outputs["encoded"] = out
        if self.final_norm:
            ln_final = layers.layer_norm(self.ln_eps, dtype, pdtype, name="ln_final")
            out = ln_final(out)
            if self.norm_hidden:
                outputs["hidden"] = ln_final(outputs["hidden"])
        outputs["tokens"] = out
        if self.pool == "cls":
            if not self.class_token:
                raise ValueError("pool='cls' needs class_token=True")
            pooled = out[:, 0]
        elif self.pool == "prefix":
            if not n_prefix:
                raise ValueError("pool='prefix' needs prefix tokens (class_token=True)")
            pooled = out[:, :n_prefix].mean(axis=1)
        elif self.pool == "gap":
            pooled = out[:, n_prefix:].mean(axis=1)
        elif self.pool == "map":
            pooled = layers.MapHead(self.num_heads, self.mlp_dim, self.ln_eps, self.attention, dtype, pdtype,
                                    name="map_head")(out)
        elif self.pool == "none":
            pooled = None
        else:
            raise ValueError(f"unknown pool {self.pool!r}; valid: cls, prefix, gap, map, none")
        if self.pooler not in ("none", "dense_tanh"):
            raise ValueError(f"unknown pooler {self.pooler!r}; valid: none, dense_tanh")
        if pooled is None and (self.pooler != "none" or self.num_classes):
            raise ValueError("pool='none' leaves nothing for the pooler or the classifier head")
        if self.pooler == "dense_tanh":
            pooled = jnp.tanh(layers.Proj((self.width,), ("embed", "proj"), init_std=self.init_std, dtype=dtype,
                                          param_dtype=pdtype, name="pooler")(pooled))
        outputs["pooled"] = pooled
        if self.num_classes:
            outputs["logits"] = layers.Proj((self.num_classes,), ("embed", "classes"), zero_init=True, dtype=dtype,
                                            param_dtype=pdtype, name="head")(pooled).astype(jnp.float32)
        return outputs
