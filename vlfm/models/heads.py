"""Heads shared by the fusion models (and BERT): tanh pooler, MLM head, MLP classifiers.

The MLM head and the pooler are functions that create their modules in the caller's scope, so BERT
keeps its flat, HF-like parameter names (``mlm_transform``, ``mlm_ln``, ``mlm_decoder``, ``mlm_bias``,
``pooler``); the fusion models, built in ``setup``, use the head through ``MlmHead``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlfm.models import layers

Dtype = layers.Dtype


def mlm_logits(module: nn.Module, h: jax.Array, *, vocab_size: int, act: str, ln_eps: float, init_std: float | None,
               tied_embed: layers.TokenEmbed | None = None, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32) -> jax.Array:
    """BERT's MLM head (dense, activation, LayerNorm, decoder + bias), called from ``module``'s compact
    method so that its parameters live in ``module``.

    ``tied_embed`` ties the decoder to a word-embedding table (HF ``BertForMaskedLM``); without it
    the decoder is its own parameter (ViLT, BridgeTower and VLMo train an untied head).
    """
    width = h.shape[-1]
    h = layers.Proj((width,), ("embed", "proj"), init_std=init_std, dtype=dtype, param_dtype=param_dtype,
                    name="mlm_transform")(h)
    h = layers.activation(act)(h)
    h = layers.layer_norm(ln_eps, dtype, param_dtype, name="mlm_ln")(h)
    if tied_embed is not None:
        logits = tied_embed.attend(h)
    else:
        logits = layers.Proj((vocab_size,), ("embed", "vocab"), use_bias=False, init_std=init_std, dtype=dtype,
                             param_dtype=param_dtype, name="mlm_decoder")(h)
    bias = module.param("mlm_bias", layers.logical(nn.initializers.zeros, ("vocab",)), (vocab_size,), param_dtype)
    return (logits + bias.astype(logits.dtype)).astype(jnp.float32)


def tanh_pooler(x: jax.Array, name: str, *, init_std: float | None = None, dtype: Dtype = jnp.float32,
                param_dtype: Dtype = jnp.float32) -> jax.Array:
    """``tanh(dense(x[:, 0]))``: the first token's pooled vector (BERT, ViLT, METER, BridgeTower)."""
    return jnp.tanh(layers.Proj((x.shape[-1],), ("embed", "proj"), init_std=init_std, dtype=dtype,
                                param_dtype=param_dtype, name=name)(x[:, 0]))


class ClassifierHead(nn.Module):
    """``dense -> LayerNorm -> GELU -> dense``: the VQA / NLVR2 / visual-entailment classifier of ViLT,
    METER and BridgeTower (HF ``ViltForQuestionAnswering.classifier``)."""

    hidden_dim: int
    num_classes: int
    ln_eps: float = 1e-5  # torch's nn.LayerNorm default, which these heads use
    act: str = "gelu"
    init_std: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = layers.Proj((self.hidden_dim,), ("embed", "mlp"), init_std=self.init_std, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="fc1")(x)
        h = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="ln",
                         scale_init=layers.logical(nn.initializers.ones, ("mlp",)),
                         bias_init=layers.logical(nn.initializers.zeros, ("mlp",)))(h)
        h = layers.activation(self.act)(h)
        return layers.Proj((self.num_classes,), ("mlp", "classes"), init_std=self.init_std, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="fc2")(h).astype(jnp.float32)


class MlmHead(nn.Module):
    """The MLM head as a module (``mlm_logits`` with an untied decoder), for models built in ``setup``."""

    vocab_size: int
    act: str = "gelu"
    ln_eps: float = 1e-12
    init_std: float | None = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        return mlm_logits(self, h, vocab_size=self.vocab_size, act=self.act, ln_eps=self.ln_eps,
                          init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)


class InteractionHead(nn.Module):
    """A shallow interaction of two pooled vectors: ``[u; v; |u - v|; u * v]`` -> ``ClassifierHead``.

    The dual-encoder answer to a fusion model's classifier (DiDE, InferSent-style matching): the
    modalities are encoded apart and meet only here, so VQA / NLVR2 / visual entailment heads run on
    cached embeddings. ``pairs`` > 1 concatenates the features of several (u, v) pairs (NLVR2: each
    image with the sentence) before the classifier.
    """

    hidden_dim: int
    num_classes: int
    ln_eps: float = 1e-5
    act: str = "gelu"
    init_std: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pairs: list[tuple[jax.Array, jax.Array]]) -> jax.Array:
        feats = []
        for u, v in pairs:
            if u.shape != v.shape:
                raise ValueError(f"interaction needs vectors of one width, got {u.shape} and {v.shape}")
            feats += [u, v, jnp.abs(u - v), u * v]
        x = jnp.concatenate([f.astype(self.dtype) for f in feats], axis=-1)
        return ClassifierHead(self.hidden_dim, self.num_classes, self.ln_eps, self.act, self.init_std, self.dtype,
                              self.param_dtype, name="classifier")(x)
