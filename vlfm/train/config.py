"""Configs: the base config every experiment starts from, loading config files, and overrides.

A config file defines ``get_config(arg: str | None = None) -> ml_collections.ConfigDict``; the
command line names it ``--config path.py[:arg]`` and overrides any field with ``--config.a.b=value``.
Overrides and config files are checked against the base config, so a typo fails at once with the
valid keys rather than being silently ignored.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
from ml_collections import ConfigDict

class ConfigError(ValueError):
    """A config key or override that does not exist, or a value that cannot be parsed."""


def base_config() -> ConfigDict:
    """Defaults shared by every experiment; a config file updates what it needs."""
    c = ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.grad_accum_steps = 1
    c.ema_decay = ml_collections.config_dict.placeholder(float)
    c.eval_with_ema = False
    c.model = ConfigDict()
    c.losses = ConfigDict()
    # Several objectives / data streams (vlfm.train.tasks); empty = one task from `data` and `losses`.
    c.tasks = ConfigDict()
    c.schedule = "round_robin"  # round_robin, uniform, weighted, accumulate, stages
    c.gradient_combiner = ConfigDict(dict(name="sum"))  # or gradient_masking (vlfm.optim.combine)
    c.teachers = ConfigDict()  # name -> config/model + params/hf (vlfm.train.teachers)
    # Fine-tuning: start from another run's params (vlfm.train.init_from); one of params/checkpoint/hf.
    c.init_from = ConfigDict(dict(params=None, checkpoint=None, hf=None, skip=(), rename=(), grow_rows=()))
    c.data = ConfigDict(dict(name="shapes", batch_size=256, num_workers=0, train_split="train"))
    # mu_dtype / lr_multipliers / layer_decay: None = off (vlfm.optim.optimizers.build_optimizer lists every key).
    c.optimizer = ConfigDict(dict(name="adamw", lr=dict(name="cosine", peak=1e-3, warmup_steps=100), weight_decay=0.1,
                                  clip_norm=1.0, mu_dtype=None, lr_multipliers=None, layer_decay=None))
    c.mesh = ConfigDict(dict(shape=(-1, 1, 1), rules=(), dcn_shape=None))  # dcn_shape: vlfm.core.sharding
    c.evals = ConfigDict()
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.async_checkpoints = True
    c.export_params = True
    c.peak_tflops = ml_collections.config_dict.placeholder(float)
    c.flops = "traced"  # model FLOPs for MFU: "traced" (any model) or "analytic" (vlfm.core.flops)
    c.profile_steps = ""  # "a,b": write a jax.profiler trace of steps a..b-1 into workdir/profile
    return c


def check_keys(config: ConfigDict) -> None:
    """Fails on top-level keys the base config does not know."""
    valid = set(base_config().keys())
    unknown = sorted(set(config.keys()) - valid)
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; valid top-level keys: {', '.join(sorted(valid))}")


def load_config_file(spec: str) -> ConfigDict:
    """``path.py`` or ``path.py:arg`` -> the file's ``get_config(arg)``."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"vlfm_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    check_keys(config)
    return config


def _parse_value(text: str, current: Any) -> Any:
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"expected a boolean, got {text!r}")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None or isinstance(current, str):
            return text
        raise ConfigError(f"cannot parse {text!r} as a {type(current).__name__}") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, (int, float)) and not isinstance(value, (int, float)) and current is not None:
        raise ConfigError(f"expected a {type(current).__name__}, got {text!r}")
    return value


def apply_override(config: ConfigDict, dotted: str, text: str) -> None:
    """Sets ``a.b.c`` from a command-line string; unknown keys fail with the valid names."""
    parts = dotted.split(".")
    node = config
    for i, key in enumerate(parts):
        where = ".".join(parts[:i]) or "the config"
        keys = list(node.keys())
        last = i == len(parts) - 1
        if key not in keys:
            raise ConfigError(f"unknown config key {dotted!r}: {where} has no {key!r}; "
                              f"valid keys: {', '.join(sorted(keys))}")
        if last:
            try:
                node[key] = _parse_value(text, node[key])
            except ConfigError as e:
                raise ConfigError(f"override {dotted}={text}: {e}") from None
            except TypeError as e:
                raise ConfigError(f"override {dotted}={text}: {e}") from None
            return
        if not isinstance(node[key], (ConfigDict, dict)):
            raise ConfigError(f"config key {'.'.join(parts[:i + 1])!r} is a value, not a section")
        node = node[key]


def load_config(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """A config file plus ``a.b=value`` overrides."""
    config = load_config_file(spec)
    with config.unlocked() if hasattr(config, "unlocked") else _noop():
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            apply_override(config, key, value)
    return config


class _noop:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
