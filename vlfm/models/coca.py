"""CoCa (contrastive captioner) in open_clip's layout.

- Image: a ViT (``vit`` tower, ``pool="none"``) whose tokens go through attentional pooling.
  ``pooler="open_clip"`` (open_clip's default): one pool of ``n_queries`` learned queries over the
  ViT output, then ``ln_post``; query 0, projected, is the contrastive embedding and queries
  ``1..n_queries-1`` are the image tokens the decoder reads. ``pooler="parallel"`` (the paper's):
  the ViT output is LayerNorm'd (the tower's ``ln_final``), a 1-query pooler gives the contrastive
  embedding and an ``n_queries`` pooler the captioning tokens. ``pooler="cascade"``: the 1-query
  pooler reads the captioning tokens instead.
- Text (``coca_text``): causal unimodal layers over ``[tokens, CLS]``; the CLS's final state, after
  ``ln_final`` and a projection, is the text embedding, and the token states (without a final norm)
  feed the decoder.
- Decoder (``multimodal_decoder``): per layer a causal self-attention block and a cross-attention
  block (attention from the text to the LayerNorm'd image tokens, then an MLP), then ``ln_final`` and
  the vocabulary projection (caption logits).

Outputs for the losses: ``image_embed``, ``text_embed`` (L2-normalised), ``logit_scale`` for the
contrastive loss, and ``caption_logits`` [B, L-1, V] / ``caption_labels`` (``text[:, 1:]``) for
``caption_ce``. The generation contract (``decode``, ``generation_context``, ``decode_logits``,
``max_decode_length``) makes ``vlfm.models.decoding.generate`` work on it.

The text tower's padding mask follows open_clip 3.3.0: pads (``pad_id``) are masked as keys, and with
``legacy_cls_mask`` (open_clip's default, ``correct_cls_mask=False``, which its released CoCa
weights were trained with) that key mask is shifted one place to the right (key 0 always visible,
key ``j`` visible when token ``j-1`` is not a pad), so the CLS does not see itself when the text is
padded. With ``legacy_cls_mask=False`` the pads are masked and the CLS sees every real token and
itself. ``decode_logits`` (generation, scoring) runs the text layers causally without the pad mask:
for every token preceded by real tokens only (each token whose next-token prediction counts) the
result is the same, and the cached and uncached passes agree.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlfm.models import layers
from vlfm.models.dual_encoder import l2_normalize
from vlfm.models.pooling import AttentionalPooler
from vlfm.models.registry import MODELS
from vlfm.models.tower_base import TransformerTower, encoder_module
from vlfm.models.towers import TOWERS, build_tower

POOLERS = ("open_clip", "parallel", "cascade")


@TOWERS.register("coca_text")
class CocaText(TransformerTower):
    """CoCa's unimodal text tower: ``ids [B, L]`` -> ``{"pooled" [B, W] (CLS after ln_final),
    "tokens" [B, L, W] (no final norm)}``; ``embed_for_decoding`` runs the same layers without the CLS.

    The position table has ``max_len + 1`` rows: the CLS takes the position after the last token.
    """

    vocab_size: int = 49408
    max_len: int = 76
    width: int = 512
    num_heads: int = 8
    mlp_dim: int = 2048
    ln_eps: float = 1e-5
    init_std: float | None = 0.02
    pad_id: int = 0
    legacy_cls_mask: bool = True
    decode: bool = False

    def setup(self):
        if self.collect_hidden or self.attention_layers:
            raise ValueError("the CoCa text tower collects no hidden states or attention probabilities")
        dtype, pdtype = self.dtypes
        self.token_embed = layers.TokenEmbed(self.vocab_size, self.width, dtype=dtype, param_dtype=pdtype)
        self.pos_embed = layers.PosEmbed(self.max_len + 1, self.width, init_std=0.01, param_dtype=pdtype)
        self.cls = self.param("cls", layers.logical(nn.initializers.normal(0.01), ("embed",)), (self.width,), pdtype)
        self.encoder = encoder_module(self, norm="pre", causal=True, decode=self.decode)
        self.ln_final = layers.layer_norm(self.ln_eps, dtype, pdtype)

    def _check(self, ids: jax.Array) -> None:
        if ids.shape[1] > self.max_len:
            raise ValueError(f"text length {ids.shape[1]} exceeds the CoCa text tower's max_len {self.max_len}")

    def _key_mask(self, ids: jax.Array) -> jax.Array:
        """Visible keys ``[B, L + 1]`` of ``[tokens, CLS]`` (see the module docstring for the legacy shift)."""
        real = ids != self.pad_id
        ones = jnp.ones((ids.shape[0], 1), bool)
        return jnp.concatenate([ones, real] if self.legacy_cls_mask else [real, ones], axis=1)

    def __call__(self, ids: jax.Array, *, train: bool = False) -> dict:
        self._check(ids)
        dtype = self.dtypes[0]
        b, n = ids.shape
        x = self.token_embed(ids)
        x = jnp.concatenate([x, jnp.broadcast_to(self.cls.astype(dtype), (b, 1, self.width))], axis=1)
        x = x + self.pos_embed()[: n + 1].astype(dtype)[None]
        x = nn.with_logical_constraint(x, layers.EMBED_AXES)
        x = self.encoder(x, key_mask=self._key_mask(ids), train=train)
        return {"pooled": self.ln_final(x[:, -1]), "tokens": x[:, :-1]}

    def embed_for_decoding(self, ids: jax.Array, positions: jax.Array | None = None, *,
                           train: bool = False) -> jax.Array:
        """Token states ``[B, L, W]`` for the decoder, without the CLS: a causal pass with no pad mask,
        so the cached and the uncached pass agree. At every token that follows only real tokens (each
        one whose next-token prediction is scored) this equals ``__call__``'s tokens. With ``decode=True``
        the tokens are the next ones at ``positions`` and the layers read and extend their KV cache."""
        dtype = self.dtypes[0]
        if positions is None:
            self._check(ids)
            positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        x = self.token_embed(ids) + jnp.take(self.pos_embed(), positions, axis=0).astype(dtype)
        x = nn.with_logical_constraint(x, layers.EMBED_AXES)
        return self.encoder(x, train=train)


class CrossAttentionBlock(nn.Module):
    """open_clip's cross-attention residual block: ``x += attn(ln1(x), ln_kv(context))``, ``x += mlp(ln2(x))``.

    With ``decode`` the context's keys/values are projected once, at the call that sizes the cache.
    """

    num_heads: int
    mlp_dim: int
    ln_eps: float = 1e-5
    act: str = "gelu"
    qkv_bias: bool = True
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    implementation: str = "xla"
    init_std: float | None = None
    decode: bool = False
    deterministic: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, drop_path_rate: jax.Array | float = 0.0) -> jax.Array:
        det = self.deterministic
        ln = functools.partial(layers.layer_norm, self.ln_eps, self.dtype, self.param_dtype)
        dropout = nn.Dropout(self.dropout_rate)

        def branch(h):
            return layers.drop_path(self, dropout(h, deterministic=det), drop_path_rate, det)

        attn = layers.Attention(self.num_heads, qkv_bias=self.qkv_bias, dropout_rate=self.attn_dropout_rate,
                                implementation=self.implementation, init_std=self.init_std, decode=self.decode,
                                dtype=self.dtype, param_dtype=self.param_dtype, name="attn")
        x = x + branch(attn(ln(name="ln1")(x), ln(name="ln_kv")(context), deterministic=det))
        mlp = layers.Mlp(self.mlp_dim, self.act, self.dropout_rate, self.init_std, self.dtype, self.param_dtype,
                         name="mlp")
        x = x + branch(mlp(ln(name="ln2")(x), deterministic=det))
        return nn.with_logical_constraint(x.astype(self.dtype), layers.EMBED_AXES)


class MultimodalLayer(nn.Module):
    """One decoder layer as a stack layer: a causal pre-LN ``TransformerBlock`` (``self_block``), then a
    ``CrossAttentionBlock`` (``cross_block``) reading ``broadcast["context"]``."""

    num_heads: int
    mlp_dim: int
    ln_eps: float = 1e-5
    act: str = "gelu"
    qkv_bias: bool = True
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    implementation: str = "xla"
    init_std: float | None = None
    decode: bool = False
    return_attention: bool = False
    deterministic: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, drop_path_rate, xs, broadcast):
        if xs is not None:
            raise ValueError("a multimodal decoder layer takes no per-layer inputs (xs)")
        if self.return_attention:
            raise ValueError("the multimodal decoder does not return attention probabilities")
        common = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, ln_eps=self.ln_eps, act=self.act,
                      qkv_bias=self.qkv_bias, dropout_rate=self.dropout_rate, attn_dropout_rate=self.attn_dropout_rate,
                      implementation=self.implementation, init_std=self.init_std, decode=self.decode,
                      deterministic=self.deterministic, dtype=self.dtype, param_dtype=self.param_dtype)
        x = layers.TransformerBlock(norm="pre", causal=True, **common, name="self_block")(x, drop_path_rate)
        x = CrossAttentionBlock(**common, name="cross_block")(x, broadcast["context"], drop_path_rate)
        return x, {}


@TOWERS.register("multimodal_decoder")
class MultimodalDecoder(nn.Module):
    """Text token states ``[B, L, W]`` + image tokens ``[B, N, E]`` -> caption logits ``[B, L, vocab]``
    (float32). Its width is its input's. ``max_len`` is the longest token sequence it accepts (open_clip's
    ``context_length``)."""

    vocab_size: int = 49408
    max_len: int = 76
    depth: int = 12
    num_heads: int = 8
    mlp_dim: int = 2048
    ln_eps: float = 1e-5
    act: str = "gelu"
    qkv_bias: bool = True
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    init_std: float | None = 0.02
    scan: bool = True
    remat: str = "none"
    attention: str = "xla"
    decode: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def dtypes(self) -> tuple[jnp.dtype, jnp.dtype]:
        return jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, *, train: bool = False) -> jax.Array:
        dtype, pdtype = self.dtypes
        if not self.decode and x.shape[1] > self.max_len:
            raise ValueError(f"text length {x.shape[1]} exceeds the multimodal decoder's max_len {self.max_len}")
        block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, ln_eps=self.ln_eps, act=self.act,
                     qkv_bias=self.qkv_bias, dropout_rate=self.dropout_rate, attn_dropout_rate=self.attn_dropout_rate,
                     implementation=self.attention, init_std=self.init_std, decode=self.decode, dtype=dtype,
                     param_dtype=pdtype)
        segment = layers.Segment(self.depth, block, layer=MultimodalLayer, name="layer")
        x, _ = layers.run_segments(self, (segment,), x.astype(dtype), None, {"context": context.astype(dtype)},
                                   drop_path_rate=self.drop_path_rate, scan=self.scan, remat=self.remat,
                                   train=train)
        x = layers.layer_norm(self.ln_eps, dtype, pdtype, name="ln_final")(x)
        logits = layers.Proj((self.vocab_size,), ("embed", "vocab"), use_bias=False, init_std=x.shape[-1] ** -0.5,
                             dtype=dtype, param_dtype=pdtype, name="head")(x)
        return logits.astype(jnp.float32)


@MODELS.register("coca")
class CoCa(nn.Module):
    """``batch["image"] [B, H, W, 3], batch["text"] [B, L]`` -> contrastive embeddings and caption logits.

    ``image`` is a ``vit`` tower config (CoCa sets its ``pool`` and ``final_norm``), ``text`` a
    ``coca_text`` and ``decoder`` a ``multimodal_decoder`` config; the decoder's width is the text
    width and it attends to image tokens of width ``embed_dim``. ``pooler``: ``open_clip``,
    ``parallel`` (the paper's) or ``cascade`` (see the module docstring); ``n_queries`` and
    ``pooler_heads`` size the captioning pooler.
    """

    image: Any
    text: Any
    decoder: Any
    embed_dim: int = 512
    pooler: str = "open_clip"
    n_queries: int = 256
    pooler_heads: int = 8
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)
    decode: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"

    PREDICT = {
        "encode_image": lambda m, b: m.encode_image(b["image"]),
        "encode_text": lambda m, b: m.encode_text(b["text"]),
    }

    def setup(self):
        if self.pooler not in POOLERS:
            raise ValueError(f"unknown CoCa pooler {self.pooler!r}; valid: {', '.join(POOLERS)}")
        fixed = sorted({"pool", "final_norm"} & set(self.image))
        if fixed:
            raise ValueError(f"CoCa sets the image tower's {fixed} itself (from `pooler`); remove them from the "
                             "image config")
        dtype, pdtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
        self.image_tower = build_tower(self.image, pool="none", final_norm=self.pooler != "open_clip")
        self.text_tower = build_tower(self.text, decode=self.decode)
        self.text_decoder = build_tower(self.decoder, decode=self.decode)
        impl = self.image.get("attention", "xla")
        pool = functools.partial(AttentionalPooler, self.embed_dim, self.pooler_heads, implementation=impl,
                                 dtype=dtype, param_dtype=pdtype)
        self.attn_pool = pool(n_queries=self.n_queries)
        if self.pooler == "open_clip":
            self.ln_post = layers.layer_norm(1e-5, dtype, pdtype)
        else:
            self.attn_pool_contrastive = pool(n_queries=1)
        proj = functools.partial(layers.Proj, (self.embed_dim,), ("embed", "proj"), use_bias=False, dtype=dtype,
                                 param_dtype=pdtype)
        self.image_proj = proj(init_std=self.embed_dim ** -0.5)
        self.text_proj = proj(init_std=self.text.get("width", 512) ** -0.5)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.logit_scale_init), (), jnp.float32)

    @property
    def max_decode_length(self) -> int:
        """The most positions (BOS included) the text tower and the decoder take."""
        return min(int(self.text.get("max_len", 76)), int(self.decoder.get("max_len", 76)))

    def _image(self, images: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        """(unnormalised contrastive embedding [B, E], captioning image tokens [B, N, E])."""
        x = self.image_tower(images, train=train)["tokens"]
        if self.pooler == "open_clip":
            pooled = self.ln_post(self.attn_pool(x))
            latent, tokens = pooled[:, 0], pooled[:, 1:]
        else:
            tokens = self.attn_pool(x)
            latent = self.attn_pool_contrastive(tokens if self.pooler == "cascade" else x)[:, 0]
        return self.image_proj(latent), tokens

    def encode_image(self, images: jax.Array, train: bool = False) -> jax.Array:
        return l2_normalize(self._image(images, train)[0])

    def encode_text(self, ids: jax.Array, train: bool = False) -> jax.Array:
        return l2_normalize(self.text_proj(self.text_tower(ids, train=train)["pooled"]))

    def generation_context(self, batch: dict, *, train: bool = False) -> jax.Array:
        """The captioning image tokens ``[B, N, E]`` the decoder attends to."""
        return self._image(batch["image"], train)[1]

    def decode_logits(self, tokens: jax.Array, context: jax.Array, *, positions: jax.Array | None = None,
                      train: bool = False) -> jax.Array:
        """Caption logits ``[B, L, V]`` float32 for ``tokens`` (a causal pass, or the next tokens at
        ``positions`` with ``decode=True``), reading the image tokens ``context``."""
        x = self.text_tower.embed_for_decoding(tokens, positions, train=train)
        return self.text_decoder(x, context, train=train)

    def __call__(self, batch: dict, *, train: bool = False) -> dict:
        text = batch["text"]
        image_latent, image_tokens = self._image(batch["image"], train)
        text_out = self.text_tower(text, train=train)
        return {
            "image_embed": l2_normalize(image_latent),
            "text_embed": l2_normalize(self.text_proj(text_out["pooled"])),
            "logit_scale": jnp.exp(jnp.minimum(self.logit_scale, self.max_logit_scale)),
            "caption_logits": self.text_decoder(text_out["tokens"][:, :-1], image_tokens, train=train),
            "caption_labels": text[:, 1:],
        }
