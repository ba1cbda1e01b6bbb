"""Optimizers from config: optax chains with clipping, weight-decay masks and accumulation-free updates.

Gradient accumulation is done by the trainer (micro-batches scanned inside one step), so one
optimizer update is one training step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import optax
from flax import traverse_util

from vlfm.optim.layer_decay import layerwise_lr_decay
from vlfm.optim.param_groups import lr_multipliers
from vlfm.optim.schedules import build_schedule

# Parameters matching these path patterns get no weight decay: norms, biases, embeddings, scalars.
DEFAULT_NO_DECAY = (r".*bias$", r".*(ln|norm)[^/]*/.*", r".*(embed|cls|probe)[^/]*/.*", r".*logit_(scale|bias)$",
                    r".*/(ls1|ls2)$")
# Every key ``build_optimizer`` reads (the config schema checks optimizer sections against it).
OPTIMIZER_KEYS = ("name", "lr", "weight_decay", "no_decay", "clip_norm", "b1", "b2", "eps", "momentum", "mu_dtype",
                  "lr_multipliers", "layer_decay")


def path_mask(params: Any, patterns: Sequence[str], match_value: bool) -> Any:
    """A pytree of bools: ``match_value`` where the ``/``-joined path matches any pattern."""
    compiled = [re.compile(p) for p in patterns]
    flat = traverse_util.flatten_dict(params, sep="/")
    mask = {k: (match_value if any(c.fullmatch(k) for c in compiled) else not match_value) for k in flat}
    return traverse_util.unflatten_dict(mask, sep="/")


def build_optimizer(cfg: Mapping[str, Any], total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``cfg``: ``name`` (adamw, adam, sgd, lamb, adafactor), ``lr`` (a schedule config),
    ``weight_decay``, ``no_decay`` (path regexes), ``b1``, ``b2``, ``eps``, ``momentum``,
    ``clip_norm``, ``mu_dtype`` (e.g. bfloat16 for AdamW's first moment), ``lr_multipliers``
    (``(path regex, multiplier)`` pairs or a mapping: per-group learning-rate multipliers, see
    ``vlfm.optim.param_groups``), ``layer_decay`` (kwargs of ``vlfm.optim.layer_decay.layerwise_lr_decay``:
    ``{"decay": 0.65, "num_layers": 12}`` for BEiT-style fine-tuning)."""
    cfg = dict(cfg)
    name = cfg.pop("name", "adamw")
    schedule = build_schedule(cfg.pop("lr"), total_steps)
    weight_decay = float(cfg.pop("weight_decay", 0.0))
    no_decay = tuple(cfg.pop("no_decay", DEFAULT_NO_DECAY))
    clip_norm = cfg.pop("clip_norm", None)
    b1, b2, eps = float(cfg.pop("b1", 0.9)), float(cfg.pop("b2", 0.999)), float(cfg.pop("eps", 1e-8))
    momentum = cfg.pop("momentum", 0.9)
    mu_dtype = cfg.pop("mu_dtype", None)
    multipliers = cfg.pop("lr_multipliers", None)
    layer_decay = cfg.pop("layer_decay", None)
    if cfg:
        raise KeyError(f"unknown optimizer keys {sorted(cfg)}; valid: {', '.join(OPTIMIZER_KEYS)}")

    decay_mask = lambda params: path_mask(params, no_decay, match_value=False)  # noqa: E731
    if name == "adamw":
        opt = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask,
                          mu_dtype=mu_dtype)
    elif name == "adam":
        opt = optax.adam(schedule, b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype)
    elif name == "lamb":
        opt = optax.lamb(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    elif name == "sgd":
        opt = optax.chain(optax.add_decayed_weights(weight_decay, decay_mask),
                          optax.sgd(schedule, momentum=momentum))
    elif name == "adafactor":
        opt = optax.adafactor(schedule, weight_decay_rate=weight_decay or None, weight_decay_mask=decay_mask)
    else:
        raise KeyError(f"unknown optimizer {name!r}; valid: adamw, adam, lamb, sgd, adafactor")
    if multipliers:
        opt = optax.chain(opt, lr_multipliers(multipliers))
    if layer_decay:
        layer_decay = dict(layer_decay)
        missing = {"decay", "num_layers"} - set(layer_decay)
        if missing:
            raise KeyError(f"optimizer.layer_decay needs {sorted(missing)} (e.g. decay=0.65, num_layers=12)")
        opt = optax.chain(opt, layerwise_lr_decay(float(layer_decay.pop("decay")),
                                                  int(layer_decay.pop("num_layers")), **layer_decay))
    if clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(float(clip_norm)), opt)
    return opt, schedule


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """Exponential moving average of parameters (kept in the train state, float32)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema, params)
