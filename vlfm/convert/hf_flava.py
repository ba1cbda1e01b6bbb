"""Hugging Face FLAVA checkpoints, both ways (``load_hf`` / ``save_hf`` dispatch here).

``FlavaModel`` -> ``flava`` (the three encoders, the four projections, ``logit_scale``);
``FlavaForPreTraining`` (``flava.``-prefixed keys) adds the heads it has: ``mim_head``, ``mlm_head``,
``mmm_image_head``, ``mmm_text_head``, ``itm_head``. HF ties each prediction head's ``bias`` to its
``decoder.bias`` (the logits use the decoder's); the copy is checked and dropped. The DALL-E dVAE
(``image_codebook.*``) is not a parameter of the vlfm model (vlfm's image tokenizers are frozen
constants): a checkpoint that carries one is refused unless ``codebook=`` names an ``.npz`` to write it
to (``vlfm.models.dvae``), which the model then uses as its ``tokenizer``.

vlfm's FLAVA gives its three encoders one width, head count and MLP size (as ``FlavaConfig()`` does);
a checkpoint whose encoders differ is refused, naming the fields. Export writes ``FlavaModel`` or, with
heads, ``FlavaForPreTraining`` (all five heads, no codebook: ``init_codebook=False``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vlfm.convert.hf import (CONFIG_NAME, HF_LOADERS, HF_SAVERS, VIT_LAYER, _act, _expand, _hf_act, _layers, _plain,
                             _read_tensors, _stack_layers, flat_params_matching, map_tensors, rows_to_tensors,
                             write_hf_dir)
from vlfm.core.tree import strip_boxes
from vlfm.models import build_model

__all__ = ["load_hf_flava", "save_hf_flava", "flava_config"]

PARTS = (("image_model.", "image_encoder/"), ("text_model.", "text_encoder/"),
         ("multimodal_model.", "mm_encoder/"))
TOP = (
    ("text_model.embeddings.word_embeddings", "text_encoder/embed/token_embed", "embed"),
    ("text_model.embeddings.position_embeddings", "text_encoder/embed/pos_embed", "embed"),
    ("text_model.embeddings.token_type_embeddings", "text_encoder/embed/type_embed", "embed"),
    ("text_model.embeddings.LayerNorm", "text_encoder/embed/ln_embed", "norm"),
    ("image_model.embeddings.cls_token", "image_encoder/cls", "batched"),
    ("image_model.embeddings.mask_token", "image_encoder/mask_token/embedding", "batched"),
    ("image_model.embeddings.position_embeddings", "image_encoder/pos_embed/embedding", "batched"),
    ("image_model.embeddings.patch_embeddings.projection", "image_encoder/patch_embed/proj", "conv"),
    ("multimodal_model.cls_token", "mm_encoder/cls", "batched"),
    ("image_projection", "image_projection", "linear"),
    ("text_projection", "text_projection", "linear"),
    ("image_to_mm_projection", "image_to_mm", "linear"),
    ("text_to_mm_projection", "text_to_mm", "linear"),
    ("logit_scale", "logit_scale", "tensor"),
)
PREDICTION_HEADS = ("mim_head", "mlm_head", "mmm_image_head", "mmm_text_head")
HEAD = (("transform.dense", "transform", "linear"), ("transform.LayerNorm", "ln", "norm"),
        ("decoder", "decoder", "linear"))
ITM = (("itm_head.pooler.dense", "itm_head/pooler", "linear"),
       ("itm_head.seq_relationship", "itm_head/classifier", "linear"))
SHARED = ("hidden_size", "num_attention_heads", "intermediate_size", "layer_norm_eps", "hidden_act", "qkv_bias")


def _rows(model: Mapping[str, Any], prefix: str) -> list:
    depths = {"image_model.": model["image_depth"], "text_model.": model["text_depth"],
              "multimodal_model.": model["mm_depth"]}
    rows = _expand(TOP, prefix, "")
    for hf, vl in PARTS:
        rows += _layers(VIT_LAYER, depths[hf], f"{prefix}{hf}encoder.layer.{{i}}", vl)
        rows += _expand((("layernorm", "ln_final", "norm"), ("pooler.dense", "pooler", "linear")), prefix + hf, vl)
    for head in PREDICTION_HEADS:
        rows += _expand(HEAD, f"{head}.", f"{head}/")
    return rows + _expand(ITM, "", "")


def flava_config(hf_config: Mapping[str, Any], keys: set[str], scan: bool = True) -> dict:
    """The vlfm model config of an HF ``FlavaConfig`` dict; ``keys`` (the checkpoint's tensor names)
    decide the heads."""
    image, text, mm = (hf_config.get(k) or {} for k in ("image_config", "text_config", "multimodal_config"))
    for name, sub in (("text_config", text), ("multimodal_config", mm)):
        differ = {k: (image.get(k), sub.get(k)) for k in SHARED if image.get(k) != sub.get(k)}
        if differ:
            raise ValueError(f"flava: vlfm's FLAVA encoders share one size; image_config and {name} differ in "
                             f"{differ}")
    unsupported = {k: v for k, v in (("image_config.num_channels", image.get("num_channels", 3)),
                                     ("multimodal_config.use_cls_token", mm.get("use_cls_token", True)),
                                     ("text_config.position_embedding_type",
                                      text.get("position_embedding_type", "absolute")))
                   if v != {"image_config.num_channels": 3, "multimodal_config.use_cls_token": True,
                            "text_config.position_embedding_type": "absolute"}[k]}
    if unsupported:
        raise ValueError(f"flava: unsupported settings {unsupported}")
    if hf_config.get("hidden_size", image["hidden_size"]) != image["hidden_size"]:
        raise ValueError(f"flava: hidden_size {hf_config['hidden_size']} differs from the encoders' "
                         f"{image['hidden_size']}")
    model = dict(name="flava", width=image["hidden_size"], num_heads=image["num_attention_heads"],
                 mlp_dim=image["intermediate_size"], image_depth=image["num_hidden_layers"],
                 text_depth=text["num_hidden_layers"], mm_depth=mm["num_hidden_layers"],
                 image_size=image["image_size"], patch_size=image["patch_size"], vocab_size=text["vocab_size"],
                 max_text_len=text["max_position_embeddings"], type_vocab_size=text["type_vocab_size"],
                 ln_eps=image["layer_norm_eps"], act=_act(image["hidden_act"]),
                 projection_dim=hf_config["projection_dim"], logit_scale_init=hf_config["logit_scale_init_value"],
                 image_vocab_size=image["vocab_size"], head_ln_eps=image["layer_norm_eps"],
                 init_std=hf_config.get("initializer_range", 0.02), scan=scan)
    if not image.get("qkv_bias", True):
        raise ValueError("flava: qkv_bias=False is not supported")
    for flag, head in (("mim", "mim_head"), ("mlm", "mlm_head"), ("mmm", "mmm_image_head"), ("itm", "itm_head")):
        if any(k.startswith(head + ".") for k in keys):
            model[flag] = True
    return model


def _untie(tensors: dict[str, np.ndarray]) -> None:
    """``X_head.bias`` is HF's tied copy of ``X_head.decoder.bias``: keep one, checked equal."""
    for head in PREDICTION_HEADS:
        tied, own = f"{head}.bias", f"{head}.decoder.bias"
        if tied in tensors:
            if own not in tensors:
                tensors[own] = tensors[tied]
            elif not np.array_equal(tensors[own], tensors[tied]):
                raise ValueError(f"{tied} should be tied to {own} but differs from it")
            del tensors[tied]


def param_shapes(model: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Flat parameter shapes of a FLAVA config (unscanned ``layer_{i}`` naming), every branch created."""
    cfg = dict(_plain(model), scan=False, tokenizer="none")
    module = build_model(cfg)
    size, n = cfg.get("image_size", 224), (cfg.get("image_size", 224) // cfg.get("patch_size", 16)) ** 2
    image = jnp.zeros((1, size, size, 3), jnp.float32)
    text = jnp.zeros((1, 2), jnp.int32)
    codes = jnp.zeros((1, n), jnp.int32)
    batches = [dict(image=image, text=text, mlm_text=text, mlm_targets=text, mim_targets=codes)]
    if cfg.get("mim"):
        batches.append(dict(image=image, mim_targets=codes))
    if cfg.get("mlm"):
        batches.append(dict(text=text))

    def init():
        flat = {}
        for batch in batches:
            variables = module.init({"params": jax.random.key(0), "masking": jax.random.key(1),
                                     "sampling": jax.random.key(2)}, batch, train=True)
            flat.update(flax.traverse_util.flatten_dict(strip_boxes(variables["params"]), sep="/"))
        return flat

    return {k: tuple(v.shape) for k, v in jax.eval_shape(init).items()}


@HF_LOADERS.register("flava")
def load_hf_flava(path: str | os.PathLike, scan: bool = True, codebook: str | None = None) -> tuple[dict, dict]:
    """Reads an HF ``FlavaModel`` / ``FlavaForPreTraining`` directory into ``(vlfm model config, params)``.

    ``codebook``: where to write the checkpoint's dVAE as a tokenizer ``.npz`` (required when it has
    one); the returned config then names it as the model's ``tokenizer``."""
    with open(os.path.join(path, CONFIG_NAME)) as f:
        hf_config = json.load(f)
    tensors = {k: v for k, v in _read_tensors(path).items() if not k.endswith("position_ids")
               and not k.endswith("embeddings.token_type_ids")}
    dvae = {k[len("image_codebook."):]: tensors.pop(k) for k in [k for k in tensors if k.startswith("image_codebook.")]}
    prefix = "flava." if any(k.startswith("flava.") for k in tensors) else ""
    _untie(tensors)
    model = flava_config(hf_config, set(tensors), scan=scan)
    if dvae:
        if codebook is None:
            raise ValueError(f"{path} carries a DALL-E dVAE (image_codebook.*): pass codebook=<file.npz> to import "
                             "it as the model's frozen image tokenizer")
        from vlfm.models.dvae import DvaeTokenizer

        DvaeTokenizer.from_hf(dvae, hf_config.get("image_codebook_config") or {}, image_size=model["image_size"],
                              patch_size=model["patch_size"]).save(codebook)
        model["tokenizer"] = str(codebook)
    flat = map_tensors(tensors, _rows(model, prefix), param_shapes(model),
                       f"checkpoint {path} does not match the flava layout")
    if scan:
        flat = _stack_layers(flat)
    return model, flax.traverse_util.unflatten_dict(flat, sep="/")


def _hf_config(m: Mapping[str, Any]) -> tuple[dict, str]:
    shared = dict(hidden_size=m["width"], num_attention_heads=m["num_heads"], intermediate_size=m["mlp_dim"],
                  layer_norm_eps=m["ln_eps"], hidden_act=_hf_act(m["act"]), qkv_bias=True,
                  hidden_dropout_prob=m["dropout_rate"], attention_probs_dropout_prob=m["attn_dropout_rate"],
                  initializer_range=m["init_std"] if m["init_std"] is not None else 0.02)
    heads = any(m[k] for k in ("mim", "mlm", "mmm", "itm"))
    cfg = dict(model_type="flava", architectures=["FlavaForPreTraining" if heads else "FlavaModel"],
               hidden_size=m["width"], projection_dim=m["projection_dim"],
               logit_scale_init_value=m["logit_scale_init"], init_codebook=False,
               initializer_range=shared["initializer_range"],
               image_config=dict(shared, num_hidden_layers=m["image_depth"], image_size=m["image_size"],
                                 patch_size=m["patch_size"], num_channels=3, vocab_size=m["image_vocab_size"],
                                 mask_token=True),
               text_config=dict(shared, num_hidden_layers=m["text_depth"], vocab_size=m["vocab_size"],
                                max_position_embeddings=m["max_text_len"], type_vocab_size=m["type_vocab_size"],
                                position_embedding_type="absolute"),
               multimodal_config=dict(shared, num_hidden_layers=m["mm_depth"], use_cls_token=True))
    return cfg, "flava." if heads else ""


@HF_SAVERS.register("flava")
def save_hf_flava(model_config: Mapping[str, Any], params: Any, path: str | os.PathLike,
                  run_record: Mapping[str, Any] | None = None) -> None:
    """Writes ``FlavaModel`` (no heads) or ``FlavaForPreTraining`` (all five heads) in HF's layout."""
    from vlfm.convert.hf_fusion import _model_fields

    m = _model_fields(_plain(model_config))
    heads = [k for k in ("mim", "mlm", "mmm", "itm") if m[k]]
    if heads and len(heads) != 4:
        raise ValueError(f"flava export: FlavaForPreTraining has all of mim, mlm, mmm and itm; this model has {heads}")
    if m["head_ln_eps"] != m["ln_eps"]:
        raise ValueError(f"flava export: HF's heads use the encoders' layer_norm_eps ({m['ln_eps']}), "
                         f"not head_ln_eps={m['head_ln_eps']}")
    hf_config, prefix = _hf_config(m)
    flat = flat_params_matching(params, param_shapes(m))
    tensors = rows_to_tensors(_rows(m, prefix), flat, "flava")
    for head in PREDICTION_HEADS:
        if f"{head}.decoder.bias" in tensors:
            tensors[f"{head}.bias"] = tensors[f"{head}.decoder.bias"].copy()
    write_hf_dir(path, hf_config, tensors, model_config, run_record)
