"""Registry of top-level models: each takes ``(batch, *, train)`` and returns a dict of outputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from vlfm.models.towers import TOWERS, build_module, build_tower
from vlfm.registry import Registry

MODELS: Registry[type[nn.Module]] = Registry("model")


def build_model(cfg: Mapping[str, Any]) -> nn.Module:
    """``cfg.name`` picks the model class; the other keys are its fields (typos fail with valid keys)."""
    cfg = dict(cfg)
    if "name" not in cfg:
        raise KeyError(f"the model config needs a 'name'; valid names: {', '.join(MODELS.names())}")
    model = build_module(MODELS.get(cfg.pop("name")), cfg)
    # Towers are built lazily inside the model; build them now so a typo fails before any compile.
    for value in cfg.values():
        if isinstance(value, Mapping) and value.get("name") in TOWERS:
            build_tower(value)
    return model
