"""Import and export of open_clip CLIP and CoCa weights (open-clip-torch 3.x ``CLIP`` / ``CoCa`` state dicts).

CLIP: ``clip_from_open_clip`` / ``clip_to_open_clip`` and ``clip_config_from_open_clip`` /
``clip_config_to_open_clip`` do for a vlfm ``dual_encoder`` (CLIP-style ViT and causal text transformer
with argmax pooling) what the ``coca_*`` functions below do for CoCa; ``load_open_clip`` /
``save_open_clip`` pick the family from the config.

``coca_from_open_clip`` turns a CoCa state dict (tensors as numpy arrays or anything ``np.asarray``
takes) into vlfm ``coca`` params; ``coca_to_open_clip`` writes vlfm params back as a state dict that
``open_clip.CoCa.load_state_dict`` accepts. ``coca_config_from_open_clip`` / ``coca_config_to_open_clip``
translate the model configs (open_clip's ``model_cfg``: ``embed_dim``, ``vision_cfg``, ``text_cfg``,
``multimodal_cfg``, ``quick_gelu``). ``load_open_clip`` / ``save_open_clip`` read and write a directory
holding ``open_clip_config.json`` and ``open_clip_model.safetensors``, which open_clip itself opens with
``open_clip.create_model_and_transforms("local-dir:PATH")``.

Layouts. open_clip's ``nn.MultiheadAttention`` fuses the q/k/v projections into ``in_proj_weight``
(``q/k/v_proj_weight`` when the keys have another width, as in the attentional pooler) and
``in_proj_bias``; vlfm keeps ``query``/``key``/``value`` kernels ``[in, heads, head_dim]``. Plain
projection parameters (``text_projection``, ``visual.proj``, ``text_decoder.text_projection``) are
``x @ P`` and copy over unchanged. Poolers: ``attentional_pool=True`` is vlfm's ``pooler="open_clip"``
(``visual.ln_post`` after the pool is vlfm's ``ln_post``); ``"parallel"``/``"cascade"`` are vlfm's
poolers of the same names, whose ``visual.ln_post`` normalises the ViT output (vlfm's
``image_tower/ln_final``); open_clip builds those only when the ViT width equals ``embed_dim``.

As with the Hugging Face converters (``vlfm.convert.hf``), every vlfm parameter must be filled and every
open_clip tensor used, so a layout mismatch fails naming the tensors.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import flax
import numpy as np
import safetensors.numpy

from vlfm.convert.hf import _abstract_params, _expand, _list, _plain, _to_hf, _tower_fields, map_tensors
from vlfm.core.provenance import write_export_record
from vlfm.core.tree import strip_boxes

__all__ = ["clip_config_from_open_clip", "clip_config_to_open_clip", "clip_from_open_clip", "clip_to_open_clip",
           "coca_config_from_open_clip", "coca_config_to_open_clip", "coca_from_open_clip", "coca_to_open_clip",
           "load_open_clip", "save_open_clip"]

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
POOLERS = {"open_clip": True, "parallel": "parallel", "cascade": "cascade"}  # vlfm pooler -> attentional_pool
QKV = (("q", "query"), ("k", "key"), ("v", "value"))

# ----------------------------------------------------------------------------------------------------
# Tensor tables: (open_clip module, vlfm module, kind) as in vlfm.convert.hf.

BLOCK = (
    ("ln_1", "ln1", "norm"),
    ("ln_2", "ln2", "norm"),
    ("mlp.c_fc", "mlp/fc1", "linear"),
    ("mlp.c_proj", "mlp/fc2", "linear"),
)
CROSS_BLOCK = BLOCK + (("ln_1_kv", "ln_kv", "norm"),)


def _attn_rows(oc: str, vl: str) -> list[tuple[str, str, str]]:
    """Attention rows over the unfused names (``{oc}.q_proj_weight`` ...; see ``_unfuse``)."""
    rows = []
    for short, name in QKV:
        rows += [(f"{oc}.{short}_proj_weight", f"{vl}/{name}/kernel", "linear"),
                 (f"{oc}.{short}_proj_bias", f"{vl}/{name}/bias", "bias")]
    return rows + _expand((("out_proj", "out", "linear_out"),), f"{oc}.", f"{vl}/")


def _block_rows(oc: str, vl: str, table=BLOCK) -> list[tuple[str, str, str]]:
    return _expand(table, f"{oc}.", f"{vl}/") + _attn_rows(f"{oc}.attn", f"{vl}/attn")


def _pooler_rows(oc: str, vl: str) -> list[tuple[str, str, str]]:
    return ([(f"{oc}.query", f"{vl}/query", "copy")] + _expand((("ln_q", "ln_q", "norm"), ("ln_k", "ln_k", "norm")),
                                                               f"{oc}.", f"{vl}/")
            + _attn_rows(f"{oc}.attn", f"{vl}/attn"))


def _rows(model_config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    depth = {k: _tower_fields(model_config[k])["depth"] for k in ("image", "text", "decoder")}
    pooler = model_config.get("pooler", "open_clip")
    rows = [("logit_scale", "logit_scale", "copy"),
            ("text.cls_emb", "text_tower/cls", "copy"),
            ("text.positional_embedding", "text_tower/pos_embed/embedding", "copy"),
            ("text.token_embedding.weight", "text_tower/token_embed/embedding", "copy"),
            ("text.text_projection", "text_proj/kernel", "copy"),
            ("visual.class_embedding", "image_tower/cls", "copy"),
            ("visual.positional_embedding", "image_tower/pos_embed/embedding", "copy"),
            ("visual.conv1.weight", "image_tower/patch_embed/proj/kernel", "conv"),
            ("visual.proj", "image_proj/kernel", "copy"),
            ("text_decoder.text_projection", "text_decoder/head/kernel", "copy")]
    rows += _expand((("text.ln_final", "text_tower/ln_final", "norm"), ("visual.ln_pre", "image_tower/ln_pre", "norm"),
                     ("text_decoder.ln_final", "text_decoder/ln_final", "norm"),
                     ("visual.ln_post", "ln_post" if pooler == "open_clip" else "image_tower/ln_final", "norm")),
                    "", "")
    rows += _pooler_rows("visual.attn_pool", "attn_pool")
    if pooler != "open_clip":
        rows += _pooler_rows("visual.attn_pool_contrastive", "attn_pool_contrastive")
    for i in range(depth["image"]):
        rows += _block_rows(f"visual.transformer.resblocks.{i}", f"image_tower/encoder/layer_{i}")
    for i in range(depth["text"]):
        rows += _block_rows(f"text.transformer.resblocks.{i}", f"text_tower/encoder/layer_{i}")
    for i in range(depth["decoder"]):
        rows += _block_rows(f"text_decoder.resblocks.{i}", f"text_decoder/layer_{i}/self_block")
        rows += _block_rows(f"text_decoder.cross_attn.{i}", f"text_decoder/layer_{i}/cross_block", CROSS_BLOCK)
    return rows


def _clip_rows(model_config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """open_clip ``CLIP`` (text tower at the top level) <-> vlfm ``dual_encoder``."""
    rows = [("logit_scale", "logit_scale", "copy"),
            ("positional_embedding", "text_tower/pos_embed/embedding", "copy"),
            ("token_embedding.weight", "text_tower/token_embed/embedding", "copy"),
            ("text_projection", "text_proj/kernel", "copy"),
            ("visual.class_embedding", "image_tower/cls", "copy"),
            ("visual.positional_embedding", "image_tower/pos_embed/embedding", "copy"),
            ("visual.conv1.weight", "image_tower/patch_embed/proj/kernel", "conv"),
            ("visual.proj", "image_proj/kernel", "copy")]
    rows += _expand((("ln_final", "text_tower/ln_final", "norm"), ("visual.ln_pre", "image_tower/ln_pre", "norm"),
                     ("visual.ln_post", "image_tower/ln_final", "norm")), "", "")
    for i in range(_tower_fields(model_config["image"])["depth"]):
        rows += _block_rows(f"visual.transformer.resblocks.{i}", f"image_tower/encoder/layer_{i}")
    for i in range(_tower_fields(model_config["text"])["depth"]):
        rows += _block_rows(f"transformer.resblocks.{i}", f"text_tower/encoder/layer_{i}")
    return rows


def _unfuse(tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Splits ``in_proj_weight``/``in_proj_bias`` into per-projection tensors (``q_proj_weight``, ...)."""
    out = {}
    for key, value in tensors.items():
        value = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, np.float32)
        module, _, leaf = key.rpartition(".")
        if leaf in ("in_proj_weight", "in_proj_bias"):
            kind = leaf[len("in_proj_"):]
            for (short, _), part in zip(QKV, np.split(value, 3, axis=0)):
                out[f"{module}.{short}_proj_{kind}"] = part
        else:
            out[key] = value
    return out


def _fuse(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of ``_unfuse`` in open_clip's layout: weights fused when q, k and v have one shape
    (``nn.MultiheadAttention`` with ``kdim == vdim == embed_dim``), biases always."""
    out = dict(tensors)
    modules = {k[: -len(".q_proj_weight")] for k in tensors if k.endswith(".q_proj_weight")}
    for module in modules:
        weights = [out[f"{module}.{s}_proj_weight"] for s, _ in QKV]
        if all(w.shape == weights[0].shape for w in weights):
            out[f"{module}.in_proj_weight"] = np.concatenate(weights, axis=0)
            for s, _ in QKV:
                del out[f"{module}.{s}_proj_weight"]
        out[f"{module}.in_proj_bias"] = np.concatenate([out.pop(f"{module}.{s}_proj_bias") for s, _ in QKV])
    return out


# ----------------------------------------------------------------------------------------------------
# Params


_LAYER_RE = re.compile(r"^(.*)/layer_(\d+)/(.*)$")
_STACK_RE = re.compile(r"^(.*)/layers/(.*)$")


def _scanned(model_config: Mapping[str, Any]) -> dict[str, bool]:
    """Tower prefix -> whether its layers are scanned (stacked on a leading axis)."""
    return {prefix: bool(_tower_fields(model_config[key])["scan"])
            for key, prefix in (("image", "image_tower/encoder"), ("text", "text_tower/encoder"),
                                ("decoder", "text_decoder")) if key in model_config}


def _stack(flat: dict[str, np.ndarray], scanned: Mapping[str, bool]) -> dict[str, np.ndarray]:
    """``{stack}/layer_{i}/x`` -> ``{stack}/layers/x`` (leading layer axis) for the scanned stacks."""
    out, groups = {}, {}
    for path, value in flat.items():
        m = _LAYER_RE.match(path)
        if m and scanned.get(m[1]):
            groups.setdefault(f"{m[1]}/layers/{m[3]}", {})[int(m[2])] = value
        else:
            out[path] = value
    for path, by_layer in groups.items():
        out[path] = np.stack([by_layer[i] for i in range(len(by_layer))])
    return out


def _unstack(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for path, value in flat.items():
        m = _STACK_RE.match(path)
        if m:
            for i in range(value.shape[0]):
                out[f"{m[1]}/layer_{i}/{m[2]}"] = value[i]
        else:
            out[path] = value
    return out


def _unscanned_config(model_config: Mapping[str, Any]) -> dict:
    cfg = _plain(model_config)
    for key in ("image", "text", "decoder"):
        if key in cfg:
            cfg[key] = dict(cfg[key], scan=False)
    return cfg


def _check_model(model_config: Mapping[str, Any]) -> None:
    if model_config.get("name") != "coca":
        raise ValueError(f"open_clip conversion handles the 'coca' model, not {model_config.get('name')!r}")
    if model_config.get("pooler", "open_clip") not in POOLERS:
        raise ValueError(f"unknown CoCa pooler {model_config.get('pooler')!r}; valid: {', '.join(POOLERS)}")


def coca_from_open_clip(state_dict: Mapping[str, Any], model_config: Mapping[str, Any]) -> dict:
    """vlfm params (float32 numpy, nested dict) of ``model_config`` from an open_clip CoCa state dict;
    the towers' ``scan`` fields pick the layer layout. Buffers (``attn_mask``) are ignored."""
    model_config = _plain(model_config)
    _check_model(model_config)
    tensors = _unfuse({k: v for k, v in state_dict.items() if not k.endswith("attn_mask")})
    flat = map_tensors(tensors, _rows(model_config), _abstract_params(_unscanned_config(model_config)),
                       "the open_clip state dict does not match the vlfm CoCa config")
    return flax.traverse_util.unflatten_dict(_stack(flat, _scanned(model_config)), sep="/")


def coca_to_open_clip(model_config: Mapping[str, Any], params: Any) -> dict[str, np.ndarray]:
    """An open_clip CoCa state dict (float32 numpy) from vlfm ``params`` (either layer layout)."""
    model_config = _plain(model_config)
    _check_model(model_config)
    coca_config_to_open_clip(model_config)  # raises on settings open_clip cannot express
    return _state_dict(model_config, params, _rows(model_config), "CoCa")


def clip_from_open_clip(state_dict: Mapping[str, Any], model_config: Mapping[str, Any]) -> dict:
    """vlfm ``dual_encoder`` params (float32 numpy) of ``model_config`` from an open_clip CLIP state dict."""
    model_config = _plain(model_config)
    tensors = _unfuse({k: v for k, v in state_dict.items() if not k.endswith("attn_mask")})
    flat = map_tensors(tensors, _clip_rows(model_config), _abstract_params(_unscanned_config(model_config)),
                       "the open_clip state dict does not match the vlfm CLIP config")
    return flax.traverse_util.unflatten_dict(_stack(flat, _scanned(model_config)), sep="/")


def clip_to_open_clip(model_config: Mapping[str, Any], params: Any) -> dict[str, np.ndarray]:
    """An open_clip CLIP state dict (float32 numpy) from vlfm ``dual_encoder`` params (either layout). The
    temperature is the one the model uses: vlfm caps ``logit_scale`` in the forward pass, open_clip clamps
    the parameter after each step, so the exported value is capped."""
    model_config = _plain(model_config)
    clip_config_to_open_clip(model_config)  # raises on settings open_clip cannot express
    tensors = _state_dict(model_config, params, _clip_rows(model_config), "CLIP")
    cap = np.float32(model_config.get("max_logit_scale", math.log(100.0)))
    tensors["logit_scale"] = np.array(np.minimum(tensors["logit_scale"], cap), np.float32)  # 0-d array, not a scalar
    return tensors


def _state_dict(model_config: dict, params: Any, rows: list, family: str) -> dict[str, np.ndarray]:
    flat = {k: np.asarray(v, np.float32)
            for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(strip_boxes(params)), sep="/").items()}
    flat = _unstack(flat)
    shapes = _abstract_params(_unscanned_config(model_config))
    wrong = {k for k in set(shapes) & set(flat) if tuple(flat[k].shape) != shapes[k]}
    if set(shapes) != set(flat) or wrong:
        raise ValueError("params do not match the model config:"
                         f"\n  missing: {_list(set(shapes) - set(flat)) or '-'}"
                         f"\n  unexpected: {_list(set(flat) - set(shapes)) or '-'}"
                         f"\n  wrong shape: {_list(wrong) or '-'}")
    tensors, used = {}, set()
    for oc_key, vl_path, kind in rows:
        tensors[oc_key] = np.array(_to_hf(kind, flat[vl_path]), order="C")  # keeps 0-d arrays 0-d
        used.add(vl_path)
    leftover = set(flat) - used
    if leftover:
        raise ValueError(f"these params have no place in an open_clip {family} state dict: {_list(leftover)}")
    return _fuse(tensors)


# ----------------------------------------------------------------------------------------------------
# Configs


def _act(quick_gelu: bool) -> str:
    return "quick_gelu" if quick_gelu else "gelu"


def _unsupported(where: str, cfg: Mapping[str, Any], **allowed: Any) -> None:
    bad = {k: cfg[k] for k, v in allowed.items() if k in cfg and cfg[k] != v}
    if bad:
        raise ValueError(f"open_clip {where}: unsupported settings "
                         + ", ".join(f"{k}={bad[k]!r} (vlfm needs {allowed[k]!r})" for k in bad))


def coca_config_from_open_clip(cfg: Mapping[str, Any], scan: bool = True) -> dict:
    """The vlfm ``coca`` model config for an open_clip CoCa ``model_cfg`` (as in ``coca_ViT-B-32.json``)."""
    v, t, m = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"]), dict(cfg["multimodal_cfg"])
    _unsupported("vision_cfg", v, ls_init_value=None, no_ln_pre=False, pool_type="tok", patch_dropout=0.0,
                 output_tokens=True, timm_model_name=None, final_ln_after_pool=False)
    _unsupported("text_cfg", t, embed_cls=True, ls_init_value=None, no_causal_mask=False, proj_bias=False,
                 output_tokens=True, hf_model_name=None, proj_type="linear")
    _unsupported("multimodal_cfg", m, ls_init_value=None)
    pooled = v.get("attentional_pool", False)
    poolers = {value: key for key, value in POOLERS.items()}
    if pooled not in poolers:
        raise ValueError(f"open_clip vision_cfg.attentional_pool={pooled!r}: CoCa needs True, 'parallel' or 'cascade'")
    embed_dim = int(cfg["embed_dim"])
    vocab = int(t.get("vocab_size", 49408))
    act = _act(bool(cfg.get("quick_gelu", False)))
    v_width, t_width, m_width = int(v.get("width", 768)), int(t.get("width", 512)), int(m.get("width", 512))
    if m_width != t_width or m_width != embed_dim:
        raise ValueError(f"open_clip CoCa needs multimodal width {m_width} == text width {t_width} == embed_dim "
                         f"{embed_dim}")
    image = dict(name="vit", image_size=int(v.get("image_size", 224)), patch_size=int(v.get("patch_size", 16)),
                 width=v_width, depth=int(v.get("layers", 12)), num_heads=v_width // int(v.get("head_width", 64)),
                 mlp_dim=int(v_width * float(v.get("mlp_ratio", 4.0))), pre_norm=True, patch_bias=False,
                 ln_eps=1e-5, act=act, scan=scan)
    text = dict(name="coca_text", vocab_size=vocab, max_len=int(t.get("context_length", 77)), width=t_width,
                depth=int(t.get("layers", 12)), num_heads=int(t.get("heads", 8)),
                mlp_dim=int(t_width * float(t.get("mlp_ratio", 4.0))), ln_eps=1e-5, act=act,
                pad_id=int(t.get("pad_id", 0)), legacy_cls_mask=not t.get("correct_cls_mask", False), scan=scan)
    decoder = dict(name="multimodal_decoder", vocab_size=vocab, max_len=int(m.get("context_length", 77)),
                   depth=int(m.get("layers", 12)), num_heads=int(m.get("heads", 8)),
                   mlp_dim=int(m_width * float(m.get("mlp_ratio", 4))), ln_eps=1e-5, act=act, scan=scan)
    return dict(name="coca", embed_dim=embed_dim, pooler=poolers[pooled],
                n_queries=int(v.get("attn_pooler_queries", 256)), pooler_heads=int(v.get("attn_pooler_heads", 8)),
                logit_scale_init=float(cfg.get("init_logit_scale", math.log(1 / 0.07))),
                image=image, text=text, decoder=decoder)


def coca_config_to_open_clip(model_config: Mapping[str, Any]) -> dict:
    """open_clip's CoCa ``model_cfg`` for a vlfm ``coca`` config (raises on what open_clip cannot express)."""
    model_config = _plain(model_config)
    _check_model(model_config)
    image, text, dec = (_tower_fields(model_config[k]) for k in ("image", "text", "decoder"))
    embed_dim = int(model_config.get("embed_dim", 512))
    pooler = model_config.get("pooler", "open_clip")
    problems = []
    for where, tower in (("image", image), ("text", text), ("decoder", dec)):
        if tower["act"] not in ("gelu", "quick_gelu") or tower["act"] != image["act"]:
            problems.append(f"{where}.act={tower['act']!r} (one of gelu, quick_gelu for every tower)")
        if tower["ln_eps"] != 1e-5:
            problems.append(f"{where}.ln_eps={tower['ln_eps']!r} (1e-5)")
        if not tower.get("qkv_bias", True):
            problems.append(f"{where}.qkv_bias=False (True)")
        if tower.get("layer_scale") is not None:
            problems.append(f"{where}.layer_scale (None)")
    for where, tower in (("image", image), ("text", text), ("decoder", dec)):
        width = text["width"] if where == "decoder" else tower["width"]
        if int(width * (tower["mlp_dim"] / width)) != tower["mlp_dim"]:
            problems.append(f"{where}.mlp_dim={tower['mlp_dim']} (open_clip sizes it as int(width * mlp_ratio))")
    if image["width"] % image["num_heads"]:
        problems.append(f"image.num_heads={image['num_heads']} (open_clip needs heads that divide the width)")
    want = dict(pos_embedding="learned", class_token=True, pre_norm=True, patch_bias=False)
    problems += [f"image.{k}={image[k]!r} ({v!r})" for k, v in want.items() if image[k] != v]
    if text["width"] != embed_dim:
        problems.append(f"text.width={text['width']} (embed_dim {embed_dim}: the decoder reads image tokens "
                        "of width embed_dim)")
    if text["vocab_size"] != dec["vocab_size"]:
        problems.append(f"decoder.vocab_size={dec['vocab_size']} (text.vocab_size {text['vocab_size']})")
    if not text["legacy_cls_mask"]:
        problems.append("text.legacy_cls_mask=False (open_clip 3.3's configs always build the legacy CLS mask)")
    if pooler != "open_clip" and image["width"] != embed_dim:
        problems.append(f"image.width={image['width']} (embed_dim {embed_dim}: open_clip's {pooler} pooler "
                        "normalises the ViT output with a LayerNorm of width embed_dim)")
    if problems:
        raise ValueError("this CoCa has no open_clip equivalent: " + "; ".join(problems))
    ratio = lambda tower, width: tower["mlp_dim"] / width  # noqa: E731
    return dict(
        embed_dim=embed_dim, quick_gelu=image["act"] == "quick_gelu", custom_text=True,
        init_logit_scale=float(model_config.get("logit_scale_init", math.log(1 / 0.07))),
        vision_cfg=dict(image_size=image["image_size"], patch_size=image["patch_size"], width=image["width"],
                        layers=image["depth"], head_width=image["width"] // image["num_heads"],
                        mlp_ratio=ratio(image, image["width"]), attentional_pool=POOLERS[pooler],
                        attn_pooler_queries=int(model_config.get("n_queries", 256)),
                        attn_pooler_heads=int(model_config.get("pooler_heads", 8)), output_tokens=True),
        text_cfg=dict(context_length=text["max_len"], vocab_size=text["vocab_size"], width=text["width"],
                      heads=text["num_heads"], layers=text["depth"], mlp_ratio=ratio(text, text["width"]),
                      embed_cls=True, output_tokens=True, pad_id=text["pad_id"]),
        multimodal_cfg=dict(context_length=dec["max_len"], vocab_size=dec["vocab_size"], width=text["width"],
                            heads=dec["num_heads"], layers=dec["depth"], mlp_ratio=ratio(dec, text["width"]),
                            attn_pooler_heads=int(model_config.get("pooler_heads", 8))),
    )


TEXT_POOLS = {"argmax": "argmax", "eos": "eos", "first": "first", "last": "last"}  # vlfm pool -> open_clip pool_type


def clip_config_from_open_clip(cfg: Mapping[str, Any], scan: bool = True) -> dict:
    """The vlfm ``dual_encoder`` config for an open_clip CLIP ``model_cfg`` (as in ``ViT-B-16.json``)."""
    v, t = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
    _unsupported("vision_cfg", v, ls_init_value=None, no_ln_pre=False, pool_type="tok", patch_dropout=0.0,
                 timm_model_name=None, final_ln_after_pool=False, attentional_pool=False)
    _unsupported("text_cfg", t, embed_cls=False, ls_init_value=None, no_causal_mask=False, proj_bias=False,
                 hf_model_name=None, proj_type="linear", final_ln_after_pool=False)
    if cfg.get("init_logit_bias") is not None:
        raise ValueError("open_clip init_logit_bias (SigLIP-style CLIP): not supported by this converter")
    pool = t.get("pool_type", "argmax")
    if pool not in TEXT_POOLS.values():
        raise ValueError(f"open_clip text_cfg.pool_type={pool!r}: vlfm reads {', '.join(TEXT_POOLS.values())}")
    act = _act(bool(cfg.get("quick_gelu", False)))
    v_width, t_width = int(v.get("width", 768)), int(t.get("width", 512))
    image = dict(name="vit", image_size=int(v.get("image_size", 224)), patch_size=int(v.get("patch_size", 16)),
                 width=v_width, depth=int(v.get("layers", 12)), num_heads=v_width // int(v.get("head_width", 64)),
                 mlp_dim=int(v_width * float(v.get("mlp_ratio", 4.0))), pre_norm=True, patch_bias=False,
                 ln_eps=1e-5, act=act, scan=scan)
    text = dict(name="text_transformer", vocab_size=int(t.get("vocab_size", 49408)),
                max_len=int(t.get("context_length", 77)), width=t_width, depth=int(t.get("layers", 12)),
                num_heads=int(t.get("heads", 8)), mlp_dim=int(t_width * float(t.get("mlp_ratio", 4.0))),
                ln_eps=1e-5, act=act, causal=True, pool=pool, scan=scan,
                **({"eos_id": int(t.get("eos_id", 2))} if pool == "eos" else {}))
    return dict(name="dual_encoder", embed_dim=int(cfg["embed_dim"]), image=image, text=text,
                logit_scale_init=float(cfg.get("init_logit_scale", math.log(1 / 0.07))))


def clip_config_to_open_clip(model_config: Mapping[str, Any]) -> dict:
    """open_clip's CLIP ``model_cfg`` for a vlfm ``dual_encoder`` (raises on what open_clip cannot express)."""
    model_config = _plain(model_config)
    if model_config.get("name") != "dual_encoder":
        raise ValueError(f"open_clip CLIP conversion handles the 'dual_encoder' model, not {model_config.get('name')!r}")
    image, text = (_tower_fields(model_config[k]) for k in ("image", "text"))
    problems = []
    if (model_config["image"].get("name"), model_config["text"].get("name")) != ("vit", "text_transformer"):
        problems.append("towers (image 'vit' and text 'text_transformer')")
    else:
        for where, tower in (("image", image), ("text", text)):
            if tower["act"] not in ("gelu", "quick_gelu") or tower["act"] != image["act"]:
                problems.append(f"{where}.act={tower['act']!r} (one of gelu, quick_gelu for both towers)")
            if tower["ln_eps"] != 1e-5:
                problems.append(f"{where}.ln_eps={tower['ln_eps']!r} (1e-5)")
            if not tower.get("qkv_bias", True) or tower.get("layer_scale") is not None:
                problems.append(f"{where}: qkv_bias=True and no layer_scale")
            if tower["width"] % tower["num_heads"]:
                problems.append(f"{where}.num_heads={tower['num_heads']} (heads that divide the width)")
        want = dict(pos_embedding="learned", class_token=True, pre_norm=True, patch_bias=False, pool="cls",
                    final_norm=True, pooler="none", num_classes=0)
        problems += [f"image.{k}={image[k]!r} ({v!r})" for k, v in want.items() if image[k] != v]
        if not text["causal"]:
            problems.append("text.causal=False (open_clip's text tower is causal)")
        if text["pool"] not in TEXT_POOLS:
            problems.append(f"text.pool={text['pool']!r} (one of {', '.join(TEXT_POOLS)})")
    if model_config.get("logit_bias_init") is not None:
        problems.append("logit_bias_init (SigLIP-style bias; not in open_clip's CLIP config here)")
    if problems:
        raise ValueError("this dual encoder has no open_clip CLIP equivalent: " + "; ".join(problems))
    text_cfg = dict(context_length=text["max_len"], vocab_size=text["vocab_size"], width=text["width"],
                    heads=text["num_heads"], layers=text["depth"], mlp_ratio=text["mlp_dim"] / text["width"],
                    pool_type=TEXT_POOLS[text["pool"]])
    if text["pool"] == "eos":
        text_cfg["eos_id"] = int(text["eos_id"])
    return dict(
        embed_dim=int(model_config.get("embed_dim", 512)), quick_gelu=image["act"] == "quick_gelu",
        init_logit_scale=float(model_config.get("logit_scale_init", math.log(1 / 0.07))),
        vision_cfg=dict(image_size=image["image_size"], patch_size=image["patch_size"], width=image["width"],
                        layers=image["depth"], head_width=image["width"] // image["num_heads"],
                        mlp_ratio=image["mlp_dim"] / image["width"]),
        text_cfg=text_cfg)


# ----------------------------------------------------------------------------------------------------
# Files


def save_open_clip(model_config: Mapping[str, Any], params: Any, path: str | os.PathLike,
                   run_record: Mapping[str, Any] | None = None) -> None:
    """Writes ``open_clip_config.json`` (``{"model_cfg": ...}``) and ``open_clip_model.safetensors``; open_clip
    loads them with ``open_clip.create_model_and_transforms("local-dir:" + path)``. ``vlfm_export.json``
    beside them records the vlfm model config, commit and version (and ``run_record``, a training run's)."""
    model_config = _plain(model_config)
    if model_config.get("name") == "dual_encoder":
        tensors, cfg = clip_to_open_clip(model_config, params), clip_config_to_open_clip(model_config)
    else:
        tensors, cfg = coca_to_open_clip(model_config, params), coca_config_to_open_clip(model_config)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump({"model_cfg": cfg}, f, indent=2, sort_keys=True)
    safetensors.numpy.save_file(tensors, os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})
    write_export_record(path, _plain(model_config), run_record)


def load_open_clip(path: str | os.PathLike, scan: bool = True) -> tuple[dict, dict]:
    """``(vlfm model config, params)`` from a directory of ``open_clip_config.json`` + ``open_clip_model.safetensors``
    (what ``save_open_clip`` writes, and open_clip's own Hub layout)."""
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not os.path.exists(os.path.join(path, name)):
            raise FileNotFoundError(f"{path}: no {name} (an open_clip directory holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    with open(os.path.join(path, CONFIG_NAME)) as f:
        cfg = json.load(f)["model_cfg"]
    tensors = safetensors.numpy.load_file(os.path.join(path, WEIGHTS_NAME))
    if "multimodal_cfg" in cfg:  # CoCa
        model_config = coca_config_from_open_clip(cfg, scan=scan)
        return model_config, coca_from_open_clip(tensors, model_config)
    model_config = clip_config_from_open_clip(cfg, scan=scan)
    return model_config, clip_from_open_clip(tensors, model_config)
