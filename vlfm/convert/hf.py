"""Import and export of Hugging Face checkpoints: BERT, RoBERTa, ViT, CLIP, and import of MAE's ViT encoder.

A checkpoint directory is what ``save_pretrained`` writes: ``config.json`` plus ``model.safetensors``
(or a sharded ``model.safetensors.index.json``). Supported ``model_type`` values and the vlfm models
they become:

- ``bert`` (``BertModel``, or ``BertForMaskedLM`` with ``bert.``-prefixed keys) -> ``text_encoder``
  with a ``bert`` tower; ``roberta`` (``RobertaModel``, or ``RobertaForMaskedLM`` with ``roberta.`` keys)
  likewise, with positions from ``pad_token_id + 1`` (``pos_offset``);
- ``vit`` (``ViTModel``, or ``ViTForImageClassification`` with ``vit.`` keys) -> ``image_classifier``;
- ``vit_mae`` (``ViTMAEModel``, or ``ViTMAEForPreTraining`` with ``vit.`` keys) -> the same
  ``image_classifier`` with a ``vit`` tower, import only: MAE's encoder is a ViT without a pooler whose
  fixed sin-cos position table (``embeddings.position_embeddings``) becomes the learned table's initial
  value. The pixel decoder of ``ViTMAEForPreTraining`` (``decoder.*``) is not imported; ``load_hf``
  logs a warning naming how many tensors it leaves out. The tower sees every patch (``mask_ratio`` plays
  no part): its tokens are ``ViTMAEModel``'s ``last_hidden_state`` with ``mask_ratio=0`` and a ``noise``
  that keeps the patch order. This is how VLC (``configs/vlc_base.py``) starts from MAE weights;
- ``clip`` (``CLIPModel``) -> ``dual_encoder``; ``clip_text_model`` / ``clip_vision_model``
  (``CLIPTextModel`` / ``CLIPVisionModel``) -> ``text_encoder`` / ``image_classifier``.

Weights are mapped through small tables of ``(HF module, vlfm module, kind)``. The vlfm model's own
parameter tree decides which optional tensors (biases, pooler, heads) take part, and both sides are
checked: every vlfm parameter must be filled and every HF tensor used, so a layout mismatch fails
loudly instead of leaving freshly initialised weights behind.

The HF BERT attention mask may have holes; vlfm's BERT takes the number of real tokens per row, so
converted BERT models expect right-padded text (as every BERT tokenizer produces).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from vlfm.core.provenance import write_export_record
from vlfm.core.tree import strip_boxes
from vlfm.models import TOWERS, build_model
from vlfm.registry import Registry

__all__ = ["load_hf", "save_hf", "hf_to_vlfm_config", "vlfm_to_hf_config"]

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"

# Loaders of other HF model types, ``(path, scan) -> (model config, params)``, which load_hf dispatches to:
# vlfm.convert.hf_fusion registers ViLT and BridgeTower (importing vlfm.convert registers them all).
HF_LOADERS: Registry = Registry("HF model_type")
# Savers by model name (fusion models: vlfm.convert.hf_fusion), or by image tower name for an image_classifier
# (``swin``: vlfm.convert.hf_swin).
HF_SAVERS: Registry = Registry("vlfm model with an HF export")

# Non-parameter buffers that some checkpoints carry (e.g. the MiniLM file): never converted.
BUFFER_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")

LOAD_PREFIXES = {"bert": "bert.", "roberta": "roberta.", "vit": "vit.", "vit_mae": "vit.",
                 "clip_text_model": "text_model.", "clip_vision_model": "vision_model."}
# ViTMAEForPreTraining's pixel decoder: pretraining only, left out of the import (and logged).
MAE_DECODER_PREFIX = "decoder."

HF_TO_VLFM_ACT = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}
VLFM_TO_HF_ACT = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu",
                  "silu": "silu"}

# ----------------------------------------------------------------------------------------------------
# Tensor conversions. Each kind maps one HF tensor to one vlfm parameter (reshaped to the vlfm shape,
# which splits attention heads) and back.


def _to_vlfm(kind: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if kind in ("linear", "linear_out"):  # torch Linear [out, in] -> kernel [in..., out...]
        x = x.T
    elif kind == "conv":  # torch conv [out, in, kh, kw] -> HWIO
        x = x.transpose(2, 3, 1, 0)
    if x.size != math.prod(shape):
        raise ValueError(f"cannot reshape {x.shape} into {shape}")
    return x.reshape(shape)


def _to_hf(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "linear":  # [in, out...] -> [out, in]
        return x.reshape(x.shape[0], -1).T
    if kind == "linear_out":  # attention out [heads, head_dim, embed] -> [embed, heads*head_dim]
        return x.reshape(-1, x.shape[-1]).T
    if kind == "conv":
        return x.transpose(3, 2, 0, 1)
    if kind == "bias":  # [heads, head_dim] -> [heads*head_dim]
        return x.reshape(-1)
    if kind == "batched":  # HF ViT keeps a leading batch axis: cls [1, 1, D], positions [1, N, D]
        return x.reshape((1,) * (3 - x.ndim) + x.shape)
    if kind == "copy":
        return x
    raise ValueError(f"unknown conversion kind {kind!r}")


# Module kinds expand to tensor entries: (HF tensor suffix, vlfm param name, tensor kind).
_MODULE_KINDS = {
    "linear": ((".weight", "kernel", "linear"), (".bias", "bias", "bias")),
    "linear_out": ((".weight", "kernel", "linear_out"), (".bias", "bias", "copy")),
    "conv": ((".weight", "kernel", "conv"), (".bias", "bias", "copy")),
    "norm": ((".weight", "scale", "copy"), (".bias", "bias", "copy")),
    "embed": ((".weight", "embedding", "copy"),),
    "tensor": (("", None, "copy"),),
    "batched": (("", None, "batched"),),
}


def _expand(modules: Iterable[tuple[str, str, str]], hf_prefix: str, vlfm_prefix: str) -> list[tuple[str, str, str]]:
    """(HF module, vlfm module, module kind) rows -> (HF key, vlfm path, tensor kind) rows."""
    rows = []
    for hf, vl, kind in modules:
        for suffix, leaf, tensor_kind in _MODULE_KINDS[kind]:
            rows.append((hf_prefix + hf + suffix, vlfm_prefix + (vl if leaf is None else f"{vl}/{leaf}"),
                         tensor_kind))
    return rows


def _layers(table: Iterable[tuple[str, str, str]], depth: int, hf_layer: str, vlfm_prefix: str) -> list:
    """Per-layer rows for layers 0..depth-1 (vlfm in its unscanned ``encoder/layer_{i}`` naming)."""
    rows = []
    for i in range(depth):
        rows += _expand(table, hf_layer.format(i=i) + ".", f"{vlfm_prefix}encoder/layer_{i}/")
    return rows


BERT_LAYER = (
    ("attention.self.query", "attn/query", "linear"),
    ("attention.self.key", "attn/key", "linear"),
    ("attention.self.value", "attn/value", "linear"),
    ("attention.output.dense", "attn/out", "linear_out"),
    ("attention.output.LayerNorm", "ln1", "norm"),
    ("intermediate.dense", "mlp/fc1", "linear"),
    ("output.dense", "mlp/fc2", "linear"),
    ("output.LayerNorm", "ln2", "norm"),
)
BERT_TOP = (
    ("embeddings.word_embeddings", "token_embed", "embed"),
    ("embeddings.position_embeddings", "pos_embed", "embed"),
    ("embeddings.token_type_embeddings", "type_embed", "embed"),
    ("embeddings.LayerNorm", "ln_embed", "norm"),
    ("pooler.dense", "pooler", "linear"),
)
BERT_MLM = (  # BertForMaskedLM head, outside the "bert." prefix
    ("cls.predictions.transform.dense", "mlm_transform", "linear"),
    ("cls.predictions.transform.LayerNorm", "mlm_ln", "norm"),
    ("cls.predictions.bias", "mlm_bias", "tensor"),
    ("cls.predictions.decoder", "mlm_decoder", "linear"),  # only when untied
)
ROBERTA_MLM = (  # RobertaForMaskedLM head, outside the "roberta." prefix
    ("lm_head.dense", "mlm_transform", "linear"),
    ("lm_head.layer_norm", "mlm_ln", "norm"),
    ("lm_head.bias", "mlm_bias", "tensor"),
    ("lm_head.decoder", "mlm_decoder", "linear"),  # only when untied
)
# ViT in the Hub naming that save_pretrained writes (transformers 5 renames these only in memory).
VIT_LAYER = (
    ("attention.attention.query", "attn/query", "linear"),
    ("attention.attention.key", "attn/key", "linear"),
    ("attention.attention.value", "attn/value", "linear"),
    ("attention.output.dense", "attn/out", "linear_out"),
    ("layernorm_before", "ln1", "norm"),
    ("intermediate.dense", "mlp/fc1", "linear"),
    ("output.dense", "mlp/fc2", "linear"),
    ("layernorm_after", "ln2", "norm"),
)
VIT_TOP = (
    ("embeddings.cls_token", "cls", "batched"),
    ("embeddings.position_embeddings", "pos_embed/embedding", "batched"),
    ("embeddings.patch_embeddings.projection", "patch_embed/proj", "conv"),
    ("layernorm", "ln_final", "norm"),
    ("pooler.dense", "pooler", "linear"),
)
VIT_HEAD = (("classifier", "head", "linear"),)  # ViTForImageClassification, outside the "vit." prefix
CLIP_LAYER = (
    ("self_attn.q_proj", "attn/query", "linear"),
    ("self_attn.k_proj", "attn/key", "linear"),
    ("self_attn.v_proj", "attn/value", "linear"),
    ("self_attn.out_proj", "attn/out", "linear_out"),
    ("layer_norm1", "ln1", "norm"),
    ("mlp.fc1", "mlp/fc1", "linear"),
    ("mlp.fc2", "mlp/fc2", "linear"),
    ("layer_norm2", "ln2", "norm"),
)
CLIP_TEXT_TOP = (
    ("embeddings.token_embedding", "token_embed", "embed"),
    ("embeddings.position_embedding", "pos_embed", "embed"),
    ("final_layer_norm", "ln_final", "norm"),
)
CLIP_VISION_TOP = (
    ("embeddings.class_embedding", "cls", "tensor"),
    ("embeddings.patch_embedding", "patch_embed/proj", "conv"),
    ("embeddings.position_embedding", "pos_embed", "embed"),
    ("pre_layrnorm", "ln_pre", "norm"),  # sic: HF's spelling
    ("post_layernorm", "ln_final", "norm"),
)
CLIP_HEADS = (
    ("visual_projection", "image_proj", "linear"),
    ("text_projection", "text_proj", "linear"),
    ("logit_scale", "logit_scale", "tensor"),
)


def _bert_rows(depth: int, prefix: str, mlm_head: tuple = BERT_MLM) -> list:
    return (_expand(BERT_TOP, prefix, "text_tower/")
            + _layers(BERT_LAYER, depth, prefix + "encoder.layer.{i}", "text_tower/")
            + _expand(mlm_head, "", "text_tower/"))


def _vit_rows(depth: int, prefix: str) -> list:
    return (_expand(VIT_TOP, prefix, "image_tower/")
            + _layers(VIT_LAYER, depth, prefix + "encoder.layer.{i}", "image_tower/")
            + _expand(VIT_HEAD, "", "image_tower/"))


def _clip_text_rows(depth: int, prefix: str = "text_model.") -> list:
    return (_expand(CLIP_TEXT_TOP, prefix, "text_tower/")
            + _layers(CLIP_LAYER, depth, prefix + "encoder.layers.{i}", "text_tower/"))


def _clip_vision_rows(depth: int, prefix: str = "vision_model.") -> list:
    return (_expand(CLIP_VISION_TOP, prefix, "image_tower/")
            + _layers(CLIP_LAYER, depth, prefix + "encoder.layers.{i}", "image_tower/"))


def _rows(kind: str, model_config: Mapping[str, Any], prefix: str = "") -> list:
    if kind == "bert":
        return _bert_rows(model_config["text"]["depth"], prefix)
    if kind == "roberta":
        return _bert_rows(model_config["text"]["depth"], prefix, ROBERTA_MLM)
    if kind in ("vit", "vit_mae"):  # ViTMAE's encoder keys are ViT's, without a pooler
        return _vit_rows(model_config["image"]["depth"], prefix)
    if kind == "clip_text_model":
        return _clip_text_rows(model_config["text"]["depth"], prefix)
    if kind == "clip_vision_model":
        return _clip_vision_rows(model_config["image"]["depth"], prefix)
    if kind == "clip":
        return (_clip_text_rows(model_config["text"]["depth"]) + _clip_vision_rows(model_config["image"]["depth"])
                + _expand(CLIP_HEADS, "", ""))
    raise ValueError(f"unsupported checkpoint kind {kind!r}")


# ----------------------------------------------------------------------------------------------------
# Configs


def _act(hf_act: str) -> str:
    if hf_act not in HF_TO_VLFM_ACT:
        raise ValueError(f"unsupported HF activation {hf_act!r}; supported: {', '.join(HF_TO_VLFM_ACT)}")
    return HF_TO_VLFM_ACT[hf_act]


def _hf_act(act: str) -> str:
    if act not in VLFM_TO_HF_ACT:
        raise ValueError(f"activation {act!r} has no HF name; supported: {', '.join(VLFM_TO_HF_ACT)}")
    return VLFM_TO_HF_ACT[act]


def _bert_tower(c: Mapping[str, Any], keys: set[str], prefix: str, roberta: bool = False) -> dict:
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"only absolute position embeddings are supported, got {c['position_embedding_type']!r}")
    if c.get("is_decoder") or c.get("add_cross_attention"):
        raise ValueError("BERT decoders and cross-attention are not supported")
    tower = dict(name="bert", vocab_size=c["vocab_size"], max_len=c["max_position_embeddings"],
                 type_vocab_size=c.get("type_vocab_size", 2), width=c["hidden_size"], depth=c["num_hidden_layers"],
                 num_heads=c["num_attention_heads"], mlp_dim=c["intermediate_size"],
                 ln_eps=c.get("layer_norm_eps", 1e-12), act=_act(c.get("hidden_act", "gelu")),
                 dropout_rate=c.get("hidden_dropout_prob", 0.1),
                 attn_dropout_rate=c.get("attention_probs_dropout_prob", 0.1),
                 init_std=c.get("initializer_range", 0.02), pooler=f"{prefix}pooler.dense.weight" in keys)
    if roberta:  # positions count from pad_token_id + 1 (the rows before it are never used)
        tower["pos_offset"] = int(c.get("pad_token_id", 1)) + 1
    if any(k.startswith("lm_head." if roberta else "cls.predictions.") for k in keys):
        tower["mlm_head"] = True
        tower["tie_mlm_decoder"] = bool(c.get("tie_word_embeddings", True))
    return tower


def square_size(where: str, c: Mapping[str, Any], key: str) -> int:
    """``c[key]`` (an HF ``image_size`` / ``patch_size``: an int or a pair) as one int; vlfm's image towers
    take square images and patches only, so a non-square pair is refused by name."""
    value = c[key]
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{where}: non-square {key}={list(value)} is not supported (vlfm's image towers "
                             f"take square images and patches)")
        value = value[0]
    return int(value)


def _vit_tower(c: Mapping[str, Any], keys: set[str], prefix: str) -> dict:
    if c.get("num_channels", 3) != 3:
        raise ValueError(f"only 3-channel images are supported, got num_channels={c['num_channels']}")
    if c.get("pooler_output_size") not in (None, c["hidden_size"]) or c.get("pooler_act", "tanh") != "tanh":
        raise ValueError("only a tanh pooler of the hidden size is supported")
    tower = dict(name="vit", image_size=square_size("vit", c, "image_size"),
                 patch_size=square_size("vit", c, "patch_size"), width=c["hidden_size"],
                 depth=c["num_hidden_layers"], num_heads=c["num_attention_heads"], mlp_dim=c["intermediate_size"],
                 ln_eps=c.get("layer_norm_eps", 1e-12), act=_act(c.get("hidden_act", "gelu")),
                 qkv_bias=c.get("qkv_bias", True), dropout_rate=c.get("hidden_dropout_prob", 0.0),
                 attn_dropout_rate=c.get("attention_probs_dropout_prob", 0.0),
                 pooler="dense_tanh" if f"{prefix}pooler.dense.weight" in keys else "none")
    if "classifier.weight" in keys:
        if tower["pooler"] != "none":
            raise ValueError("a ViT with both a pooler and a classifier is not supported")
        tower["num_classes"] = len(c["id2label"]) if "id2label" in c else c["num_labels"]
    return tower


def _vit_mae_tower(c: Mapping[str, Any], keys: set[str], prefix: str) -> dict:
    """MAE's encoder as a vlfm ViT: HF ViT's layer layout, no pooler (MAE has none), the LayerNorm eps of
    the checkpoint's config (``layer_norm_eps``, 1e-12 in HF's ViTMAEConfig) and a learned position table
    started from MAE's fixed sin-cos one."""
    if f"{prefix}pooler.dense.weight" in keys or "classifier.weight" in keys:
        raise ValueError("a ViTMAE checkpoint has no pooler or classifier; found one, so this is not a ViTMAE layout")
    return _vit_tower(c, keys, prefix)


def _clip_text_tower(c: Mapping[str, Any]) -> dict:
    eos = c.get("eos_token_id", 49407)
    if not isinstance(eos, int):
        raise ValueError(f"CLIP text pooling needs a single eos_token_id, got {eos!r}")
    # HF CLIP pools the first eos token, except for eos_token_id == 2 (old configs): argmax of the ids.
    pool = dict(pool="argmax", eos_id=None) if eos == 2 else dict(pool="eos", eos_id=eos)
    return dict(name="text_transformer", vocab_size=c["vocab_size"], max_len=c["max_position_embeddings"],
                width=c["hidden_size"], depth=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                mlp_dim=c["intermediate_size"], causal=True, **pool, ln_eps=c.get("layer_norm_eps", 1e-5),
                act=_act(c.get("hidden_act", "quick_gelu")), dropout_rate=c.get("dropout", 0.0))


def _clip_vision_tower(c: Mapping[str, Any]) -> dict:
    if c.get("num_channels", 3) != 3:
        raise ValueError(f"only 3-channel images are supported, got num_channels={c['num_channels']}")
    return dict(name="vit", image_size=square_size("clip vision", c, "image_size"),
                patch_size=square_size("clip vision", c, "patch_size"), width=c["hidden_size"],
                depth=c["num_hidden_layers"], num_heads=c["num_attention_heads"], mlp_dim=c["intermediate_size"],
                pre_norm=True, patch_bias=False, pool="cls", final_norm=True, pooler="none",
                ln_eps=c.get("layer_norm_eps", 1e-5), act=_act(c.get("hidden_act", "quick_gelu")),
                dropout_rate=c.get("dropout", 0.0), attn_dropout_rate=c.get("attention_dropout", 0.0))


def _key_prefix(keys: set[str], kind: str) -> str:
    """The optional key prefix of ``kind`` (LOAD_PREFIXES) if this checkpoint uses it, else ""."""
    prefix = LOAD_PREFIXES.get(kind)
    return prefix if prefix and any(k.startswith(prefix) for k in keys) else ""


def hf_to_vlfm_config(hf_config: Mapping[str, Any], keys: Iterable[str] = (), scan: bool = True) -> dict:
    """The vlfm model config for an HF ``config.json`` (``keys``: the checkpoint's tensor names, which
    decide optional parts such as the pooler, the MLM head or a classifier)."""
    keys = set(keys)
    kind = hf_config.get("model_type")
    if kind in ("bert", "roberta"):
        model = dict(name="text_encoder",
                     text=_bert_tower(hf_config, keys, _key_prefix(keys, kind), roberta=kind == "roberta"))
    elif kind == "vit":
        model = dict(name="image_classifier", image=_vit_tower(hf_config, keys, _key_prefix(keys, "vit")))
    elif kind == "vit_mae":
        model = dict(name="image_classifier", image=_vit_mae_tower(hf_config, keys, _key_prefix(keys, "vit_mae")))
    elif kind == "clip_text_model":
        model = dict(name="text_encoder", text=_clip_text_tower(hf_config))
    elif kind == "clip_vision_model":
        model = dict(name="image_classifier", image=_clip_vision_tower(hf_config))
    elif kind == "clip":
        model = dict(name="dual_encoder", image=_clip_vision_tower(hf_config["vision_config"]),
                     text=_clip_text_tower(hf_config["text_config"]), embed_dim=hf_config.get("projection_dim", 512),
                     logit_scale_init=hf_config.get("logit_scale_init_value", 2.6592))
    else:
        raise ValueError(f"unsupported HF model_type {kind!r}; supported: bert, roberta, vit, vit_mae, clip, "
                         f"clip_text_model, clip_vision_model, {', '.join(HF_LOADERS.names())}")
    for tower in ("text", "image"):
        if tower in model:
            model[tower]["scan"] = scan
    return model


def _tower_fields(tower: Mapping[str, Any]) -> dict:
    """A tower config with every field filled in (defaults from the tower class)."""
    cls = TOWERS.get(tower["name"])
    fields = {f.name: f.default for f in dataclasses.fields(cls)
              if f.init and f.name not in ("parent", "name") and f.default is not dataclasses.MISSING}
    return {**fields, **tower}


def _require(where: str, fields: Mapping[str, Any], **expected: Any) -> None:
    bad = {k: fields[k] for k, v in expected.items() if fields[k] != v}
    if bad:
        raise ValueError(f"{where}: these settings have no HF equivalent: "
                         + ", ".join(f"{k}={bad[k]!r} (needs {expected[k]!r})" for k in bad))


def _hf_bert_config(t: Mapping[str, Any]) -> dict:
    """HF ``BertModel`` / ``BertForMaskedLM``, or RoBERTa's classes when positions start later."""
    roberta = t["pos_offset"] > 0
    family = "Roberta" if roberta else "Bert"
    if not t["type_vocab_size"]:
        raise ValueError(f"HF {family} needs token-type embeddings (type_vocab_size > 0)")
    if t["mlm_head"] and t["pooler"]:
        raise ValueError(f"HF {family}ForMaskedLM has no pooler: export a model with mlm_head and pooler=False")
    extra = dict(pad_token_id=t["pos_offset"] - 1, bos_token_id=0, eos_token_id=2) if roberta else dict(pad_token_id=0)
    return dict(model_type=family.lower(), architectures=[f"{family}ForMaskedLM" if t["mlm_head"] else f"{family}Model"],
                vocab_size=t["vocab_size"], hidden_size=t["width"], num_hidden_layers=t["depth"],
                num_attention_heads=t["num_heads"], intermediate_size=t["mlp_dim"], hidden_act=_hf_act(t["act"]),
                hidden_dropout_prob=t["dropout_rate"], attention_probs_dropout_prob=t["attn_dropout_rate"],
                max_position_embeddings=t["max_len"], type_vocab_size=t["type_vocab_size"],
                initializer_range=t["init_std"] if t["init_std"] is not None else 0.02, layer_norm_eps=t["ln_eps"],
                tie_word_embeddings=bool(t["tie_mlm_decoder"]) if t["mlm_head"] else True, **extra)


def _check_vit_common(where: str, t: Mapping[str, Any]) -> None:
    _require(where, t, pos_embedding="learned", class_token=True, pool="cls", final_norm=True, layer_scale=None)


def _hf_vit_config(t: Mapping[str, Any]) -> dict:
    _check_vit_common("vit", t)
    _require("vit", t, pre_norm=False, patch_bias=True)
    if t["num_classes"] and t["pooler"] != "none":
        raise ValueError("HF ViTForImageClassification has no pooler: export a classifier with pooler='none'")
    config = dict(model_type="vit", architectures=["ViTForImageClassification" if t["num_classes"] else "ViTModel"],
                  image_size=t["image_size"], patch_size=t["patch_size"], num_channels=3, hidden_size=t["width"],
                  num_hidden_layers=t["depth"], num_attention_heads=t["num_heads"], intermediate_size=t["mlp_dim"],
                  hidden_act=_hf_act(t["act"]), hidden_dropout_prob=t["dropout_rate"],
                  attention_probs_dropout_prob=t["attn_dropout_rate"], layer_norm_eps=t["ln_eps"],
                  qkv_bias=t["qkv_bias"], pooler_output_size=t["width"], pooler_act="tanh")
    if t["num_classes"]:
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(t["num_classes"])}
        config["label2id"] = {f"LABEL_{i}": i for i in range(t["num_classes"])}
    return config


def _hf_clip_text_config(t: Mapping[str, Any]) -> dict:
    _require("clip text", t, causal=True)
    if t["pool"] == "eos":
        eos = t["eos_id"]
        if eos == 2:
            raise ValueError("HF CLIP reads eos_token_id=2 as 'pool at the argmax id'; use pool='argmax' instead")
    elif t["pool"] == "argmax":
        eos = 2
    else:
        raise ValueError(f"HF CLIP pools at the eos token; text pool {t['pool']!r} has no equivalent")
    return dict(model_type="clip_text_model", vocab_size=t["vocab_size"], hidden_size=t["width"],
                intermediate_size=t["mlp_dim"], num_hidden_layers=t["depth"], num_attention_heads=t["num_heads"],
                max_position_embeddings=t["max_len"], hidden_act=_hf_act(t["act"]), layer_norm_eps=t["ln_eps"],
                dropout=t["dropout_rate"], attention_dropout=0.0, eos_token_id=eos,
                bos_token_id=_clip_bos_token_id(t["vocab_size"]))


# The OpenAI BPE vocabulary's <|startoftext|>, HF CLIPTextConfig's default bos_token_id.
CLIP_BOS_ID = 49406


def _clip_bos_token_id(vocab_size: int) -> int | None:
    """HF CLIP never reads bos_token_id in its forward pass, but left out of config.json it defaults to
    49406, which transformers flags on load as outside any smaller vocabulary. vlfm's text tower has no
    bos id of its own: the default is written only where the vocabulary holds it, otherwise none."""
    return CLIP_BOS_ID if vocab_size > CLIP_BOS_ID else None


def _hf_clip_vision_config(t: Mapping[str, Any]) -> dict:
    _check_vit_common("clip vision", t)
    _require("clip vision", t, pre_norm=True, patch_bias=False, qkv_bias=True, pooler="none", num_classes=0)
    return dict(model_type="clip_vision_model", image_size=t["image_size"], patch_size=t["patch_size"],
                num_channels=3, hidden_size=t["width"], intermediate_size=t["mlp_dim"],
                num_hidden_layers=t["depth"], num_attention_heads=t["num_heads"], hidden_act=_hf_act(t["act"]),
                layer_norm_eps=t["ln_eps"], dropout=t["dropout_rate"], attention_dropout=t["attn_dropout_rate"])


def _checkpoint_kind(model_config: Mapping[str, Any]) -> str:
    """Which HF checkpoint family a vlfm model config exports to."""
    name = model_config.get("name")
    text = model_config.get("text", {}).get("name")
    image = model_config.get("image", {}).get("name")
    if name == "text_encoder" and text == "bert":
        return "roberta" if _tower_fields(model_config["text"])["pos_offset"] > 0 else "bert"
    if name == "text_encoder" and text == "text_transformer":
        return "clip_text_model"
    if name == "image_classifier" and image == "vit":
        return "clip_vision_model" if _tower_fields(model_config["image"])["pre_norm"] else "vit"
    if name == "dual_encoder" and (image, text) == ("vit", "text_transformer"):
        return "clip"
    raise ValueError(f"no HF export for model {name!r} with towers image={image!r} text={text!r}")


def vlfm_to_hf_config(model_config: Mapping[str, Any]) -> dict:
    """The HF ``config.json`` content for a vlfm model config (raises on settings HF cannot express)."""
    model_config = _plain(model_config)
    kind = _checkpoint_kind(model_config)
    if kind in ("bert", "roberta"):
        config = _hf_bert_config(_tower_fields(model_config["text"]))
    elif kind == "vit":
        config = _hf_vit_config(_tower_fields(model_config["image"]))
    elif kind == "clip_text_model":
        config = dict(_hf_clip_text_config(_tower_fields(model_config["text"])), architectures=["CLIPTextModel"])
    elif kind == "clip_vision_model":
        config = dict(_hf_clip_vision_config(_tower_fields(model_config["image"])),
                      architectures=["CLIPVisionModel"])
    else:
        if model_config.get("logit_bias_init") is not None:
            raise ValueError("HF CLIPModel has no logit bias (SigLIP-style dual encoders cannot be exported)")
        config = dict(model_type="clip", architectures=["CLIPModel"],
                      text_config=_hf_clip_text_config(_tower_fields(model_config["text"])),
                      vision_config=_hf_clip_vision_config(_tower_fields(model_config["image"])),
                      projection_dim=model_config.get("embed_dim", 512),
                      logit_scale_init_value=model_config.get("logit_scale_init", math.log(1 / 0.07)))
    config["dtype"] = "float32"
    return config


# ----------------------------------------------------------------------------------------------------
# Parameter trees


def _plain(config: Any) -> Any:
    """Nested mappings (e.g. ml_collections.ConfigDict) -> plain dicts."""
    if isinstance(config, Mapping) or hasattr(config, "to_dict"):
        items = config.to_dict().items() if hasattr(config, "to_dict") else config.items()
        return {k: _plain(v) for k, v in items}
    return config


def _dummy_batch(model_config: Mapping[str, Any]) -> dict:
    batch = {}
    if "image" in model_config:
        size = _tower_fields(model_config["image"])["image_size"]
        batch["image"] = jnp.zeros((1, size, size, 3), jnp.float32)
    if "text" in model_config:
        batch["text"] = jnp.zeros((1, 1), jnp.int32)
    return batch


def _abstract_params(model_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the model, flat and in the unscanned (``layer_{i}``) naming."""
    cfg = _plain(model_config)
    for tower in ("text", "image"):
        if tower in cfg:
            cfg[tower] = dict(cfg[tower], scan=False)
    model = build_model(cfg)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), _dummy_batch(cfg)))
    params = strip_boxes(variables["params"])  # no sharding constraints: this may run under a mesh
    return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}


_LAYER_RE = re.compile(r"^(.*)/encoder/layer_(\d+)/(.*)$")
_STACK_RE = re.compile(r"^(.*)/encoder/layers/(.*)$")


def _stack_layers(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``.../encoder/layer_{i}/x`` -> ``.../encoder/layers/x`` with a leading layer axis (scan layout)."""
    out, groups = {}, {}
    for path, value in flat.items():
        m = _LAYER_RE.match(path)
        if m:
            groups.setdefault(f"{m[1]}/encoder/layers/{m[3]}", {})[int(m[2])] = value
        else:
            out[path] = value
    for path, by_layer in groups.items():
        out[path] = np.stack([by_layer[i] for i in range(len(by_layer))])
    return out


def _unstack_layers(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of ``_stack_layers``; also for an encoder at the top level (ViLT's ``encoder/layers``)."""
    out = {}
    for path, value in flat.items():
        m = _STACK_RE.match(f"/{path}" if path.startswith("encoder/") else path)
        if m:
            for i in range(value.shape[0]):
                out[f"{m[1]}/encoder/layer_{i}/{m[2]}".lstrip("/")] = value[i]
        else:
            out[path] = value
    return out


def _list(names: Iterable[str], limit: int = 20) -> str:
    names = sorted(names)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ----------------------------------------------------------------------------------------------------
# Files


def _read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    single = os.path.join(path, WEIGHTS_NAME)
    if os.path.exists(single):
        return safetensors.numpy.load_file(single)
    index = os.path.join(path, INDEX_NAME)
    if not os.path.exists(index):
        raise FileNotFoundError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {path} (only safetensors are supported)")
    with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    tensors = {}
    for shard in shards:
        tensors.update(safetensors.numpy.load_file(os.path.join(path, shard)))
    return tensors


def _drop_duplicates(kind: str, model_config: Mapping[str, Any], tensors: dict[str, np.ndarray]) -> None:
    """Removes tensors that HF may save twice for a tied weight, after checking they really are copies.

    An untied BertForMaskedLM (``tie_word_embeddings=False``) is different: transformers 5 then unties
    the decoder's bias from ``cls.predictions.bias`` as well and computes the logits with
    ``cls.predictions.decoder.bias`` alone, so that one becomes vlfm's ``mlm_bias`` and the other,
    which HF never reads, is dropped (transformers 4 keeps the two identical).
    """
    if kind not in ("bert", "roberta") or not model_config["text"].get("mlm_head"):
        return
    head, bias = ("cls.predictions.", "cls.predictions.bias") if kind == "bert" else ("lm_head.", "lm_head.bias")
    if not model_config["text"].get("tie_mlm_decoder", True):
        if f"{head}decoder.bias" in tensors:
            tensors[bias] = tensors.pop(f"{head}decoder.bias")
        return
    copies = {f"{head}decoder.bias": bias,
              f"{head}decoder.weight": f"{LOAD_PREFIXES[kind]}embeddings.word_embeddings.weight"}
    for dup, original in copies.items():
        if dup in tensors:
            if original not in tensors or not np.array_equal(tensors[dup], tensors[original]):
                raise ValueError(f"{dup} should be tied to {original} but differs from it")
            del tensors[dup]


def _drop_mae_decoder(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Removes ViTMAEForPreTraining's pixel decoder (``decoder.*``, its mask token and position table
    included) from ``tensors``: vlfm imports MAE's encoder only, and says so (a warning, so that the
    command line shows it too) rather than dropping weights unannounced."""
    decoder = sorted(k for k in tensors if k.startswith(MAE_DECODER_PREFIX))
    if decoder:
        size = sum(int(tensors[k].size) for k in decoder)
        for k in decoder:
            del tensors[k]
        log.warning("%s: importing the ViTMAE encoder only; the MAE pixel decoder is not imported "
                    "(%d tensors, %d values under %r)", path, len(decoder), size, MAE_DECODER_PREFIX)


def map_tensors(tensors: Mapping[str, np.ndarray], rows: Iterable[tuple[str, str, str]],
                shapes: Mapping[str, tuple[int, ...]], where: str) -> dict[str, np.ndarray]:
    """Fills the vlfm params ``shapes`` (flat, unscanned paths) from HF ``tensors`` through ``rows``.

    Rows whose vlfm path the model lacks are skipped (optional biases, poolers, heads); a missing HF
    tensor, an unfilled vlfm param or an unused HF tensor raises, naming them, with ``where``.
    """
    flat, missing, used = {}, [], set()
    for hf_key, vl_path, conv in rows:
        if vl_path not in shapes:
            continue  # an optional part this model does not have (bias, pooler, head)
        if hf_key not in tensors:
            missing.append(hf_key)
            continue
        value = np.asarray(tensors[hf_key], np.float32)
        try:
            flat[vl_path] = _to_vlfm(conv, value, shapes[vl_path])
        except ValueError as e:
            raise ValueError(f"{hf_key} {value.shape} does not fit {vl_path} {shapes[vl_path]}: {e}") from None
        used.add(hf_key)
    unfilled = set(shapes) - set(flat)
    leftover = set(tensors) - used
    if missing or unfilled or leftover:
        raise ValueError(f"{where}:"
                         f"\n  missing HF tensors: {_list(missing) or '-'}"
                         f"\n  unfilled vlfm params: {_list(unfilled) or '-'}"
                         f"\n  unused HF tensors: {_list(leftover) or '-'}")
    return flat


def load_hf(path: str | os.PathLike, scan: bool = True) -> tuple[dict, dict]:
    """Reads an HF checkpoint directory into ``(vlfm model config, params)``.

    ``scan`` picks the parameter layout (stacked ``encoder/layers`` or per-layer ``encoder/layer_{i}``)
    and is stored in the returned towers' configs. Params are float32 numpy arrays.
    """
    with open(os.path.join(path, CONFIG_NAME)) as f:
        hf_config = json.load(f)
    if hf_config.get("model_type") in HF_LOADERS:  # ViLT, BridgeTower: vlfm.convert.hf_fusion
        return HF_LOADERS.get(hf_config["model_type"])(path, scan=scan)
    tensors = {k: v for k, v in _read_tensors(path).items() if not k.endswith(BUFFER_SUFFIXES)}
    kind = hf_config["model_type"]
    if kind == "vit_mae":
        _drop_mae_decoder(path, tensors)
    model_config = hf_to_vlfm_config(hf_config, tensors, scan=scan)
    # Optional prefixes: BertForMaskedLM / ViTForImageClassification nest the encoder; CLIPTextModel and
    # CLIPVisionModel have "text_model." / "vision_model." on the Hub but none when transformers 5 saves them.
    prefix = _key_prefix(set(tensors), kind)
    _drop_duplicates(kind, model_config, tensors)
    flat = map_tensors(tensors, _rows(kind, model_config, prefix), _abstract_params(model_config),
                       f"checkpoint {path} does not match the {kind} layout")
    if kind == "clip":
        # HF does not clamp the temperature; vlfm does, so never clamp below the loaded value.
        model_config["max_logit_scale"] = max(math.log(100.0), float(flat["logit_scale"]))
    if scan:
        flat = _stack_layers(flat)
    return model_config, flax.traverse_util.unflatten_dict(flat, sep="/")


def save_hf(model_config: Mapping[str, Any], params: Any, path: str | os.PathLike,
            run_record: Mapping[str, Any] | None = None) -> None:
    """Writes ``config.json`` + ``model.safetensors`` that ``transformers`` loads as BertModel /
    BertForMaskedLM, ViTModel / ViTForImageClassification, CLIPModel, CLIPTextModel or CLIPVisionModel
    (or, through ``HF_SAVERS``, a ViLT class: ``vlfm.convert.hf_fusion``), and ``vlfm_export.json`` beside them (the vlfm model config, commit and version, and ``run_record``:
    the training run's own config record, when the weights come from one).

    Accepts params in either layout (scanned or not). Raises when the model uses a setting HF cannot
    express, or when the params do not match ``model_config``.
    """
    model_config = _plain(model_config)
    if model_config.get("name") in HF_SAVERS:
        HF_SAVERS.get(model_config["name"])(model_config, params, path, run_record)
        return
    tower = (model_config.get("image") or {}).get("name") if model_config.get("name") == "image_classifier" else None
    if tower in HF_SAVERS:  # an image classifier whose tower has its own HF class (Swin)
        HF_SAVERS.get(tower)(model_config, params, path, run_record)
        return
    kind = _checkpoint_kind(model_config)
    hf_config = vlfm_to_hf_config(model_config)
    flat = flat_params_matching(params, _abstract_params(model_config))
    prefix = ""
    if kind in ("bert", "roberta") and model_config["text"].get("mlm_head"):
        prefix = LOAD_PREFIXES[kind]  # BertForMaskedLM / RobertaForMaskedLM
    elif kind == "vit" and model_config["image"].get("num_classes"):
        prefix = "vit."  # ViTForImageClassification
    elif kind in ("clip_text_model", "clip_vision_model"):
        prefix = LOAD_PREFIXES[kind]  # the Hub layout, which transformers 4 and 5 both load
    if kind == "clip":
        # vlfm caps the temperature in the forward pass and HF does not: export the value the model uses.
        cap = model_config.get("max_logit_scale", math.log(100.0))
        flat["logit_scale"] = np.minimum(flat["logit_scale"], np.float32(cap))
    tensors = rows_to_tensors(_rows(kind, model_config, prefix), flat, kind)
    text = model_config.get("text") or {}
    if kind in ("bert", "roberta") and text.get("mlm_head") and not text.get("tie_mlm_decoder", True):
        # Untied, transformers 5 reads the decoder's own bias (see _drop_duplicates); write both.
        head = "cls.predictions." if kind == "bert" else "lm_head."
        tensors[f"{head}decoder.bias"] = tensors[f"{head}bias"].copy()
    write_hf_dir(path, hf_config, tensors, model_config, run_record)


def rows_to_tensors(rows: Iterable[tuple[str, str, str]], flat: Mapping[str, np.ndarray],
                    where: str) -> dict[str, np.ndarray]:
    """HF tensors from flat vlfm params through ``rows`` (the inverse of ``map_tensors``); a param that
    no row places raises, naming it."""
    tensors, used = {}, set()
    for hf_key, vl_path, conv in rows:
        if vl_path in flat:
            tensors[hf_key] = np.array(_to_hf(conv, flat[vl_path]), order="C")  # keeps 0-d arrays 0-d
            used.add(vl_path)
    leftover = set(flat) - used
    if leftover:
        raise ValueError(f"these params have no place in an HF {where} checkpoint: {_list(leftover)}")
    return tensors


def flat_params_matching(params: Any, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """``params`` (either layout) as flat, unscanned float32 numpy arrays, checked against the flat
    ``shapes`` of the model config they are exported with (raises naming missing, extra, misshaped)."""
    flat = {k: np.asarray(v, np.float32)
            for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(strip_boxes(params)), sep="/").items()}
    flat = _unstack_layers(flat)
    wrong = {k for k in set(shapes) & set(flat) if tuple(flat[k].shape) != shapes[k]}
    if set(shapes) != set(flat) or wrong:
        raise ValueError("params do not match the model config:"
                         f"\n  missing: {_list(set(shapes) - set(flat)) or '-'}"
                         f"\n  unexpected: {_list(set(flat) - set(shapes)) or '-'}"
                         f"\n  wrong shape: {_list(wrong) or '-'}")
    return flat


def write_hf_dir(path: str | os.PathLike, hf_config: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                 model_config: Mapping[str, Any], run_record: Mapping[str, Any] | None) -> None:
    """``config.json``, ``model.safetensors`` and ``vlfm_export.json`` in ``path``."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(dict(hf_config), f, indent=2, sort_keys=True)
    safetensors.numpy.save_file(dict(tensors), os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})
    write_export_record(path, model_config, run_record)
