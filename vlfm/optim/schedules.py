"""Learning-rate schedules from config, all built from optax schedules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

SCHEDULES = ("constant", "cosine", "linear", "rsqrt")
SCHEDULE_KEYS = ("name", "peak", "warmup_steps", "end", "timescale")  # every key build_schedule reads


def build_schedule(cfg: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """``cfg``: ``name``, ``peak`` (learning rate), ``warmup_steps``, ``end`` (final lr, for decays),
    ``timescale`` (rsqrt). Warm-up is linear from 0 in every schedule."""
    cfg = dict(cfg)
    name = cfg.pop("name", "cosine")
    peak = float(cfg.pop("peak"))
    warmup = int(cfg.pop("warmup_steps", 0))
    end = float(cfg.pop("end", 0.0))
    timescale = int(cfg.pop("timescale", 10_000))
    if cfg:
        raise KeyError(f"unknown schedule keys {sorted(cfg)}; valid: {', '.join(SCHEDULE_KEYS)}")
    decay_steps = max(total_steps - warmup, 1)
    if name == "constant":
        main = optax.constant_schedule(peak)
    elif name == "cosine":
        main = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
    elif name == "linear":
        main = optax.linear_schedule(peak, end, decay_steps)
    elif name == "rsqrt":
        main = lambda step: peak * (timescale / (step + timescale)) ** 0.5  # noqa: E731
    else:
        raise KeyError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])
