"""Import of HF video and audio transformers: ``vivit`` (``VivitModel``: tubelets, joint space-time
attention) -> ``image_classifier`` with a ``video_vit`` tower, ``audio-spectrogram-transformer``
(``ASTModel``) -> ``image_classifier`` with a ``spectrogram_vit`` tower, and ``timesformer``
(``TimesformerModel`` / ``TimesformerForVideoClassification``: per-frame patches, factorised positions,
divided or joint space-time attention) -> ``image_classifier`` with a ``video_vit`` tower
(``attention_type="divided"``, ``pos_embedding="space_time"``). ViViT's and AST's encoders are ViT
layers, read through the ViT tables; TimeSformer's add a temporal attention and its fused ``qkv``
projections are split into query, key and value.

vlfm's video tokens are in (time, space) order, HF TimeSformer's in (space, time) order: the same
tokens, permuted (``last_hidden_state[:, 1:]`` reshaped to ``[B, N, T, D]`` and transposed).

HF's ``space_only`` TimeSformer (no temporal table, each frame alone) returns every frame's tokens,
``[B * T, 1 + N, D]`` after the final norm, and its classifier one prediction per frame; vlfm's
``space_only`` tower returns the same patch tokens in one ``[B, 1 + T * N, D]`` sequence and one class
token, the frames' class-token outputs averaged before the final norm (TimeSformer's own
``space_only`` model), so the imported classifier predicts once per clip."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vlfm.convert.hf import (BUFFER_SUFFIXES, CONFIG_NAME, HF_LOADERS, VIT_LAYER, _act, _expand, _layers,
                             _read_tensors, _stack_layers, map_tensors, square_size)
from vlfm.core.tree import strip_boxes
from vlfm.models import build_model

VIDEO_TOP = (
    ("embeddings.cls_token", "cls", "batched"),
    ("embeddings.position_embeddings", "pos_embed/embedding", "batched"),
    ("embeddings.patch_embeddings.projection.bias", "tubelet_embed/bias", "tensor"),
    ("layernorm", "ln_final", "norm"),
    ("pooler.dense", "pooler", "linear"),
)
AUDIO_TOP = (
    ("embeddings.cls_token", "cls", "batched"),
    ("embeddings.distillation_token", "dist", "batched"),
    ("embeddings.position_embeddings", "pos_embed/embedding", "batched"),
    ("embeddings.patch_embeddings.projection", "patch_embed", "conv"),
    ("layernorm", "ln_final", "norm"),
)
TUBELET_KERNEL = "embeddings.patch_embeddings.projection.weight"
TIMESFORMER_TOP = (
    ("embeddings.cls_token", "cls", "batched"),
    ("embeddings.position_embeddings", "pos_embed/embedding", "batched"),
    ("embeddings.time_embeddings", "time_embed/embedding", "batched"),
    ("embeddings.patch_embeddings.projection.bias", "tubelet_embed/bias", "tensor"),
    ("layernorm", "ln_final", "norm"),
    ("classifier", "head", "linear"),  # TimesformerForVideoClassification, outside the "timesformer." prefix
)
TIMESFORMER_LAYER = VIT_LAYER + (
    ("temporal_attention.attention.query", "temporal_attn/query", "linear"),
    ("temporal_attention.attention.key", "temporal_attn/key", "linear"),
    ("temporal_attention.attention.value", "temporal_attn/value", "linear"),
    ("temporal_attention.output.dense", "temporal_attn/out", "linear_out"),
    ("temporal_layernorm", "temporal_ln", "norm"),
    ("temporal_dense", "temporal_dense", "linear"),
)
TIMESFORMER_ATTENTION = {"divided_space_time": "divided", "joint_space_time": "joint", "space_only": "space_only"}


def _encoder_fields(c: Mapping[str, Any]) -> dict:
    return dict(width=c["hidden_size"], depth=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                mlp_dim=c["intermediate_size"], ln_eps=c.get("layer_norm_eps", 1e-12), act=_act(c.get("hidden_act", "gelu")),
                qkv_bias=c.get("qkv_bias", True), dropout_rate=c.get("hidden_dropout_prob", 0.0),
                attn_dropout_rate=c.get("attention_probs_dropout_prob", 0.0), init_std=c.get("initializer_range", 0.02))


def hf_video_config(hf_config: Mapping[str, Any], keys: set[str], scan: bool = True) -> tuple[dict, dict]:
    """(vlfm model config, a one-example dummy batch of the checkpoint's input shape)."""
    kind = hf_config["model_type"]
    if kind == "vivit":
        if hf_config.get("num_channels", 3) != 3:
            raise ValueError("vivit: only 3-channel videos are supported")
        frames, height, width = (int(v) for v in hf_config["tubelet_size"])
        if height != width:
            raise ValueError(f"vivit: non-square tubelets {hf_config['tubelet_size']} are not supported")
        size = square_size("vivit", hf_config, "image_size")
        tower = dict(name="video_vit", image_size=size, patch_size=height, tubelet_size=frames, pool="cls",
                     pooler="dense_tanh" if "pooler.dense.weight" in keys else "none", **_encoder_fields(hf_config))
        batch = {"video": jnp.zeros((1, hf_config["num_frames"], size, size, 3), jnp.float32)}
        return dict(name="image_classifier", input_key="video", image=dict(tower, scan=scan)), batch
    if kind == "timesformer":
        if hf_config.get("num_channels", 3) != 3:
            raise ValueError("timesformer: only 3-channel videos are supported")
        attention = hf_config.get("attention_type", "divided_space_time")
        if attention not in TIMESFORMER_ATTENTION:
            raise ValueError(f"timesformer: attention_type {attention!r} is not supported; supported: "
                             f"{', '.join(TIMESFORMER_ATTENTION)}")
        size, frames = square_size("timesformer", hf_config, "image_size"), int(hf_config["num_frames"])
        tower = dict(name="video_vit", image_size=size, patch_size=square_size("timesformer", hf_config, "patch_size"),
                     tubelet_size=1, attention_type=TIMESFORMER_ATTENTION[attention],
                     pos_embedding="space" if attention == "space_only" else "space_time",
                     num_frames=frames, pool="cls", **_encoder_fields(hf_config))
        if "classifier.weight" in keys:  # TimesformerForVideoClassification: a head on the class token
            tower["num_classes"] = len(hf_config["id2label"])
        batch = {"video": jnp.zeros((1, frames, size, size, 3), jnp.float32)}
        return dict(name="image_classifier", input_key="video", image=dict(tower, scan=scan)), batch
    if kind == "audio-spectrogram-transformer":
        tower = dict(name="spectrogram_vit", patch_size=hf_config.get("patch_size", 16),
                     frequency_stride=hf_config["frequency_stride"], time_stride=hf_config["time_stride"],
                     **_encoder_fields(hf_config))
        batch = {"audio": jnp.zeros((1, hf_config["max_length"], hf_config["num_mel_bins"]), jnp.float32)}
        return dict(name="image_classifier", input_key="audio", image=dict(tower, scan=scan)), batch
    raise ValueError(f"not a video or audio model_type: {kind!r}")


def _param_shapes(model_config: Mapping[str, Any], batch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    cfg = dict(model_config, image=dict(model_config["image"], scan=False))
    model = build_model(cfg)
    params = strip_boxes(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dict(batch)))["params"])
    return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}


def _split_qkv(tensors: dict[str, np.ndarray]) -> None:
    """TimeSformer's fused ``qkv`` projections (``[3 * D, D]``, rows query, key, value) -> ``query``,
    ``key``, ``value`` tensors, in place, so the ViT layer table reads them."""
    for name in [k for k in tensors if k.endswith((".attention.qkv.weight", ".attention.qkv.bias"))]:
        fused = np.asarray(tensors.pop(name))
        stem, leaf = name.rsplit(".qkv.", 1)
        for part, value in zip(("query", "key", "value"), np.split(fused, 3, axis=0)):
            tensors[f"{stem}.{part}.{leaf}"] = value


@HF_LOADERS.register("vivit")
@HF_LOADERS.register("audio-spectrogram-transformer")
@HF_LOADERS.register("timesformer")
def load_hf_video(path: str | os.PathLike, scan: bool = True) -> tuple[dict, dict]:
    """Reads an HF ViViT, AST or TimeSformer checkpoint directory into ``(vlfm model config, params)``."""
    with open(os.path.join(path, CONFIG_NAME)) as f:
        hf_config = json.load(f)
    tensors = {k: v for k, v in _read_tensors(path).items() if not k.endswith(BUFFER_SUFFIXES)}
    prefix = next((p for p in ("vivit.", "audio_spectrogram_transformer.", "timesformer.")
                   if any(k.startswith(p) for k in tensors)), "")
    tensors = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in tensors.items()}
    kind = hf_config["model_type"]
    model, batch = hf_video_config(hf_config, set(tensors), scan=scan)
    top, layer = {"vivit": (VIDEO_TOP, VIT_LAYER), "timesformer": (TIMESFORMER_TOP, TIMESFORMER_LAYER)}.get(
        kind, (AUDIO_TOP, VIT_LAYER))
    if kind == "timesformer":
        _split_qkv(tensors)
    rows = _expand(top, "", "image_tower/") + _layers(layer, hf_config["num_hidden_layers"], "encoder.layer.{i}",
                                                      "image_tower/")
    if kind == "vivit":  # torch Conv3d [D, C, t, p, p] -> [t, p, p, C, D]
        tensors[TUBELET_KERNEL] = np.asarray(tensors[TUBELET_KERNEL]).transpose(2, 3, 4, 1, 0)
    elif kind == "timesformer":  # torch Conv2d [D, C, p, p] per frame -> a one-frame tubelet [1, p, p, C, D]
        tensors[TUBELET_KERNEL] = np.asarray(tensors[TUBELET_KERNEL]).transpose(2, 3, 1, 0)[None]
    if kind in ("vivit", "timesformer"):
        rows.append((TUBELET_KERNEL, "image_tower/tubelet_embed/kernel", "copy"))
    flat = map_tensors(tensors, rows, _param_shapes(model, batch),
                       f"checkpoint {path} does not match the {hf_config['model_type']} layout")
    if scan:
        flat = _stack_layers(flat)
    return model, flax.traverse_util.unflatten_dict(flat, sep="/")
