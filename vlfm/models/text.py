"""Text towers: the CLIP-style causal text transformer and the BERT encoder (with MLM head)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from vlfm.models import heads, layers
from vlfm.models.tower_base import TransformerTower, run_encoder
from vlfm.models.towers import TOWERS


def pool_tokens(tokens: jax.Array, ids: jax.Array, mask: jax.Array | None, how: str, eos_id: int | None) -> jax.Array:
    """Picks one vector per sequence.

    ``eos``: the first ``eos_id`` token (HF CLIP); ``argmax``: the largest id, which is the end token in
    OpenAI's vocabulary (open_clip); ``first``: token 0; ``last``: the last real token; ``mean``:
    mean over real tokens.
    """
    b = tokens.shape[0]
    rows = jnp.arange(b)
    if how == "eos":
        if eos_id is None:
            raise ValueError("pool='eos' needs eos_id")
        return tokens[rows, jnp.argmax(ids == eos_id, axis=-1)]
    if how == "argmax":
        return tokens[rows, jnp.argmax(ids, axis=-1)]
    if how == "first":
        return tokens[:, 0]
    if how == "last":
        lengths = jnp.full((b,), ids.shape[1]) if mask is None else mask.sum(-1)
        return tokens[rows, jnp.maximum(lengths - 1, 0)]
    if how == "mean":
        m = jnp.ones(ids.shape, tokens.dtype) if mask is None else mask.astype(tokens.dtype)
        return (tokens * m[..., None]).sum(1) / jnp.maximum(m.sum(1, keepdims=True), 1.0)
    raise ValueError(f"unknown text pool {how!r}; valid: eos, argmax, first, last, mean")


def bert_embeddings(module: nn.Module, ids: jax.Array, type_ids: jax.Array | None, *,
                    train: bool) -> tuple[jax.Array, layers.TokenEmbed]:
    """BERT's input embeddings (word + position + token type, LayerNorm, dropout), created in ``module``.

    ``module`` supplies the fields ``vocab_size, width, max_len, type_vocab_size, pos_offset, ln_eps,
    dropout_rate, init_std`` and ``dtypes``; its parameters are ``token_embed``, ``pos_embed``,
    ``type_embed`` and ``ln_embed``. ``pos_offset`` shifts the positions (RoBERTa starts at 2).
    Returns the embeddings and the word-embedding module (for a tied MLM decoder).
    """
    dtype, pdtype = module.dtypes
    if ids.shape[1] + module.pos_offset > module.max_len:
        raise ValueError(f"text length {ids.shape[1]} (+ position offset {module.pos_offset}) exceeds max_len "
                         f"{module.max_len}")
    std = module.init_std if module.init_std is not None else 0.02
    embed = layers.TokenEmbed(module.vocab_size, module.width, init_std=std, dtype=dtype, param_dtype=pdtype,
                              name="token_embed")
    x = embed(ids)
    pos = layers.PosEmbed(module.max_len, module.width, std, param_dtype=pdtype, name="pos_embed")()
    x = x + pos[module.pos_offset: module.pos_offset + ids.shape[1]].astype(dtype)[None]
    if module.type_vocab_size:
        types = layers.PosEmbed(module.type_vocab_size, module.width, std, axis_name="types", param_dtype=pdtype,
                                name="type_embed")()
        type_ids = jnp.zeros_like(ids) if type_ids is None else type_ids
        x = x + jnp.take(types, type_ids, axis=0).astype(dtype)
    x = layers.layer_norm(module.ln_eps, dtype, pdtype, name="ln_embed")(x)
    x = nn.Dropout(module.dropout_rate)(x, deterministic=not train)
    return nn.with_logical_constraint(x, layers.EMBED_AXES), embed


@TOWERS.register("text_transformer")
class TextTransformer(TransformerTower):
    """Token ids ``[B, L]`` -> ``{"tokens", "pooled"}``; pre-LN, causal by default (CLIP text tower)."""

    vocab_size: int = 49408
    max_len: int = 77
    width: int = 512
    num_heads: int = 8
    mlp_dim: int = 2048
    causal: bool = True
    pool: str = "eos"
    eos_id: int | None = None
    ln_eps: float = 1e-5
    init_std: float | None = 0.02

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array | None = None, *, train: bool = False) -> dict:
        dtype, pdtype = self.dtypes
        if ids.shape[1] > self.max_len:
            raise ValueError(f"text length {ids.shape[1]} exceeds max_len {self.max_len}")
        x = layers.TokenEmbed(self.vocab_size, self.width, dtype=dtype, param_dtype=pdtype, name="token_embed")(ids)
        pos = layers.PosEmbed(self.max_len, self.width, init_std=0.01, param_dtype=pdtype, name="pos_embed")()
        x = x + pos[: ids.shape[1]].astype(dtype)[None]
        x = nn.with_logical_constraint(x, layers.EMBED_AXES)
        # A causal model needs no key padding: padding sits after the pooled token.
        kv_lengths = None if (self.causal or mask is None) else mask.sum(-1).astype(jnp.int32)
        out, outputs = run_encoder(self, x, norm="pre", causal=self.causal, kv_lengths=kv_lengths, train=train)
        out = layers.layer_norm(self.ln_eps, dtype, pdtype, name="ln_final")(out)
        outputs["tokens"] = out
        outputs["pooled"] = pool_tokens(out, ids, mask, self.pool, self.eos_id)
        return outputs


@TOWERS.register("bert")
class Bert(TransformerTower):
    """BERT encoder (post-LN): ``ids, mask, type_ids`` -> ``{"tokens", "pooled", "mlm_logits"?}``.

    ``pooler`` is BERT's tanh(dense(CLS)); ``mlm_head`` adds the transform (dense, GELU, LN) and a
    decoder, tied to the word embeddings like HF ``BertForMaskedLM`` or untied (ViLT, VLMo, BridgeTower).
    ``pos_offset`` is where positions start in the table (0 for BERT, 2 for RoBERTa, whose first two
    rows are unused).
    """

    vocab_size: int = 30522
    max_len: int = 512
    type_vocab_size: int = 2
    pos_offset: int = 0
    ln_eps: float = 1e-12
    dropout_rate: float = 0.1
    attn_dropout_rate: float = 0.1
    init_std: float | None = 0.02
    pooler: bool = True
    mlm_head: bool = False
    tie_mlm_decoder: bool = True

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array | None = None, type_ids: jax.Array | None = None, *,
                 train: bool = False) -> dict:
        dtype, pdtype = self.dtypes
        x, embed = bert_embeddings(self, ids, type_ids, train=train)
        # Padding is taken as lengths (right padding, as every vlfm tokenizer produces).
        kv_lengths = None if mask is None else mask.sum(-1).astype(jnp.int32)
        out, outputs = run_encoder(self, x, norm="post", kv_lengths=kv_lengths, train=train)
        outputs["tokens"] = out
        outputs["pooled"] = out[:, 0]
        if self.pooler:
            outputs["pooled"] = heads.tanh_pooler(out, "pooler", init_std=self.init_std, dtype=dtype,
                                                  param_dtype=pdtype)
        if self.mlm_head:
            outputs["mlm_logits"] = heads.mlm_logits(
                self, out, vocab_size=self.vocab_size, act=self.act, ln_eps=self.ln_eps, init_std=self.init_std,
                tied_embed=embed if self.tie_mlm_decoder else None, dtype=dtype, param_dtype=pdtype)
        return outputs
