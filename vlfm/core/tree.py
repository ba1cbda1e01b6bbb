"""Pure pytree helpers shared by training, conversion and evaluation: unboxing logical-axis metadata,
counting parameters, and merging one parameter tree into another by path."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util


def strip_boxes(tree: Any) -> Any:
    """Removes logical-axis boxes without applying their sharding constraints (safe outside jit)."""
    return jax.tree.map(lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, tree,
                        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _grown(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    extra = np.repeat(value[-1:], shape[0] - value.shape[0], axis=0)
    return np.concatenate([value, extra], axis=0)


def _square_grid(rows: int) -> tuple[int, int]:
    """(prefix tokens, grid side) of a position table of ``rows`` rows: a square grid after 0 or 1
    class rows."""
    for prefix in (0, 1):
        side = math.isqrt(rows - prefix)
        if side * side == rows - prefix:
            return prefix, side
    raise ValueError(f"a position table of {rows} rows is not a square grid (after 0 or 1 class rows)")


def resample_posemb(value: np.ndarray, rows: int) -> np.ndarray:
    """A learned 2-D position table ``[prefix + n*n, D]`` resampled bilinearly to ``rows`` rows (another
    image size or patch size), class rows kept; big_vision's choice of interpolation."""
    prefix, side = _square_grid(value.shape[0])
    new_prefix, new_side = _square_grid(rows)
    if new_prefix != prefix:
        raise ValueError(f"position tables with {prefix} and {new_prefix} class rows cannot be resampled into each other")
    grid = np.asarray(value[prefix:], np.float32).reshape(side, side, -1)
    grid = jax.image.resize(grid, (new_side, new_side, grid.shape[-1]), method="linear", antialias=False)
    return np.concatenate([np.asarray(value[:prefix], np.float32), np.asarray(grid).reshape(new_side ** 2, -1)], 0)


def inflate_kernel(kernel: np.ndarray, frames: int, how: str = "central") -> np.ndarray:
    """A 2-D patch kernel ``[p, p, C, D]`` as a tubelet kernel ``[frames, p, p, C, D]``: ``central``
    puts it on the middle frame and zeros elsewhere (ViViT's initialisation: the video model starts as
    the image model on the middle frame), ``average`` spreads it evenly over the frames (I3D's)."""
    kernel = np.asarray(kernel)
    if how == "central":
        out = np.zeros((frames,) + kernel.shape, kernel.dtype)
        out[frames // 2] = kernel
        return out
    if how == "average":
        return np.repeat(kernel[None] / frames, frames, axis=0).astype(kernel.dtype)
    raise ValueError(f"unknown kernel inflation {how!r}; valid: central, average")


def merge_params(target: Mapping[str, Any], source: Mapping[str, Any], *, skip: Sequence[str] = (),
                 rename: Sequence[tuple[str, str]] = (), grow_rows: Sequence[str] = (),
                 resample: Sequence[str] = (), inflate: Sequence[str] = ()) -> tuple[dict, dict]:
    """``target`` (the new model's params: arrays, possibly sharded) with ``source``'s values (host
    arrays) wherever paths match; returns ``(params, report)`` with the ``loaded``, ``fresh`` and
    ``unused`` paths. Loaded values take the target's dtype and sharding. Paths matching ``grow_rows``
    may gain rows (the last one repeated); paths matching ``resample`` are 2-D position tables that
    ``resample_posemb`` fits to the target's grid; paths matching ``inflate`` are 2-D patch kernels that
    become tubelet kernels (``inflate_kernel``, central frame)."""
    skip_res = [re.compile(p) for p in skip]
    grow_res = [re.compile(p) for p in grow_rows]
    resample_res = [re.compile(p) for p in resample]
    inflate_res = [re.compile(p) for p in inflate]
    renames = [(re.compile(p), r) for p, r in rename]
    src = {}
    for key, value in traverse_util.flatten_dict(dict(source), sep="/").items():
        for pattern, replacement in renames:
            key = pattern.sub(replacement, key)
        src[key] = value
    flat = traverse_util.flatten_dict(dict(target), sep="/")
    report: dict[str, list[str]] = {"loaded": [], "fresh": [], "unused": sorted(set(src) - set(flat))}
    wrong = []
    out = {}
    for key, current in flat.items():
        if key not in src or any(r.fullmatch(key) for r in skip_res):
            out[key] = current
            report["fresh"].append(key)
            continue
        value = np.asarray(src[key])
        shape = tuple(current.shape)
        if value.shape != shape:
            same_rows = value.ndim == len(shape) and value.shape[1:] == shape[1:]
            if value.shape == shape[1:] and any(r.fullmatch(key) for r in inflate_res):
                value = inflate_kernel(value, shape[0])
            elif same_rows and any(r.fullmatch(key) for r in resample_res):
                value = resample_posemb(value, shape[0])
            elif same_rows and value.shape[0] < shape[0] and any(r.fullmatch(key) for r in grow_res):
                value = _grown(value, shape)
            else:
                wrong.append(f"{key}: source {value.shape}, model {shape}")
                continue
        value = value.astype(current.dtype)
        sharding = getattr(current, "sharding", None)
        out[key] = jax.device_put(value, sharding) if sharding is not None else value
        report["loaded"].append(key)
    if wrong:
        raise ValueError("init_from: shapes differ (list them in init_from.skip to keep them fresh, in "
                         "init_from.grow_rows when only the first axis grew, or in init_from.resample when a 2-D "
                         "position table changed grid, or in init_from.inflate for a patch kernel become a tubelet "
                         "kernel):\n  " + "\n  ".join(wrong))
    if not report["loaded"]:
        raise ValueError("init_from: no parameter path of the source matches the model (check init_from.rename); "
                         f"source paths start {sorted(src)[:5]}, model paths {sorted(flat)[:5]}")
    return traverse_util.unflatten_dict(out, sep="/"), report
