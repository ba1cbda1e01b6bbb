"""Uni-Perceiver (Zhu et al. 2022): one modality-agnostic encoder for every input and every target, and
every task as retrieval against a target set.

Each sequence the encoder sees is ``[SPE] + prompts + image patches + text tokens`` (any of the last
two may be absent): a learned ``[SPE]`` token, the prompt tokens (``num_prompts``, prompt tuning),
patches from the image tokenizer (a strided projection, learned positions) and words from the text
tokenizer (a word table, learned positions), each token with its modality's type embedding
(``[SPE]``/prompt, image, text). The encoder is pre-LN with layer scale (``layer_scale``, 1e-3 as in the
reference); its output at a feature position goes through the output projection (LayerNorm, then a
linear map) and is L2-normalised. Inputs and targets alike are encoded this way, by the same
parameters, and a task scores an input against its target set by cosine similarity times the
learnable temperature of its task family (``exp(logit_scale/<family>)``, each initialised to
``log(1/0.07)``):

- ``classify``: an image's ``[SPE]`` feature against the class-name texts' ``[SPE]`` features
  (``class_text`` / ``class_mask``, the tokenised names, a task constant); the target is
  ``batch[label_key]``;
- ``mlm``: each masked word's feature (text alone) against the vocabulary: every word id encoded as the
  one-word text ``[SPE] word``, its ``[SPE]`` feature; the targets are ``batch["mlm_targets"]``;
- ``caption``: image and caption in one sequence, the caption attending causally (prefix LM with the
  image as the prefix); the feature of word ``t`` retrieves word ``t + 1`` among the vocabulary;
- ``retrieve``: image and caption encoded separately (``[SPE]`` features); their contrast against the
  batch (and the momentum queue) is ``multi_positive_contrastive``, which reads ``image_embed``,
  ``text_embed`` and ``logit_scale``.

``classify``, ``mlm`` and ``caption`` return ``query`` (normalised features), ``candidates`` (the
normalised target set), ``logit_scale`` (the family's temperature, exponentiated) and ``targets``
(index of the right candidate, negative where nothing is predicted), which the ``similarity_xent``
loss reads. A task picks its method with ``forward=dict(method=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlfm.models import layers
from vlfm.models.registry import MODELS
from vlfm.models.tower_base import TransformerTower, encoder_module

FAMILIES = ("classification", "mlm", "caption", "retrieval")
SPECIAL, IMAGE, TEXT = 0, 1, 2  # token types


def tokenize_names(tokenizer: Any, names: Sequence[str], max_len: int) -> dict[str, tuple]:
    """Class names as ``classify``'s constants: ``{"class_text", "class_mask"}`` as nested tuples (so a
    config holds them and ``config.json`` records them)."""
    tokens = tokenizer.encode_batch(list(names), max_len)
    return {"class_text": tuple(map(tuple, np.asarray(tokens["ids"]).tolist())),
            "class_mask": tuple(map(tuple, np.asarray(tokens["mask"]).astype(bool).tolist()))}


def _unit(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def _retrieved(out: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The best-scoring candidate per query and the target (``token_accuracy``'s ``predicted`` /
    ``labels``; negative labels: nothing to predict, give the evaluator ``pad_id=-1``)."""
    scores = jnp.einsum("...e,ne->...n", out["query"], out["candidates"])
    return {"predicted": jnp.argmax(scores, axis=-1).astype(jnp.int32), "labels": out["targets"]}


@MODELS.register("uniperceiver")
class UniPerceiver(TransformerTower):
    """``image_size`` / ``patch_size``: the image tokenizer; ``vocab_size`` / ``max_len``: the text
    tokenizer (``max_len`` positions); ``embed_dim``: the output projection's size (None: ``width``);
    ``num_prompts``: learnable prompt tokens after ``[SPE]`` in every sequence (``prompts``; 0: none);
    ``max_logit_scale``: the cap on every temperature (``log 100``, as CLIP)."""

    layer_scale: float | None = 1e-3
    image_size: int = 224
    patch_size: int = 16
    vocab_size: int = 49411
    max_len: int = 512
    embed_dim: int | None = None
    num_prompts: int = 0
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)

    @property
    def PREDICT(self) -> dict:  # noqa: N802  (the model contract's name)
        return {"encode_image": lambda m, b: m.encode_image(b), "encode_text": lambda m, b: m.encode_text(b),
                "next_word": lambda m, b: _retrieved(m.caption(b)), "masked_word": lambda m, b: _retrieved(m.mlm(b))}

    def setup(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"uniperceiver: image_size {self.image_size} is not a multiple of patch_size "
                             f"{self.patch_size}")
        dtype, pdtype = self.dtypes
        normal = lambda axes: layers.logical(nn.initializers.normal(0.02), axes)  # noqa: E731
        self.patches = layers.PatchEmbed(self.patch_size, self.width, init_std=self.init_std, dtype=dtype,
                                         param_dtype=pdtype)
        self.words = layers.TokenEmbed(self.vocab_size, self.width, dtype=dtype, param_dtype=pdtype)
        grid = (self.image_size // self.patch_size) ** 2
        self.image_pos = self.param("image_pos", normal(("pos", "embed")), (grid, self.width), pdtype)
        self.text_pos = self.param("text_pos", normal(("pos", "embed")), (self.max_len, self.width), pdtype)
        self.type_embed = self.param("type_embed", normal((None, "embed")), (3, self.width), pdtype)
        self.spe = self.param("spe", normal(("embed",)), (self.width,), pdtype)
        if self.num_prompts:
            self.prompts = self.param("prompts", normal((None, "embed")), (self.num_prompts, self.width), pdtype)
        self.encoder = encoder_module(self, norm="pre", name=None)
        self.out_norm = layers.layer_norm(self.ln_eps, dtype, pdtype)
        self.out_proj = layers.Proj((self.embed_dim or self.width,), ("embed", "proj"), init_std=self.init_std,
                                    dtype=dtype, param_dtype=pdtype)
        self.logit_scale = {f: self.param(f"logit_scale_{f}", nn.initializers.constant(self.logit_scale_init), (),
                                          jnp.float32) for f in FAMILIES}

    # ------------------------------------------------------------------------------------------------
    # Encoding

    def _sequence(self, batch_size: int, image: jax.Array | None = None, text: jax.Array | None = None,
                  text_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array, int]:
        """Tokens ``[B, T, D]``, the key mask ``[B, T]`` and the number of tokens before the text."""
        dtype = self.dtypes[0]
        if self.is_initializing():  # every task creates every parameter (prompt tuning loads all of them)
            if image is None:
                self.patches(jnp.zeros((1, self.image_size, self.image_size, 3), dtype))
            if text is None:
                self.words(jnp.zeros((1, 1), jnp.int32))
        head = [jnp.broadcast_to(self.spe + self.type_embed[SPECIAL], (batch_size, 1, self.width))]
        if self.num_prompts:
            head.append(jnp.broadcast_to(self.prompts + self.type_embed[SPECIAL],
                                         (batch_size, self.num_prompts, self.width)))
        parts = [p.astype(dtype) for p in head]
        if image is not None:
            tokens, _ = self.patches(image.astype(dtype))
            parts.append(tokens + (self.image_pos + self.type_embed[IMAGE]).astype(dtype))
        prefix = sum(p.shape[1] for p in parts)
        masks = [jnp.ones((batch_size, prefix), bool)]
        if text is not None:
            length = text.shape[1]
            if length > self.max_len:
                raise ValueError(f"uniperceiver: text of {length} tokens exceeds max_len {self.max_len}")
            parts.append(self.words(text) + (self.text_pos[:length] + self.type_embed[TEXT]).astype(dtype))
            masks.append(jnp.ones(text.shape, bool) if text_mask is None else text_mask.astype(bool))
        return jnp.concatenate(parts, axis=1), jnp.concatenate(masks, axis=1), prefix

    def _features(self, x: jax.Array, mask: layers.AttentionMask, train: bool) -> jax.Array:
        """Encoder, output projection and L2 normalisation, at every position (float32)."""
        x = nn.with_logical_constraint(x, layers.EMBED_AXES)
        x = self.encoder(x, mask=mask, train=train)
        return _unit(self.out_proj(self.out_norm(x)))

    def _encode(self, image=None, text=None, text_mask=None, *, train: bool = False) -> jax.Array:
        """The ``[SPE]`` feature of each sequence ``[B, E]``."""
        batch_size = (image if image is not None else text).shape[0]
        x, key_mask, _ = self._sequence(batch_size, image, text, text_mask)
        return self._features(x, layers.AttentionMask(key_mask=key_mask), train)[:, 0]

    def encode_image(self, batch: Mapping[str, Any], *, train: bool = False) -> jax.Array:
        return self._encode(image=batch["image"], train=train)

    def encode_text(self, batch: Mapping[str, Any], *, train: bool = False) -> jax.Array:
        return self._encode(text=batch["text"], text_mask=batch.get("text_mask"), train=train)

    def vocabulary(self, *, train: bool = False) -> jax.Array:
        """Every word's representation ``[vocab, E]``: the word id as the one-word text ``[SPE] word``."""
        ids = jnp.arange(self.vocab_size, dtype=jnp.int32)[:, None]
        return self._encode(text=ids, train=train)

    def _scale(self, family: str) -> jax.Array:
        return jnp.exp(jnp.minimum(self.logit_scale[family], self.max_logit_scale))

    # ------------------------------------------------------------------------------------------------
    # Tasks

    def __call__(self, batch: Mapping[str, Any], *, train: bool = False) -> dict:
        """Image and text embeddings of a pair (``retrieve``): the default method, so init and the
        retrieval evaluators see the whole model."""
        return self.retrieve(batch, train=train)

    def retrieve(self, batch: Mapping[str, Any], *, train: bool = False) -> dict:
        return {"image_embed": self.encode_image(batch, train=train), "text_embed": self.encode_text(batch, train=train),
                "logit_scale": self._scale("retrieval")}

    def classify(self, batch: Mapping[str, Any], *, train: bool = False, class_text: Sequence = (),
                 class_mask: Sequence = (), label_key: str = "label") -> dict:
        if not len(class_text):
            raise ValueError("uniperceiver classify needs the class names' tokens: forward.constants class_text and "
                             "class_mask (vlfm.models.uniperceiver.tokenize_names)")
        if label_key not in batch:
            raise KeyError(f"uniperceiver classify: label_key {label_key!r} is not in the batch (keys: {sorted(batch)})")
        names = self._encode(text=jnp.asarray(class_text, jnp.int32), text_mask=jnp.asarray(class_mask, bool),
                             train=train)
        return {"query": self.encode_image(batch, train=train), "candidates": names,
                "logit_scale": self._scale("classification"), "targets": batch[label_key].astype(jnp.int32)}

    def mlm(self, batch: Mapping[str, Any], *, train: bool = False) -> dict:
        text, text_mask = batch["text"], batch.get("text_mask")
        x, key_mask, prefix = self._sequence(text.shape[0], text=text, text_mask=text_mask)
        feats = self._features(x, layers.AttentionMask(key_mask=key_mask), train)[:, prefix:]
        return {"query": feats, "candidates": self.vocabulary(train=train), "logit_scale": self._scale("mlm"),
                "targets": batch["mlm_targets"].astype(jnp.int32)}

    def caption(self, batch: Mapping[str, Any], *, train: bool = False) -> dict:
        image, text = batch["image"], batch["text"]
        text_mask = batch.get("text_mask")
        text_mask = jnp.ones(text.shape, bool) if text_mask is None else text_mask.astype(bool)
        x, key_mask, prefix = self._sequence(text.shape[0], image, text, text_mask)
        mask = layers.AttentionMask(key_mask=key_mask, prefix_lengths=jnp.full((text.shape[0],), prefix, jnp.int32))
        feats = self._features(x, mask, train)[:, prefix:-1]  # word t's feature predicts word t + 1
        targets = jnp.where(text_mask[:, 1:], text[:, 1:], -1).astype(jnp.int32)
        return {"query": feats, "candidates": self.vocabulary(train=train), "logit_scale": self._scale("caption"),
                "targets": targets}
