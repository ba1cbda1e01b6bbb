"""Analytic model FLOPs, for throughput and model FLOPs utilisation (MFU).

Counted per example, forward pass, multiply-add = 2 FLOPs, matmuls and attention only:

- transformer layer on T tokens of width d with MLP width m:
  ``2*T*(4*d*d + 2*d*m)`` (q, k, v, out and the two MLP matrices) ``+ 4*T*T*d`` (scores and
  weighted sum; causal attention is counted in full, as is customary);
- ViT patch embedding ``2*T*p*p*3*d``; classifier ``2*d*classes``; tanh pooler ``2*d*d``;
- projections of a dual encoder ``2*d*e`` per tower, and the contrastive logits ``2*B*e`` per
  example and direction (B the global batch);
- MLM head: transform ``2*T*d*d`` and decoder ``2*T*d*V``.

A training step costs 3x the forward (backward = 2x forward); rematerialisation is not model FLOPs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per chip, by device kind (vendor figures, no sparsity).
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def transformer_flops(tokens: int, width: int, depth: int, mlp_dim: int) -> float:
    per_layer = 2 * tokens * (4 * width * width + 2 * width * mlp_dim) + 4 * tokens * tokens * width
    return float(depth * per_layer)


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
    raise KeyError(f"no FLOP count for tower {name!r}")


def model_flops_per_example(model_cfg: Mapping[str, Any], *, text_len: int | None = None,
                            global_batch: int = 1, inputs: tuple[str, ...] = ()) -> float:
    """Forward FLOPs per example of a top-level model config (``inputs``: the batch's keys, for
    models whose cost depends on which modalities a batch carries)."""
    name = model_cfg["name"]
    from vlfm.models import MODELS

    counter = getattr(MODELS.get(name), "flops_per_example", None) if name in MODELS else None
    if counter is not None:  # model families outside this file count their own FLOPs
        return counter(model_cfg, text_len=text_len, inputs=inputs)
    if name == "dual_encoder":
        e = model_cfg.get("embed_dim", 512)
        fi, wi = tower_flops(model_cfg["image"])
        ft, wt = tower_flops(model_cfg["text"], text_len)
        return fi + ft + 2 * (wi + wt) * e + 2 * 2 * global_batch * e
    if name == "image_classifier":
        return tower_flops(model_cfg["image"])[0]
    if name == "text_encoder":
        return tower_flops(model_cfg["text"], text_len)[0]
    raise KeyError(f"no FLOP count for model {name!r}")


def train_flops_per_example(model_cfg: Mapping[str, Any], **kwargs: Any) -> float:
    return 3.0 * model_flops_per_example(model_cfg, **kwargs)


def peak_flops_per_device(override: float | None = None) -> tuple[float | None, str]:
    """The chip's dense bf16 peak, from config or the device kind; None where unknown (e.g. CPU)."""
    if override:
        return float(override), "config"
    kind = jax.devices()[0].device_kind
    for key, value in PEAK_FLOPS.items():
        if key.lower() in kind.lower():
            return value, kind
    return None, kind


def measure_matmul_flops(dtype: str = "bfloat16", n: int | None = None, reps: int = 10) -> float:
    """Achieved FLOP/s of an n x n matmul on one device (median of ``reps`` timed runs): the MFU
    reference where no data-sheet peak is known (CPU), and the benchmark's measured peak."""
    if n is None:
        n = 1024 if jax.default_backend() == "cpu" else 8192
    # Uncommitted host-made arrays (this process's default device): inside a multi-process mesh context,
    # jax.random would make global arrays and committed single-device ones clash with the context mesh.
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((n, n), np.float32), dtype) for _ in range(2))
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times)
