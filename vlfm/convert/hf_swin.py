"""Import and export of HF Swin Transformer checkpoints (``model_type`` ``swin``).

``SwinModel`` (or ``SwinForImageClassification``, whose keys carry ``swin.`` plus a ``classifier``) becomes an
``image_classifier`` with a ``swin`` tower (``vlfm.models.swin``); ``save_hf_swin`` (which ``save_hf`` and
``python -m vlfm.convert export`` call for such a model) writes it back as ``SwinModel`` /
``SwinForImageClassification``. Files use the Hub's names (``attention.self.query``,
``attention.output.dense``, ``attention.self.relative_position_bias_table``, ``intermediate.dense``,
``output.dense``), which is also what transformers 5's ``save_pretrained`` writes; a file of transformers 5's
in-memory names (``attention.q_proj`` ..., ``mlp.fc1``) loads too. The ``relative_position_index``
buffers are derived from the window, never read.

HF uses ``layer_norm_eps`` in the blocks and the final norm but torch's default 1e-5 in the patch-embedding
and patch-merging norms; vlfm's tower has one ``ln_eps``, so other values are refused by name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vlfm.convert.hf import (CONFIG_NAME, HF_LOADERS, HF_SAVERS, _act, _expand, _hf_act, _plain, _read_tensors,
                             flat_params_matching, map_tensors, rows_to_tensors, square_size, write_hf_dir)
from vlfm.core.tree import strip_boxes
from vlfm.models import build_model

TORCH_LN_EPS = 1e-5
SWIN_TOP = (
    ("embeddings.patch_embeddings.projection", "patch_embed/proj", "conv"),
    ("embeddings.norm", "ln_embed", "norm"),
    ("embeddings.position_embeddings", "pos_embed/embedding", "batched"),
    ("layernorm", "ln_final", "norm"),
)
SWIN_BLOCK = (
    ("attention.self.query", "attn/query", "linear"),
    ("attention.self.key", "attn/key", "linear"),
    ("attention.self.value", "attn/value", "linear"),
    ("attention.output.dense", "attn/out", "linear_out"),
    ("attention.self.relative_position_bias_table", "attn/rel_pos_bias", "tensor"),
    ("layernorm_before", "ln1", "norm"),
    ("layernorm_after", "ln2", "norm"),
    ("intermediate.dense", "mlp/fc1", "linear"),
    ("output.dense", "mlp/fc2", "linear"),
)
SWIN_MERGE = (
    ("reduction", "reduction", "linear"),
    ("norm", "norm", "norm"),
)
# transformers 5's in-memory module names -> the file names
MODULE_NAMES = (
    (".attention.q_proj.", ".attention.self.query."),
    (".attention.k_proj.", ".attention.self.key."),
    (".attention.v_proj.", ".attention.self.value."),
    (".attention.o_proj.", ".attention.output.dense."),
    (".attention.relative_position_bias.relative_position_bias_table", ".attention.self.relative_position_bias_table"),
    (".mlp.fc1.", ".intermediate.dense."),
    (".mlp.fc2.", ".output.dense."),
)
_PAIR_RE = re.compile(r"^(.*stage_\d+)/pair_(\d+)/(.*)$")


def swin_rows(depths: tuple[int, ...], prefix: str = "", vlfm_prefix: str = "image_tower/") -> list:
    """(HF key, vlfm path, tensor kind) rows of a ``SwinModel`` with these stage depths (unscanned paths)."""
    rows = _expand(SWIN_TOP, prefix, vlfm_prefix)
    for s, depth in enumerate(depths):
        for j in range(depth):
            rows += _expand(SWIN_BLOCK, f"{prefix}encoder.layers.{s}.blocks.{j}.",
                            f"{vlfm_prefix}stage_{s}/pair_{j // 2}/block_{j % 2}/")
        if s < len(depths) - 1:
            rows += _expand(SWIN_MERGE, f"{prefix}encoder.layers.{s}.downsample.", f"{vlfm_prefix}merge_{s}/")
    return rows


def hf_swin_config(c: Mapping[str, Any], num_classes: int = 0, scan: bool = False) -> dict:
    """vlfm ``image_classifier`` config of an HF ``SwinConfig`` dict."""
    if c.get("num_channels", 3) != 3:
        raise ValueError(f"swin: only 3-channel images are supported, got num_channels={c['num_channels']}")
    eps = c.get("layer_norm_eps", TORCH_LN_EPS)
    if eps != TORCH_LN_EPS:
        raise ValueError(f"swin: layer_norm_eps={eps} differs from the patch norms' {TORCH_LN_EPS}; vlfm's Swin "
                         "tower has one ln_eps")
    tower = dict(name="swin", image_size=square_size("swin", c, "image_size"),
                 patch_size=square_size("swin", c, "patch_size"), embed_dim=c["embed_dim"],
                 depths=tuple(c["depths"]), num_heads=tuple(c["num_heads"]), window_size=c["window_size"],
                 mlp_ratio=float(c.get("mlp_ratio", 4.0)), qkv_bias=c.get("qkv_bias", True), ln_eps=eps,
                 act=_act(c.get("hidden_act", "gelu")), abs_pos_embed=c.get("use_absolute_embeddings", False),
                 dropout_rate=c.get("hidden_dropout_prob", 0.0),
                 attn_dropout_rate=c.get("attention_probs_dropout_prob", 0.0),
                 drop_path_rate=c.get("drop_path_rate", 0.0), init_std=c.get("initializer_range", 0.02),
                 num_classes=num_classes, scan=scan)
    return dict(name="image_classifier", image=tower)


def vlfm_to_hf_swin_config(model_config: Mapping[str, Any]) -> dict:
    """HF ``SwinConfig`` dict of a vlfm ``image_classifier`` with a ``swin`` tower; raises on what HF cannot
    express (CoSwin's convolutions, no patch norm, another LayerNorm epsilon, a pooled token in front)."""
    t = dict(model_config["image"])
    if t.get("name") != "swin":
        raise ValueError(f"only a 'swin' tower exports to HF SwinModel, got {t.get('name')!r}")
    for key, expected in (("embedding", "patch"), ("patch_norm", True), ("ln_eps", TORCH_LN_EPS), ("pool", "avg"),
                          ("prepend_pooled", False)):
        if t.get(key, expected) != expected:
            raise ValueError(f"HF SwinModel needs {key}={expected!r}, got {t[key]!r}")
    num_classes = t.get("num_classes", 0)
    c = dict(model_type="swin", architectures=["SwinForImageClassification" if num_classes else "SwinModel"],
             image_size=t.get("image_size", 224), patch_size=t.get("patch_size", 4), num_channels=3,
             embed_dim=t.get("embed_dim", 96), depths=list(t.get("depths", (2, 2, 6, 2))),
             num_heads=list(t.get("num_heads", (3, 6, 12, 24))), window_size=t.get("window_size", 7),
             mlp_ratio=t.get("mlp_ratio", 4.0), qkv_bias=t.get("qkv_bias", True),
             hidden_act=_hf_act(t.get("act", "gelu")), layer_norm_eps=TORCH_LN_EPS,
             use_absolute_embeddings=t.get("abs_pos_embed", False), hidden_dropout_prob=t.get("dropout_rate", 0.0),
             attention_probs_dropout_prob=t.get("attn_dropout_rate", 0.0),
             drop_path_rate=t.get("drop_path_rate", 0.0), initializer_range=t.get("init_std") or 0.02)
    if num_classes:
        c["num_labels"] = num_classes
        c["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_classes)}
        c["label2id"] = {f"LABEL_{i}": i for i in range(num_classes)}
    return c


def _param_shapes(model_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    cfg = dict(model_config, image=dict(model_config["image"], scan=False))
    size = cfg["image"].get("image_size", 224)
    batch = {"image": jnp.zeros((1, size, size, 3), jnp.float32)}
    params = strip_boxes(jax.eval_shape(lambda: build_model(cfg).init(jax.random.PRNGKey(0), batch))["params"])
    return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}


def stack_pairs(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``stage_{s}/pair_{i}/x`` -> ``stage_{s}/pairs/x`` with a leading pair axis (the scanned layout)."""
    out, groups = {}, {}
    for path, value in flat.items():
        m = _PAIR_RE.match(path)
        if m:
            groups.setdefault(f"{m[1]}/pairs/{m[3]}", {})[int(m[2])] = value
        else:
            out[path] = value
    for path, by_pair in groups.items():
        out[path] = np.stack([by_pair[i] for i in range(len(by_pair))])
    return out


def unstack_pairs(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of ``stack_pairs`` (params in either layout come out unscanned)."""
    out = {}
    for path, value in flat.items():
        head, sep, tail = path.partition("/pairs/")
        if sep and re.search(r"stage_\d+$", head):
            for i in range(value.shape[0]):
                out[f"{head}/pair_{i}/{tail}"] = value[i]
        else:
            out[path] = value
    return out


@HF_LOADERS.register("swin")
def load_hf_swin(path: str | os.PathLike, scan: bool = True) -> tuple[dict, dict]:
    """Reads an HF ``SwinModel`` / ``SwinForImageClassification`` directory into ``(model config, params)``."""
    with open(os.path.join(path, CONFIG_NAME)) as f:
        hf_config = json.load(f)
    tensors = {}
    for key, value in _read_tensors(path).items():
        if key.endswith("relative_position_index"):
            continue  # a buffer fixed by the window size
        for old, new in MODULE_NAMES:
            key = key.replace(old, new)
        tensors[key.removeprefix("swin.")] = value
    num_classes = int(tensors["classifier.weight"].shape[0]) if "classifier.weight" in tensors else 0
    model = hf_swin_config(hf_config, num_classes, scan=scan)
    rows = swin_rows(tuple(hf_config["depths"]))
    rows += _expand((("classifier", "image_tower/head", "linear"),), "", "")
    flat = map_tensors(tensors, rows, _param_shapes(model), f"checkpoint {path} does not match the swin layout")
    if scan:
        flat = stack_pairs(flat)
    return model, flax.traverse_util.unflatten_dict(flat, sep="/")


@HF_SAVERS.register("swin")
def save_hf_swin(model_config: Mapping[str, Any], params: Any, path: str | os.PathLike,
                 run_record: Mapping[str, Any] | None = None) -> None:
    """Writes ``config.json`` + ``model.safetensors`` that transformers loads as ``SwinModel`` (or
    ``SwinForImageClassification`` with a head), and ``vlfm_export.json``. Params in either layout."""
    model_config = _plain(model_config)
    hf_config = vlfm_to_hf_swin_config(model_config)
    flat = {k: np.asarray(v, np.float32)
            for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(strip_boxes(params)), sep="/").items()}
    flat = flat_params_matching(flax.traverse_util.unflatten_dict(unstack_pairs(flat), sep="/"),
                                _param_shapes(model_config))
    head = bool(model_config["image"].get("num_classes"))
    rows = swin_rows(tuple(hf_config["depths"]), "swin." if head else "")
    rows += _expand((("classifier", "image_tower/head", "linear"),), "", "")
    write_hf_dir(path, hf_config, rows_to_tensors(rows, flat, "swin"), model_config, run_record)
