"""Import of HF video and audio transformers: ``vivit`` (``VivitModel``: tubelets, joint space-time
attention) -> ``image_classifier`` with a ``video_vit`` tower, and ``audio-spectrogram-transformer``
(``ASTModel``) -> ``image_classifier`` with a ``spectrogram_vit`` tower. Both encoders are ViT layers,
read through the ViT tables; only the input embeddings differ."""

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


@HF_LOADERS.register("vivit")
@HF_LOADERS.register("audio-spectrogram-transformer")
def load_hf_video(path: str | os.PathLike, scan: bool = True) -> tuple[dict, dict]:
    """Reads an HF ViViT or AST checkpoint directory into ``(vlfm model config, params)``."""
    with open(os.path.join(path, CONFIG_NAME)) as f:
        hf_config = json.load(f)
    tensors = {k: v for k, v in _read_tensors(path).items() if not k.endswith(BUFFER_SUFFIXES)}
    prefix = next((p for p in ("vivit.", "audio_spectrogram_transformer.") if any(k.startswith(p) for k in tensors)),
                  "")
    tensors = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in tensors.items()}
    model, batch = hf_video_config(hf_config, set(tensors), scan=scan)
    top = VIDEO_TOP if hf_config["model_type"] == "vivit" else AUDIO_TOP
    rows = _expand(top, "", "image_tower/") + _layers(VIT_LAYER, hf_config["num_hidden_layers"], "encoder.layer.{i}",
                                                      "image_tower/")
    if hf_config["model_type"] == "vivit":  # torch Conv3d [D, C, t, p, p] -> [t, p, p, C, D]
        tensors[TUBELET_KERNEL] = np.asarray(tensors[TUBELET_KERNEL]).transpose(2, 3, 4, 1, 0)
        rows.append((TUBELET_KERNEL, "image_tower/tubelet_embed/kernel", "copy"))
    flat = map_tensors(tensors, rows, _param_shapes(model, batch),
                       f"checkpoint {path} does not match the {hf_config['model_type']} layout")
    if scan:
        flat = _stack_layers(flat)
    return model, flax.traverse_util.unflatten_dict(flat, sep="/")
