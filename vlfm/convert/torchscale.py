"""torchscale BEiT-3 multiway encoder -> ``MomeTransformer`` parameters (BEiT-3's multiway transformer).

torchscale's ``BEiT3`` (the library the official BEiT-3 code builds on) runs ``[image; text]`` through an
``Encoder`` whose every sublayer has an ``A`` (vision) and a ``B`` (language) copy. vlfm's
``MomeTransformer`` with ``multiway_attention=True, sub_ln=True, qkv_bias="qkv", layer_scale=None,
vl_depth=0`` is the same transformer with the modalities the other way round (``[text; image]``; text
``B`` -> ``*_text``, vision ``A`` -> ``*_image``): attention is order-free, so the outputs match position
for position once reordered. The embeddings (patch and token embeddings, the two absolute position
tables that start at row 2) stay outside: they are not part of the multiway transformer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

MODALITIES = {"A": "image", "B": "text"}


def _linear(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(w, np.float32).T)


def _ln(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {"scale": np.asarray(sd[f"{prefix}.weight"], np.float32),
            "bias": np.asarray(sd[f"{prefix}.bias"], np.float32)}


def beit3_encoder_to_mome(state_dict: Mapping[str, Any], num_heads: int, *, scan: bool = True,
                          prefix: str = "encoder.") -> dict:
    """The ``params`` tree of ``MomeTransformer(depth, num_heads, ..., multiway_attention=True, sub_ln=True,
    qkv_bias="qkv", layer_scale=None)`` from a torchscale ``Encoder`` state dict (tensors or arrays).

    Refuses what the MoME transformer cannot express (a relative-position bias table, layers without
    sub-LN), naming the keys."""
    sd = {k[len(prefix):]: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
          for k, v in state_dict.items() if k.startswith(prefix)}
    unsupported = sorted(k for k in sd if k.startswith("relative_position") or "layernorm_embedding" in k)
    if unsupported:
        raise ValueError(f"the MoME transformer has no counterpart for {unsupported}")
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    layers = []
    for i in range(depth):
        p = f"layers.{i}."
        sub_ln = (f"{p}self_attn.inner_attn_ln.A.weight", f"{p}ffn.A.ffn_layernorm.weight")
        missing = [k for k in sub_ln if k not in sd]
        if missing:
            raise ValueError(f"layer {i} is not a sub-LN multiway layer (missing {missing})")
        layer: dict[str, Any] = {}
        for tag, m in MODALITIES.items():
            width = sd[f"{p}self_attn.q_proj.{tag}.weight"].shape[1]
            head_dim = width // num_heads
            layer[f"ln1_{m}"] = _ln(sd, f"{p}self_attn_layer_norm.{tag}")
            layer[f"qkv_{m}"] = {
                name: {"kernel": _linear(sd[f"{p}self_attn.{t}_proj.{tag}.weight"]).reshape(width, num_heads, head_dim),
                       "bias": np.asarray(sd[f"{p}self_attn.{t}_proj.{tag}.bias"], np.float32).reshape(num_heads, head_dim)}
                for name, t in (("query", "q"), ("key", "k"), ("value", "v"))}
            layer[f"attn_ln_{m}"] = _ln(sd, f"{p}self_attn.inner_attn_ln.{tag}")
            layer[f"attn_out_{m}"] = {
                "kernel": _linear(sd[f"{p}self_attn.out_proj.{tag}.weight"]).reshape(num_heads, head_dim, width),
                "bias": np.asarray(sd[f"{p}self_attn.out_proj.{tag}.bias"], np.float32)}
            ffn = f"{p}ffn.{tag}."
            layer[f"ffn_{m}"] = {
                "ln": _ln(sd, f"{p}final_layer_norm.{tag}"),
                "mlp": {"fc1": {"kernel": _linear(sd[f"{ffn}fc1.weight"]), "bias": np.asarray(sd[f"{ffn}fc1.bias"])},
                        "sub_ln": _ln(sd, f"{ffn}ffn_layernorm"),
                        "fc2": {"kernel": _linear(sd[f"{ffn}fc2.weight"]), "bias": np.asarray(sd[f"{ffn}fc2.bias"])}}}
        layers.append(layer)
    params: dict[str, Any] = {}
    if scan:
        import jax

        params["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
    else:
        params.update({f"layer_{i}": layer for i, layer in enumerate(layers)})
    for tag, m in MODALITIES.items():
        if f"layer_norm.{tag}.weight" in sd:  # absent with normalize_output=False (then final_norm=False)
            params[f"ln_final_{m}"] = _ln(sd, f"layer_norm.{tag}")
    return params
