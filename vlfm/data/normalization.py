"""Image normalisation as its own stage: pipelines keep images uint8 and declare their statistics.

Image fields (``image``, ``image2``, a video's frames) leave the host as uint8 (4x fewer bytes than
float32, and no per-pixel float work in the data workers); a dataset names each such key's per-channel
``(mean, std)`` (on the [0, 1] scale) in ``info["normalize"]``. The same float32 operations then run on
the host (``host_normalize``: evaluation, inspection, ``data.normalize_on_device=False``) or inside the
jitted train step (``device_normalize``): ``(x / 255 - mean) / std``, torchvision's two roundings. Only
uint8 arrays are normalised, so a value that is already float (a wrapped dataset, a mixture) is left
as it is and nothing is normalised twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vlfm.data import image_ops

NORMALIZE = "normalize"  # the info key: {batch key: (mean, std)}

Stats = Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]]


def host_normalize(example: Mapping[str, Any], stats: Stats) -> dict:
    """``example`` with each uint8 key of ``stats`` as normalised float32 (numpy)."""
    out = dict(example)
    for key, (mean, std) in stats.items():
        x = out.get(key)
        if isinstance(x, np.ndarray) and x.dtype == np.uint8:
            y = x.astype(np.float32)
            y /= np.float32(255.0)
            out[key] = image_ops.normalize(y, mean, std, inplace=True)
    return out


def device_normalize(batch: Mapping[str, Any], stats: Stats) -> dict:
    """``batch`` with each uint8 key of ``stats`` as normalised float32, traced (inside a jitted step)."""
    import jax.numpy as jnp

    out = dict(batch)
    for key, (mean, std) in stats.items():
        x = out.get(key)
        if x is not None and x.dtype == jnp.uint8:
            y = x.astype(jnp.float32) / jnp.float32(255.0)
            out[key] = (y - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return out


def merge(*specs: Stats | None) -> dict:
    """One ``info["normalize"]`` from several (fields of one processor); a key declared twice with other
    statistics is an error, naming it."""
    out: dict = {}
    for spec in specs:
        for key, (mean, std) in dict(spec or {}).items():
            value = (tuple(mean), tuple(std))
            if key in out and out[key] != value:
                raise ValueError(f"{key!r} is normalised with two statistics: {out[key]} and {value}")
            out[key] = value
    return out
