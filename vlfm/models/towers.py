"""Registry of modality towers (image and text encoders) that larger models are built from."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from vlfm.registry import Registry

TOWERS: Registry[type[nn.Module]] = Registry("tower")


def build_module(cls: type[nn.Module], cfg: Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Instantiates a flax module from a config mapping; unknown keys fail with the valid names."""
    kwargs = dict(cfg)
    valid = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise KeyError(f"{cls.__name__} got unknown config keys {unknown}; valid keys: {', '.join(sorted(valid))}")
    kwargs.update(overrides)
    return cls(**kwargs)


def build_tower(cfg: Mapping[str, Any], **overrides: Any) -> nn.Module:
    """``cfg`` names its tower with ``name`` (``vit``, ``text_transformer``, ``bert``) plus its fields."""
    cfg = dict(cfg)
    if "name" not in cfg:
        raise KeyError(f"a tower config needs a 'name'; valid names: {', '.join(TOWERS.names())}")
    cls = TOWERS.get(cfg.pop("name"))
    return build_module(cls, cfg, **overrides)
