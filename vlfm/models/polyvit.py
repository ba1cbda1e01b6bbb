"""PolyViT (Likhosherstov et al. 2022): one transformer co-trained on image, video and audio
classification. Each modality has its own tokenizer (patches, tubelets, spectrogram patches: the ViT,
``video_vit`` and ``spectrogram_vit`` towers' embeddings, each with its own positions and class
token), optionally its own first ``modality_layers`` layers; the rest of the encoder and its final
norm are shared, and every task has its own zero-initialised linear head on the class token.

The task decides the head: tasks run with ``forward=dict(pass_task=True)`` (the train step passes the
task name), and evaluators read ``PREDICT["logits/<task>"]`` (the ``classification`` evaluator's
``predict`` option). The modality is the batch key a tokenizer is named by (``image``, ``video``,
``audio``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlfm.models import layers
from vlfm.models.registry import MODELS
from vlfm.models.tower_base import TransformerTower, encoder_module
from vlfm.models.towers import build_tower

ENCODER_FIELDS = ("width", "num_heads", "mlp_dim", "ln_eps", "act", "qkv_bias", "dropout_rate", "attn_dropout_rate",
                  "drop_path_rate", "init_std", "scan", "remat", "attention", "dtype", "param_dtype")


class _SharedEncoder(TransformerTower):
    """The shared layers and final norm, as a tower so the layer stack is built like every other."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        dtype, pdtype = self.dtypes
        x = encoder_module(self, norm="pre")(x, train=train)
        return layers.layer_norm(self.ln_eps, dtype, pdtype, name="ln_final")(x)


@MODELS.register("polyvit")
class PolyViT(TransformerTower):
    """``tokenizers``: input key -> tower config (``vit``, ``video_vit`` or ``spectrogram_vit`` with its
    input fields: ``patch_size``, ``tubelet_size``, strides...; the encoder's sizes come from this model).
    ``heads``: task -> number of classes. ``depth`` counts every layer an input passes through:
    ``modality_layers`` of its own, then ``depth - modality_layers`` shared."""

    tokenizers: Mapping[str, Any] = None  # type: ignore[assignment]
    heads: Mapping[str, int] = None  # type: ignore[assignment]
    modality_layers: int = 0

    @property
    def PREDICT(self) -> dict:  # noqa: N802  (the model contract's name)
        return {f"logits/{task}": (lambda m, b, task=task: m(b, task=task)["logits"]) for task in self.heads}

    @nn.compact
    def __call__(self, batch: Mapping[str, Any], *, train: bool = False, task: str | None = None) -> dict:
        if not self.tokenizers or not self.heads:
            raise ValueError("polyvit needs tokenizers (input key -> tower config) and heads (task -> classes)")
        if not 0 <= self.modality_layers <= self.depth:
            raise ValueError(f"modality_layers {self.modality_layers} must be within [0, depth={self.depth}]")
        if task not in self.heads:
            raise KeyError(f"polyvit has no head for task {task!r}; heads: {', '.join(self.heads)} (run its tasks "
                           "with forward=dict(pass_task=True))")
        present = [k for k in self.tokenizers if k in batch]
        if len(present) != 1:
            raise ValueError(f"a polyvit batch carries exactly one of {', '.join(self.tokenizers)}; "
                             f"this one has {present or 'none'}")
        key = present[0]
        cfg = dict(self.tokenizers[key])
        clash = sorted(set(cfg) & set(ENCODER_FIELDS + ("depth",)))
        if clash:
            raise ValueError(f"polyvit tokenizers.{key} sets {clash}: the encoder's settings belong to the model")
        shared = {f: getattr(self, f) for f in ENCODER_FIELDS}
        own = dict(shared, depth=self.modality_layers, final_norm=False, pool="none",
                   scan=self.scan and self.modality_layers > 0)  # no layers: no (empty) scanned stack either
        tower = build_tower(dict(cfg, **own), name=f"{key}_tokenizer")
        out = _SharedEncoder(**shared, depth=self.depth - self.modality_layers, name="shared")(
            tower(batch[key], train=train)["tokens"], train=train)
        pooled = out[:, 0]
        dtype, pdtype = self.dtypes
        logits = layers.Proj((self.heads[task],), ("embed", "classes"), zero_init=True, dtype=dtype,
                             param_dtype=pdtype, name=f"head_{task}")(pooled).astype(jnp.float32)
        return {"tokens": out, "pooled": pooled, "logits": logits}
