"""OmniVL (Wang et al., NeurIPS 2022): one visual encoder for images and videos, a text encoder and
BLIP-style vision-grounded decoders, trained with UniVLC on image/video-text and image/video-label data.

- Visual encoder: a ``video_vit`` tower with divided space-time attention (TimeSformer); an image
  ``[B, H, W, 3]`` is a static clip of one tubelet (the tower reads the first row of its temporal table), so image
  and video batches share every parameter. The model reads ``batch["video"]`` when the batch has one,
  else ``batch["image"]``.
- Text encoder: a ``bert`` tower (or any text tower); the contrastive embeddings are the normalised
  projections of both towers' pooled vectors (``embed_dim``: the class tokens, BERT without its pooler)
  with a learned temperature.
- Vision-grounded alignment decoder: ``align_depth`` post-LN layers over the text encoder's tokens,
  each with cross-attention to the visual tokens, and a 2-way ITM head on the first token. ITM pairs are
  ALBEF's ``3B`` (positives, a hard-negative visual input per text, a hard-negative text per visual
  input), drawn from the contrastive similarities with every column of the same label excluded
  (``batch[label_key]``: two prompts of one class are not a negative pair; label ``-1`` is a pair's own).
- Vision-grounded generation decoder: a token and position embedding of its own, then the
  ``multimodal_decoder`` of the generative models (``vlfm.models.coca``: causal self-attention, then
  cross-attention to the visual tokens, per layer), trained by teacher-forced captioning
  (``caption_logits`` / ``caption_labels`` for ``caption_ce``). It implements the generation contract
  of ``vlfm.models.decoding`` (``generation_context``, ``decode_logits``, ``max_decode_length``).

UniVLC is ``multi_positive_contrastive`` with ``label_key`` (every row of the same label a positive,
label examples entering as prompt-filled class names through the ``label_text`` data wrapper) over the
batch and, with ``config.momentum``, a queue of momentum embeddings, so one loss spans image and video
batches alike. In training ``__call__`` gives every output; at evaluation (``train=False``: the
momentum model, the evaluators) only the contrastive ones, the rest having methods of their own
(``itm_score``, generation). Not in this model: BLIP's weight sharing between the text encoder and the
two decoders (here each has its own layers).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlfm.losses import itm as itm_lib
from vlfm.models import layers
from vlfm.models.dual_encoder import l2_normalize
from vlfm.models.registry import MODELS
from vlfm.models.towers import build_tower


def _visual(batch: dict) -> jax.Array:
    """The visual input of a batch: its ``video`` ``[B, T, H, W, 3]``, else its ``image`` ``[B, H, W, 3]``."""
    if "video" in batch:
        return batch["video"]
    if "image" in batch:
        return batch["image"]
    raise KeyError(f"omnivl reads batch['video'] or batch['image']; the batch has {sorted(batch)}")


@MODELS.register("omnivl")
class OmniVL(nn.Module):
    """``batch["image"]`` or ``batch["video"]``, ``batch["text"]`` (+ ``text_mask``, ``label``) -> contrastive
    embeddings, ITM logits and caption logits (see the module docstring).

    ``image``: a ``video_vit`` tower config (``attention_type="divided"``); ``text``: a ``bert`` (or other text)
    tower config;
    ``decoder``: a ``multimodal_decoder`` config (its width is the text width). The alignment decoder takes
    the text tower's width and ``align_depth`` / ``align_heads`` / ``align_mlp_dim``.
    """

    image: Any
    text: Any
    decoder: Any
    embed_dim: int = 256
    align_depth: int = 12
    align_heads: int = 12
    align_mlp_dim: int = 3072
    label_key: str | None = "label"
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)
    init_std: float | None = 0.02
    decode: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"

    PREDICT = {
        "encode_image": lambda m, b: m.encode_visual(_visual(b)),
        "encode_text": lambda m, b: m.encode_text(b["text"], b.get("text_mask")),
        "itm_score": lambda m, b: m.itm_score(b),
    }

    @property
    def dtypes(self) -> tuple[jnp.dtype, jnp.dtype]:
        return jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)

    def setup(self):
        if self.image.get("name") != "video_vit":
            raise ValueError(f"omnivl's visual encoder is a 'video_vit' tower, got {self.image.get('name')!r}")
        dtype, pdtype = self.dtypes
        self.visual_tower = build_tower(self.image)
        self.text_tower = build_tower(self.text)
        width = int(self.text.get("width", 768))
        proj = lambda name: layers.Proj((self.embed_dim,), ("embed", "proj"), init_std=self.init_std,  # noqa: E731
                                        dtype=dtype, param_dtype=pdtype, name=name)
        self.visual_proj, self.text_proj = proj("visual_proj"), proj("text_proj")
        self.logit_scale = self.param("logit_scale", layers.logical(nn.initializers.constant(self.logit_scale_init),
                                                                    ()), (), jnp.float32)
        block = dict(num_heads=self.align_heads, mlp_dim=self.align_mlp_dim, norm="post",
                     ln_eps=float(self.text.get("ln_eps", 1e-12)), cross_attention=True, init_std=self.init_std,
                     implementation=self.text.get("attention", "xla"), dtype=dtype, param_dtype=pdtype)
        self.align_decoder = layers.Encoder(self.align_depth, block, scan=bool(self.text.get("scan", True)),
                                            remat=str(self.text.get("remat", "auto")))
        self.itm_head = layers.Proj((2,), ("embed", "classes"), init_std=self.init_std, dtype=dtype,
                                    param_dtype=pdtype)
        vocab, max_len = int(self.decoder.get("vocab_size", 30522)), int(self.decoder.get("max_len", 76))
        self.caption_token_embed = layers.TokenEmbed(vocab, width, dtype=dtype, param_dtype=pdtype)
        self.caption_pos_embed = layers.PosEmbed(max_len, width, init_std=0.01, param_dtype=pdtype)
        self.text_decoder = build_tower(self.decoder, decode=self.decode)

    # -- encoders ------------------------------------------------------------------------------------

    def _visual_tokens(self, visual: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        """(unnormalised contrastive embedding [B, E], visual tokens [B, N, D] for the decoders)."""
        out = self.visual_tower(visual, train=train)
        return self.visual_proj(out["pooled"]), out["tokens"]

    def _text(self, ids: jax.Array, mask: jax.Array | None, train: bool) -> tuple[jax.Array, jax.Array]:
        """(unnormalised contrastive embedding [B, E] of the tower's pooled vector, text tokens [B, L, W])."""
        out = self.text_tower(ids, mask, train=train)
        return self.text_proj(out["pooled"]), out["tokens"]

    def encode_visual(self, visual: jax.Array, train: bool = False) -> jax.Array:
        """Normalised contrastive embedding of images ``[B, H, W, 3]`` or videos ``[B, T, H, W, 3]``."""
        return l2_normalize(self._visual_tokens(visual, train)[0])

    def encode_text(self, ids: jax.Array, mask: jax.Array | None = None, train: bool = False) -> jax.Array:
        return l2_normalize(self._text(ids, mask, train)[0])

    # -- alignment decoder ---------------------------------------------------------------------------

    def align(self, text_tokens: jax.Array, mask: jax.Array | None, visual_tokens: jax.Array,
              train: bool = False) -> jax.Array:
        """ITM logits ``[B, 2]`` (float32) of (text, visual) rows."""
        key_mask = None if mask is None else mask.astype(bool)
        x = self.align_decoder(text_tokens, key_mask=key_mask, context=visual_tokens, train=train)
        return self.itm_head(x[:, 0]).astype(jnp.float32)

    def itm_score(self, batch: dict) -> jax.Array:
        """Match score ``logit(match) - logit(no match)`` of each (visual, text) row, for re-ranking."""
        visual = self._visual_tokens(_visual(batch), False)[1]
        logits = self.align(self._text(batch["text"], batch.get("text_mask"), False)[1], batch.get("text_mask"),
                            visual)
        return logits[:, 1] - logits[:, 0]

    # -- generation decoder (vlfm.models.decoding's contract) ------------------------------------------

    @property
    def max_decode_length(self) -> int:
        return int(self.decoder.get("max_len", 76))

    def generation_context(self, batch: dict, *, train: bool = False) -> jax.Array:
        """The visual tokens ``[B, N, D]`` the generation decoder attends to."""
        return self._visual_tokens(_visual(batch), train)[1]

    def decode_logits(self, tokens: jax.Array, context: jax.Array, *, positions: jax.Array | None = None,
                      train: bool = False) -> jax.Array:
        """Caption logits ``[B, L, V]`` float32 of ``tokens`` (a causal pass, or the next tokens at
        ``positions`` with ``decode=True``) reading the visual tokens ``context``."""
        dtype = self.dtypes[0]
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x = self.caption_token_embed(tokens) + jnp.take(self.caption_pos_embed(), positions, axis=0).astype(dtype)
        return self.text_decoder(nn.with_logical_constraint(x, layers.EMBED_AXES), context, train=train)

    # -- training ------------------------------------------------------------------------------------

    def __call__(self, batch: dict, *, train: bool = False) -> dict:
        text, mask = batch["text"], batch.get("text_mask")
        visual_latent, visual_tokens = self._visual_tokens(_visual(batch), train)
        text_latent, text_tokens = self._text(text, mask, train)
        out = {"image_embed": l2_normalize(visual_latent),
               "text_embed": l2_normalize(text_latent),
               "logit_scale": jnp.exp(jnp.minimum(self.logit_scale, self.max_logit_scale))}
        if not train:
            return out
        # ITM on ALBEF's 3B pairs, negatives drawn from the contrastive similarities (no gradient).
        labels = None
        if self.label_key is not None and self.label_key in batch:
            labels = batch[self.label_key].astype(jnp.int32).reshape(-1)
        if "itm_neg_image" in batch:  # tests inject the draws
            neg_visual, neg_text = batch["itm_neg_image"], batch["itm_neg_text"]
        else:
            neg_visual, neg_text = itm_lib.hard_negatives(self.make_rng("sampling"), out["image_embed"],
                                                          out["text_embed"], out["logit_scale"], labels=labels)
        text_idx, visual_idx, itm_labels = itm_lib.hard_negative_pairs(neg_visual.astype(jnp.int32),
                                                                       neg_text.astype(jnp.int32))
        pair_mask = None if mask is None else jnp.take(mask, text_idx, axis=0)
        out["itm_logits"] = self.align(jnp.take(text_tokens, text_idx, axis=0), pair_mask,
                                       jnp.take(visual_tokens, visual_idx, axis=0), train)
        out["itm_labels"] = itm_labels
        # Captioning, teacher-forced: tokens up to L-1 predict tokens 2..L.
        out["caption_logits"] = self.decode_logits(text[:, :-1], visual_tokens, train=train)
        out["caption_labels"] = text[:, 1:]
        return out
