"""Hugging Face fusion-model checkpoints, both ways: ViLT and BridgeTower (``load_hf`` and ``save_hf``
dispatch here).

Supported ``model_type`` values and what they become:

- ``vilt``: ``ViltModel`` -> ``vilt``; with ``vilt.``-prefixed keys also ``ViltForMaskedLM``
  (``mlm=True``; HF ties the decoder to the word embeddings, vlfm keeps an untied copy, which is what
  the original ViLT trains), ``ViltForQuestionAnswering`` (``vqa_answers``) and
  ``ViltForImagesAndTextClassification`` with two images (NLVR2, ``pair_classes``);
- ``bridgetower``: ``BridgeTowerModel`` -> ``bridgetower``; with ``bridgetower.`` keys also
  ``BridgeTowerForMaskedLM`` (``mlm``), ``BridgeTowerForImageAndTextRetrieval`` (``itm``) and
  ``BridgeTowerForContrastiveLearning`` (``contrastive_dim``, ``contrastive_cross``).

Tables and checks are those of ``vlfm.convert.hf``: every vlfm parameter is filled and every HF tensor
used. Export writes the HF class of the model's head (one head at most, as HF's classes have) and reads
the written config back through the importer: a vlfm setting HF cannot express is refused by name. ``vilt_params_from_vit`` starts a ViLT from a ViT (ViLT is initialised from ViT-B/32).

Numerical notes. HF ViLT draws image patches with ``torch.multinomial`` on every call, even in eval
mode, so its image tokens come out in a random order; vlfm keeps raster order (compare with
``torch.multinomial`` patched to return ``arange``). HF BridgeTower's cross layers are built with
``is_causal=True``; eager attention ignores it but ``sdpa`` makes the unmasked image self-attention
causal, so compare against ``attn_implementation="eager"``, which matches the original model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vlfm.convert.hf import (BERT_LAYER, BERT_TOP, BUFFER_SUFFIXES, CONFIG_NAME, HF_LOADERS, HF_SAVERS, VIT_LAYER,
                             _act, _expand, _hf_act, _layers, _plain, _read_tensors, _stack_layers,
                             _tower_fields, flat_params_matching, map_tensors, rows_to_tensors, square_size,
                             write_hf_dir)
from vlfm.core.tree import merge_params, strip_boxes
from vlfm.models import MODELS, build_model

__all__ = ["load_hf_fusion", "hf_fusion_config", "save_hf_bridgetower", "save_hf_vilt", "vilt_params_from_vit"]

VILT_TOP = (
    ("embeddings.text_embeddings.word_embeddings", "text_embed/token_embed", "embed"),
    ("embeddings.text_embeddings.position_embeddings", "text_embed/pos_embed", "embed"),
    ("embeddings.text_embeddings.token_type_embeddings", "text_embed/type_embed", "embed"),
    ("embeddings.text_embeddings.LayerNorm", "text_embed/ln_embed", "norm"),
    ("embeddings.patch_embeddings.projection", "image_embed/patch_embed/proj", "conv"),
    ("embeddings.cls_token", "image_embed/cls", "batched"),
    ("embeddings.position_embeddings", "image_embed/pos_embed/embedding", "batched"),
    ("embeddings.token_type_embeddings", "modality_embed", "embed"),
    ("layernorm", "ln_final", "norm"),
    ("pooler.dense", "pooler", "linear"),
)
CLASSIFIER = (("classifier.0", "fc1", "linear"), ("classifier.1", "ln", "norm"), ("classifier.3", "fc2", "linear"))
MLM_TRANSFORM = (("mlm_score.transform.dense", "mlm_head/mlm_transform", "linear"),
                 ("mlm_score.transform.LayerNorm", "mlm_head/mlm_ln", "norm"))

# BridgeTower's vision tower: OpenAI-CLIP naming (fused in_proj, split into q/k/v_proj on reading).
BT_VISION_TOP = (
    ("embeddings.class_embedding", "cls", "tensor"),
    ("embeddings.patch_embedding", "patch_embed/proj", "conv"),
    ("embeddings.position_embedding", "pos_embed", "embed"),
    ("ln_pre", "ln_pre", "norm"),
    ("ln_post", "ln_final", "norm"),
)
BT_VISION_LAYER = (
    ("attn.q_proj", "attn/query", "linear"),
    ("attn.k_proj", "attn/key", "linear"),
    ("attn.v_proj", "attn/value", "linear"),
    ("attn.out_proj", "attn/out", "linear_out"),
    ("ln_1", "ln1", "norm"),
    ("mlp.c_fc", "mlp/fc1", "linear"),
    ("mlp.c_proj", "mlp/fc2", "linear"),
    ("ln_2", "ln2", "norm"),
)
BT_CROSS_LAYER = BERT_LAYER + (
    ("crossattention.self.query", "cross_attn/query", "linear"),
    ("crossattention.self.key", "cross_attn/key", "linear"),
    ("crossattention.self.value", "cross_attn/value", "linear"),
    ("crossattention.output.dense", "cross_attn/out", "linear_out"),
    ("crossattention.output.LayerNorm", "ln_cross", "norm"),
)
BT_TOP = (
    ("cross_modal_text_transform", "text_transform", "linear"),
    ("cross_modal_image_transform", "image_transform", "linear"),
    ("token_type_embeddings", "type_embed", "embed"),
    ("cross_modal_text_layernorm", "fusion_layers/text_ln", "norm"),
    ("cross_modal_image_layernorm", "fusion_layers/image_ln", "norm"),
    ("cross_modal_text_pooler.dense", "text_pooler", "linear"),
    ("cross_modal_image_pooler.dense", "image_pooler", "linear"),
)
BT_HEADS = (
    ("itm_score.fc", "itm_head", "linear"),
    ("itc_text_head.fc", "itc_text_head", "linear"),
    ("itc_image_head.fc", "itc_image_head", "linear"),
    ("itc_cross_modal_head.fc", "itc_cross_head", "linear"),
    ("logit_scale", "logit_scale", "tensor"),
)


def _prefix(keys: set[str], prefix: str) -> str:
    return prefix if any(k.startswith(prefix) for k in keys) else ""


def _check(where: str, config: Mapping[str, Any], **expected: Any) -> None:
    bad = {k: config.get(k, v) for k, v in expected.items() if config.get(k, v) != v}
    if bad:
        raise ValueError(f"{where}: unsupported settings {bad} (supported: {expected})")


def _vilt_config(c: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], scan: bool) -> dict:
    keys = set(shapes)
    _check("vilt", c, num_channels=3)
    prefix = _prefix(keys, "vilt.")
    model = dict(name="vilt", vocab_size=c["vocab_size"], max_text_len=c["max_position_embeddings"],
                 type_vocab_size=c["type_vocab_size"], image_size=square_size("vilt", c, "image_size"),
                 patch_size=square_size("vilt", c, "patch_size"),
                 num_types=c["modality_type_vocab_size"], width=c["hidden_size"], depth=c["num_hidden_layers"],
                 num_heads=c["num_attention_heads"], mlp_dim=c["intermediate_size"], ln_eps=c["layer_norm_eps"],
                 act=_act(c["hidden_act"]), qkv_bias=c.get("qkv_bias", True),
                 dropout_rate=c.get("hidden_dropout_prob", 0.0),
                 attn_dropout_rate=c.get("attention_probs_dropout_prob", 0.0),
                 init_std=c.get("initializer_range", 0.02), scan=scan)
    if f"{prefix}pooler.dense.weight" not in keys:
        raise ValueError("ViLT checkpoints without a pooler are not supported")
    if "mlm_score.transform.dense.weight" in keys:
        model["mlm"] = True
    if "classifier.3.weight" in keys:
        num_labels = shapes["classifier.3.weight"][0]
        num_images = shapes["classifier.0.weight"][1] // c["hidden_size"]  # the classifier reads one CLS per image
        if num_images == 2:
            model["pair_classes"] = num_labels
        elif num_images == 1:
            model["vqa_answers"] = num_labels
        else:
            raise ValueError(f"ViLT classifiers over {num_images} images are not supported (1 or 2)")
    if "rank_output.weight" in keys:
        raise ValueError("ViltForImageAndTextRetrieval's 1-way rank_output has no vlfm head (ITM is 2-way)")
    return model


def _bridgetower_config(c: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], scan: bool) -> dict:
    keys = set(shapes)
    tc, vc = c["text_config"], c["vision_config"]
    _check("bridgetower", c, share_cross_modal_transformer_layers=True, share_link_tower_layers=False)
    _check("bridgetower vision", vc, share_layernorm=True, remove_last_layer=False, num_channels=3,
           stop_gradient=False)
    _check("bridgetower text", tc, position_embedding_type="absolute", is_decoder=False)
    if not tc["hidden_size"] == c["hidden_size"]:
        raise ValueError("BridgeTower's cross-modal layers take the text width; it must equal hidden_size")
    if (c.get("hidden_act", "gelu"), c.get("layer_norm_eps", 1e-5)) != (tc["hidden_act"], tc["layer_norm_eps"]):
        raise ValueError("the MLM head's activation/eps (top-level config) must equal the text config's")
    if vc["num_hidden_layers"] != tc["num_hidden_layers"]:
        # HF runs the vision tower only as deep as the text tower and bridges those layers; vlfm bridges
        # the top layers of each tower, so unequal depths would load into a different network.
        raise ValueError(f"bridgetower: vision depth {vc['num_hidden_layers']} differs from text depth "
                         f"{tc['num_hidden_layers']}; HF then skips the top vision layers, which vlfm does not "
                         f"reproduce (equal depths are supported)")
    prefix = _prefix(keys, "bridgetower.")
    width = vc["hidden_size"]
    image = dict(name="vit", image_size=square_size("bridgetower vision", vc, "image_size"),
                 patch_size=square_size("bridgetower vision", vc, "patch_size"), width=width,
                 depth=vc["num_hidden_layers"], num_heads=width // 64, mlp_dim=4 * width, pre_norm=True,
                 patch_bias=False, ln_eps=vc["layer_norm_eps"], act="quick_gelu", scan=scan)
    text = dict(name="bert", vocab_size=tc["vocab_size"], max_len=tc["max_position_embeddings"],
                type_vocab_size=tc["type_vocab_size"], pos_offset=tc["pad_token_id"] + 1,
                width=tc["hidden_size"], depth=tc["num_hidden_layers"], num_heads=tc["num_attention_heads"],
                mlp_dim=tc["intermediate_size"], ln_eps=tc["layer_norm_eps"], act=_act(tc["hidden_act"]),
                dropout_rate=tc["hidden_dropout_prob"], attn_dropout_rate=tc["attention_probs_dropout_prob"],
                pooler=f"{prefix}text_model.pooler.dense.weight" in keys, scan=scan)
    model = dict(name="bridgetower", image=image, text=text, width=c["hidden_size"], depth=c["num_hidden_layers"],
                 num_heads=tc["num_attention_heads"], mlp_dim=tc["intermediate_size"], ln_eps=tc["layer_norm_eps"],
                 act=_act(tc["hidden_act"]), dropout_rate=tc["hidden_dropout_prob"],
                 attn_dropout_rate=tc["attention_probs_dropout_prob"], bridge=c["link_tower_type"],
                 bridge_ln_eps=c["layer_norm_eps"], input_norm=True, scan=scan)
    if "mlm_score.decoder.weight" in keys or "mlm_score.bias" in keys:
        model["mlm"] = True
    if "itm_score.fc.weight" in keys:
        model["itm"] = "random"
    if "itc_text_head.fc.weight" in keys:
        model["contrastive_dim"] = c["contrastive_hidden_size"]
        model["contrastive_cross"] = "itc_cross_modal_head.fc.weight" in keys
        model["logit_scale_init"] = c["logit_scale_init_value"]
    return model


def hf_fusion_config(hf_config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]],
                     scan: bool = True) -> dict:
    """The vlfm model config for an HF ViLT or BridgeTower ``config.json``; ``shapes`` (the
    checkpoint's tensor names and shapes) decide the heads and their sizes."""
    kind = hf_config.get("model_type")
    if kind == "vilt":
        return _vilt_config(hf_config, shapes, scan)
    if kind == "bridgetower":
        return _bridgetower_config(hf_config, shapes, scan)
    raise ValueError(f"unsupported fusion model_type {kind!r}; supported: vilt, bridgetower")


def _vilt_rows(model: Mapping[str, Any], prefix: str) -> list:
    rows = _expand(VILT_TOP, prefix, "") + _layers(VIT_LAYER, model["depth"], prefix + "encoder.layer.{i}", "")
    rows += _expand(MLM_TRANSFORM, "", "")
    rows += [("mlm_score.decoder.weight", "mlm_head/mlm_decoder/kernel", "linear"),
             ("mlm_score.decoder.bias", "mlm_head/mlm_bias", "copy")]
    # One HF "classifier" maps to the head the config has (rows of an absent head are skipped).
    return rows + _expand(CLASSIFIER, "", "vqa_head/") + _expand(CLASSIFIER, "", "pair_head/")


def _bridgetower_rows(model: Mapping[str, Any], prefix: str) -> list:
    vision, text = prefix + "vision_model.visual.", prefix + "text_model."
    rows = (_expand(BT_VISION_TOP, vision, "image_tower/")
            + _layers(BT_VISION_LAYER, model["image"]["depth"], vision + "transformer.resblocks.{i}", "image_tower/")
            + _expand(BERT_TOP, text, "text_tower/")
            + _layers(BERT_LAYER, model["text"]["depth"], text + "encoder.layer.{i}", "text_tower/")
            + _expand(BT_TOP, prefix, ""))
    for i in range(model["depth"]):
        for side in ("text", "image"):
            rows += _expand(BT_CROSS_LAYER, f"{prefix}cross_modal_{side}_layers.{i}.",
                            f"fusion_layers/encoder/layer_{i}/{side}_layer/")
            if i:
                link = f"{prefix}cross_modal_{side}_link_tower.{i - 1}."
                rows += _expand((("LayerNorm", "ln", "norm"), ("scaled_factor", "scale", "tensor"),
                                 ("beta", "beta", "tensor")), link, f"fusion_layers/{side}_link_{i}/")
    rows += _expand(MLM_TRANSFORM, "", "")
    rows += [("mlm_score.decoder.weight", "mlm_head/mlm_decoder/kernel", "linear"),
             ("mlm_score.bias", "mlm_head/mlm_bias", "copy")]
    return rows + _expand(BT_HEADS, "", "")


def _split_in_proj(tensors: dict[str, np.ndarray]) -> None:
    """``attn.in_proj_{weight,bias}`` (q, k, v stacked) -> ``attn.{q,k,v}_proj.{weight,bias}``."""
    for key in [k for k in tensors if k.endswith((".attn.in_proj_weight", ".attn.in_proj_bias"))]:
        head, kind = key.rsplit(".in_proj_", 1)
        for name, part in zip(("q_proj", "k_proj", "v_proj"), np.split(tensors.pop(key), 3, axis=0)):
            tensors[f"{head}.{name}.{kind}"] = part


def _unscanned(model: Mapping[str, Any]) -> dict:
    cfg = dict(_plain(model), scan=False)
    for tower in ("text", "image"):
        if tower in cfg:
            cfg[tower] = dict(cfg[tower], scan=False)
    return cfg


def _dummy_batch(model: Mapping[str, Any]) -> dict:
    size = model["image_size"] if model["name"] == "vilt" else model["image"]["image_size"]
    image = jnp.zeros((1, size, size, 3), jnp.float32)
    return {"image": image, "image2": image, "text": jnp.zeros((1, 1), jnp.int32)}


def fusion_param_shapes(model: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Flat parameter shapes of a fusion model config, in the unscanned (``layer_{i}``) naming."""
    cfg = _unscanned(model)
    module = build_model(cfg)
    variables = jax.eval_shape(lambda: module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                                   _dummy_batch(cfg)))
    params = strip_boxes(variables["params"])  # no sharding constraints: this may run under a mesh
    return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}


@HF_LOADERS.register("vilt")
@HF_LOADERS.register("bridgetower")
def load_hf_fusion(path: str | os.PathLike, scan: bool = True) -> tuple[dict, dict]:
    """Reads an HF ViLT or BridgeTower checkpoint directory into ``(vlfm model config, params)``."""
    with open(os.path.join(path, CONFIG_NAME)) as f:
        hf_config = json.load(f)
    tensors = {k: v for k, v in _read_tensors(path).items()
               if not k.endswith(BUFFER_SUFFIXES + ("position_ids",))}
    kind = hf_config["model_type"]
    _split_in_proj(tensors)
    model = hf_fusion_config(hf_config, {k: v.shape for k, v in tensors.items()}, scan=scan)
    if kind == "vilt":
        prefix = _prefix(set(tensors), "vilt.")
        word = f"{prefix}embeddings.text_embeddings.word_embeddings.weight"
        if model.get("mlm") and "mlm_score.decoder.weight" not in tensors:
            tensors["mlm_score.decoder.weight"] = tensors[word]  # tied in HF, saved once
        rows = _vilt_rows(model, prefix)
    else:
        prefix = _prefix(set(tensors), "bridgetower.")
        word = f"{prefix}text_model.embeddings.word_embeddings.weight"
        if model.get("mlm") and "mlm_score.decoder.weight" not in tensors:
            tensors["mlm_score.decoder.weight"] = tensors[word]
        rows = _bridgetower_rows(model, prefix)
    flat = map_tensors(tensors, rows, fusion_param_shapes(model),
                       f"checkpoint {path} does not match the {kind} layout")
    if "logit_scale" in flat:  # HF does not clamp the temperature; never clamp below the loaded value
        model["max_logit_scale"] = max(math.log(100.0), float(flat["logit_scale"]))
    if scan:  # _stack_layers finds ".../encoder/layer_{i}/..." (towers and fusion layers); ViLT's encoder is top-level
        flat = {k[len("model/"):]: v for k, v in _stack_layers({f"model/{k}": v for k, v in flat.items()}).items()}
    return model, flax.traverse_util.unflatten_dict(flat, sep="/")


# ----------------------------------------------------------------------------------------------------
# Export


def _model_fields(model: Mapping[str, Any]) -> dict:
    """A model config with every field filled in (defaults from the model class)."""
    cls = MODELS.get(model["name"])
    fields = {f.name: f.default for f in dataclasses.fields(cls)
              if f.init and f.name not in ("parent", "name") and f.default is not dataclasses.MISSING}
    return {**fields, **model}


def _vilt_hf_config(m: Mapping[str, Any]) -> tuple[dict, str]:
    """(HF ``config.json`` content, HF class) for a filled-in vlfm ViLT config; refuses what HF lacks."""
    heads = [h for h in ("mlm", "vqa_answers", "pair_classes") if m[h]]
    unsupported = {k: m[k] for k, ok in (("itm", "none"), ("num_classes", 0), ("layer_scale", None),
                                         ("head_ln_eps", 1e-5)) if m[k] != ok}
    if unsupported or len(heads) > 1:
        raise ValueError(f"HF ViLT has no equivalent of {unsupported or {h: m[h] for h in heads}}: its classes "
                         f"carry at most one of mlm / vqa_answers / pair_classes, no ITM (2-way) or visual-"
                         f"entailment head, no layer scale, and head LayerNorms with eps 1e-5")
    config = dict(model_type="vilt", vocab_size=m["vocab_size"], type_vocab_size=m["type_vocab_size"],
                  modality_type_vocab_size=m["num_types"], max_position_embeddings=m["max_text_len"],
                  hidden_size=m["width"], num_hidden_layers=m["depth"], num_attention_heads=m["num_heads"],
                  intermediate_size=m["mlp_dim"], hidden_act=_hf_act(m["act"]),
                  hidden_dropout_prob=m["dropout_rate"], attention_probs_dropout_prob=m["attn_dropout_rate"],
                  initializer_range=m["init_std"] or 0.02, layer_norm_eps=m["ln_eps"], image_size=m["image_size"],
                  patch_size=m["patch_size"], num_channels=3, qkv_bias=m["qkv_bias"], max_image_length=-1,
                  num_images=-1, dtype="float32")
    cls = "ViltModel"
    if m["mlm"]:
        cls = "ViltForMaskedLM"
    elif m["vqa_answers"] or m["pair_classes"]:
        labels = m["vqa_answers"] or m["pair_classes"]
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
        cls = "ViltForQuestionAnswering" if m["vqa_answers"] else "ViltForImagesAndTextClassification"
        if m["pair_classes"]:
            config["num_images"] = 2
    return dict(config, architectures=[cls]), cls


@HF_SAVERS.register("vilt")
def save_hf_vilt(model_config: Mapping[str, Any], params: Any, path: str | os.PathLike,
                 run_record: Mapping[str, Any] | None = None) -> None:
    """Writes a vlfm ViLT as the HF ViLT class of its head (``ViltModel``, ``ViltForMaskedLM``,
    ``ViltForQuestionAnswering`` or, for NLVR2, ``ViltForImagesAndTextClassification``).

    vlfm's MLM decoder is its own parameter; when it equals the word embeddings the export ties them
    (HF saves them once), otherwise it writes both: transformers 5's ViltConfig forces
    ``tie_word_embeddings=True`` but, finding two different tensors, keeps them apart (with a warning),
    so HF computes with the decoder as trained.
    """
    m = _filled(_plain(model_config))
    hf_config, cls = _vilt_hf_config(m)
    flat = flat_params_matching(params, fusion_param_shapes(m))
    prefix = "" if cls == "ViltModel" else "vilt."
    tensors = rows_to_tensors(_vilt_rows(m, prefix), flat, cls)
    _check_expressed(m, _vilt_config(hf_config, {k: v.shape for k, v in tensors.items()}, scan=m["scan"]), "ViLT")
    if m["mlm"]:
        word = tensors[f"{prefix}embeddings.text_embeddings.word_embeddings.weight"]
        hf_config["tie_word_embeddings"] = bool(np.array_equal(tensors["mlm_score.decoder.weight"], word))
        if hf_config["tie_word_embeddings"]:
            del tensors["mlm_score.decoder.weight"]  # tied: HF saves the word embeddings once
    write_hf_dir(path, hf_config, tensors, model_config, run_record)


# Fields that change neither the function a model computes nor its parameters: ignored when an export
# checks that HF's config expresses the model.
_LAYOUT_FIELDS = ("scan", "remat", "attention", "dtype", "param_dtype", "collect_hidden", "attention_layers",
                  "attention_outputs", "drop_path_rate", "init_std", "max_logit_scale")


def _differences(want: Mapping[str, Any], got: Mapping[str, Any], where: str = "") -> dict:
    """Fields of the vlfm config ``want`` that the re-imported ``got`` does not reproduce."""
    out = {}
    for key in sorted(set(want) | set(got)):
        if key in _LAYOUT_FIELDS:
            continue
        a, b = want.get(key), got.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.update(_differences(a, b, f"{where}{key}."))
        elif a != b:
            out[f"{where}{key}"] = a
    return out


def _bridgetower_hf_config(m: Mapping[str, Any]) -> tuple[dict, str]:
    """(HF ``config.json`` content, HF class) for a filled-in vlfm BridgeTower config."""
    heads = [h for h, on in (("mlm", m["mlm"]), ("itm", m["itm"] != "none"), ("contrastive_dim", m["contrastive_dim"]))
             if on]
    others = {k: m[k] for k in ("vqa_answers", "num_classes", "pair_classes") if m[k]}
    if others or len(heads) > 1 or (m["contrastive_dim"] and not m["contrastive_cross"]):
        raise ValueError(f"HF BridgeTower has no equivalent of {others or {h: m[h] for h in heads}}: its classes "
                         f"carry at most one of mlm / itm / contrastive (with the cross-modal head), and no VQA, "
                         f"NLVR2 or classification head")
    text, image = m["text"], m["image"]
    text_config = dict(vocab_size=text["vocab_size"], hidden_size=text["width"], num_hidden_layers=text["depth"],
                       num_attention_heads=text["num_heads"], intermediate_size=text["mlp_dim"],
                       hidden_act=_hf_act(text["act"]), hidden_dropout_prob=text["dropout_rate"],
                       attention_probs_dropout_prob=text["attn_dropout_rate"],
                       max_position_embeddings=text["max_len"], type_vocab_size=text["type_vocab_size"],
                       layer_norm_eps=text["ln_eps"], pad_token_id=text["pos_offset"] - 1,
                       position_embedding_type="absolute", is_decoder=False)
    vision_config = dict(hidden_size=image["width"], num_hidden_layers=image["depth"], num_channels=3,
                         image_size=image["image_size"], patch_size=image["patch_size"],
                         layer_norm_eps=image["ln_eps"], share_layernorm=True, remove_last_layer=False,
                         stop_gradient=False)
    config = dict(model_type="bridgetower", hidden_size=m["width"], num_hidden_layers=m["depth"],
                  num_attention_heads=m["num_heads"], hidden_act=_hf_act(m["act"]), layer_norm_eps=m["bridge_ln_eps"],
                  link_tower_type=m["bridge"], share_cross_modal_transformer_layers=True,
                  share_link_tower_layers=False, tie_word_embeddings=False, text_config=text_config,
                  vision_config=vision_config, dtype="float32")
    cls = "BridgeTowerModel"
    if m["mlm"]:
        cls = "BridgeTowerForMaskedLM"
    elif m["itm"] != "none":
        cls = "BridgeTowerForImageAndTextRetrieval"
    elif m["contrastive_dim"]:
        cls = "BridgeTowerForContrastiveLearning"
        config.update(contrastive_hidden_size=m["contrastive_dim"], logit_scale_init_value=m["logit_scale_init"])
    return dict(config, architectures=[cls]), cls


def _filled(model: Mapping[str, Any]) -> dict:
    """A fusion model config with every model and tower field filled in with its default."""
    m = _model_fields(model)
    for side in ("text", "image"):
        if isinstance(m.get(side), Mapping):
            m[side] = _tower_fields(m[side])
    return m


@HF_SAVERS.register("bridgetower")
def save_hf_bridgetower(model_config: Mapping[str, Any], params: Any, path: str | os.PathLike,
                        run_record: Mapping[str, Any] | None = None) -> None:
    """Writes a vlfm BridgeTower as ``BridgeTowerModel``, ``BridgeTowerForMaskedLM``,
    ``BridgeTowerForImageAndTextRetrieval`` or ``BridgeTowerForContrastiveLearning``.

    HF ties more of the model together than vlfm (the fusion layers take the text tower's sizes, the
    vision tower is CLIP-shaped with 64-wide heads): the written config is read back through the
    importer and any field it does not reproduce is refused by name.
    """
    m = _filled(_plain(model_config))
    if m["itm"] != "none":
        m["itm"] = "random"  # how negatives are drawn is training only; HF has the head
    hf_config, cls = _bridgetower_hf_config(m)
    flat = flat_params_matching(params, fusion_param_shapes(m))
    prefix = "" if cls == "BridgeTowerModel" else "bridgetower."
    tensors = rows_to_tensors(_bridgetower_rows(m, prefix), flat, cls)
    _merge_in_proj(tensors)
    _check_expressed(m, _bridgetower_config(hf_config, _split_shapes(tensors), scan=m["scan"]), "BridgeTower")
    write_hf_dir(path, hf_config, tensors, model_config, run_record)


def _check_expressed(model: Mapping[str, Any], reread: Mapping[str, Any], family: str) -> None:
    """Refuses an export whose HF config, read back by the importer, is not the vlfm model."""
    wrong = _differences(model, _filled(reread))
    if wrong:
        raise ValueError(f"HF {family} cannot express these settings of the vlfm model: {wrong}")


def _merge_in_proj(tensors: dict[str, np.ndarray]) -> None:
    """The inverse of ``_split_in_proj``: ``attn.{q,k,v}_proj.{weight,bias}`` -> ``attn.in_proj_*``."""
    for key in [k for k in tensors if k.endswith(".attn.q_proj.weight") or k.endswith(".attn.q_proj.bias")]:
        head, kind = key.rsplit(".q_proj.", 1)
        parts = [tensors.pop(f"{head}.{name}.{kind}") for name in ("q_proj", "k_proj", "v_proj")]
        tensors[f"{head}.in_proj_{kind}"] = np.concatenate(parts, axis=0)


def _split_shapes(tensors: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    split = dict(tensors)
    _split_in_proj(split)
    return {k: v.shape for k, v in split.items()}


# ``init_from.rename`` pairs that start a ViLT from a ViT (an imported HF ViT or an ``image_classifier``
# run, whose tower sits under ``image_tower/``, or the tower's params alone): the patch and position
# embeddings, class token, encoder, final LayerNorm and pooler. ViLT-B/32 starts from ViT-B/32 at 384 px.
VIT_TO_VILT = ((r"^(image_tower/)?patch_embed/", "image_embed/patch_embed/"),
               (r"^(image_tower/)?cls$", "image_embed/cls"),
               (r"^(image_tower/)?pos_embed/", "image_embed/pos_embed/"),
               (r"^(image_tower/)?(encoder|ln_final|pooler)/", r"\2/"))


def vilt_params_from_vit(vilt_params: Mapping[str, Any], vit_params: Mapping[str, Any]) -> dict:
    """ViLT params with the image embedding, encoder, final LayerNorm and pooler taken from a ViT
    (``VIT_TO_VILT``; what ``config.init_from`` does with that ``rename``).

    Both must have the same width, depth and layer layout (scanned or not) and the same patch grid.
    """
    vilt = flax.core.unfreeze(strip_boxes(vilt_params))
    return merge_params(vilt, flax.core.unfreeze(strip_boxes(vit_params)), rename=VIT_TO_VILT)[0]
