"""Analytic forward FLOPs of the model families (``config.flops = "analytic"``; ``vlfm.core.flops``
explains the conventions and the traced count used by default).

Per example, multiply-add = 2 FLOPs, matmuls and attention only: the transformer layers
(``vlfm.core.flops.transformer_flops``); ViT patch embedding ``2*T*p*p*3*d``; classifier
``2*d*classes``; tanh pooler ``2*d*d``; a dual encoder's projections ``2*d*e`` per tower and its
contrastive logits ``2*B*e`` per example and direction (B the global batch); MLM head: transform
``2*T*d*d`` and decoder ``2*T*d*V``. Families registered outside this file give their own formula as a
``flops_per_example(cfg, text_len=, inputs=)`` static method of the model class (UFO, ViLT,
METER/BridgeTower).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlfm.core.flops import transformer_flops
from vlfm.models.registry import MODELS

TOWER_FORMULAS = ("vit", "text_transformer", "bert")


def tower_flops(cfg: Mapping[str, Any], text_len: int | None = None) -> tuple[float, int]:
    """Forward FLOPs of one tower for one example, and its output width."""
    name = cfg["name"]
    width, depth, mlp = cfg.get("width", 768), cfg.get("depth", 12), cfg.get("mlp_dim", 3072)
    if name == "vit":
        p, size = cfg.get("patch_size", 16), cfg.get("image_size", 224)
        patches = (size // p) ** 2
        tokens = patches + (1 if cfg.get("class_token", True) else 0)
        flops = 2 * patches * p * p * 3 * width + transformer_flops(tokens, width, depth, mlp)
        if cfg.get("pooler", "none") == "dense_tanh":
            flops += 2 * width * width
        if cfg.get("num_classes", 0):
            flops += 2 * width * cfg["num_classes"]
        return flops, width
    if name in ("text_transformer", "bert"):
        tokens = text_len or cfg.get("max_len", 77)
        flops = transformer_flops(tokens, width, depth, mlp)
        if name == "bert":
            if cfg.get("pooler", True):
                flops += 2 * width * width
            if cfg.get("mlm_head", False):
                flops += 2 * tokens * width * (width + cfg.get("vocab_size", 30522))
        return flops, width
    raise KeyError(f"no analytic FLOP formula for tower {name!r} (towers with one: {', '.join(TOWER_FORMULAS)}); "
                   "use config.flops='traced'")


def _dual_encoder(cfg: Mapping[str, Any], text_len: int | None, global_batch: int) -> float:
    e = cfg.get("embed_dim", 512)
    fi, wi = tower_flops(cfg["image"])
    ft, wt = tower_flops(cfg["text"], text_len)
    return fi + ft + 2 * (wi + wt) * e + 2 * 2 * global_batch * e


_FORMULAS = {
    "dual_encoder": _dual_encoder,
    "image_classifier": lambda cfg, text_len, global_batch: tower_flops(cfg["image"])[0],
    "text_encoder": lambda cfg, text_len, global_batch: tower_flops(cfg["text"], text_len)[0],
}


def analytic_models() -> list[str]:
    """Names of the registered models that have an analytic FLOP formula."""
    return sorted(n for n in MODELS.names() if n in _FORMULAS or hasattr(MODELS.get(n), "flops_per_example"))


def flops_per_example(model_cfg: Mapping[str, Any], *, text_len: int | None = None, global_batch: int = 1,
                      inputs: tuple[str, ...] = ()) -> float:
    """Analytic forward FLOPs per example of a top-level model config (``inputs``: the batch's keys, for
    models whose cost depends on which modalities a batch carries)."""
    name = model_cfg["name"]
    counter = getattr(MODELS.get(name), "flops_per_example", None)
    if counter is not None:  # model families outside this file count their own FLOPs
        return counter(model_cfg, text_len=text_len, inputs=inputs)
    if name in _FORMULAS:
        return _FORMULAS[name](model_cfg, text_len, global_batch)
    raise KeyError(f"no analytic FLOP formula for model {name!r} (models with one: {', '.join(analytic_models())}); "
                   "use config.flops='traced'")
