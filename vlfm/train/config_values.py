"""Range checks on config values, so a bad value fails before anything starts, naming its key.

The schema (``vlfm.train.schema``) says which keys exist; this says which values the common keys may
take. Without it a negative batch size fails deep inside the data pipeline ("batch_size must be
positive") and a zero ``checkpoint_every`` at the first step, neither naming the config key. A rule
applies to its key name wherever it appears (``data.batch_size``, ``tasks.NAME.data.batch_size``,
``evals.NAME.data.batch_size``, ...), except inside model sections, whose fields the model checks.
``None`` (a key left unset) is always accepted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from vlfm.train.schema import ConfigError, is_section


@dataclasses.dataclass(frozen=True)
class Rule:
    """``check(value)`` is True for an accepted value; ``what`` says which values are accepted."""

    what: str
    check: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


POSITIVE_INT = Rule("a positive integer", lambda v: _is_int(v) and v > 0)
NON_NEGATIVE_INT = Rule("an integer >= 0", lambda v: _is_int(v) and v >= 0)
NON_NEGATIVE = Rule("a finite number >= 0", lambda v: _is_number(v) and v >= 0)
FRACTION = Rule("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1)

RULES: dict[str, Rule] = {
    # sizes and step counts
    "batch_size": POSITIVE_INT,
    "total_steps": POSITIVE_INT,
    "grad_accum_steps": POSITIVE_INT,
    "log_every": POSITIVE_INT,
    "checkpoint_every": POSITIVE_INT,
    "keep_checkpoints": POSITIVE_INT,
    "num_examples": POSITIVE_INT,
    "warmup_steps": NON_NEGATIVE_INT,
    "num_workers": NON_NEGATIVE_INT,
    "prefetch_to_device": NON_NEGATIVE_INT,  # 0 = off
    "every": NON_NEGATIVE_INT,  # evals: 0 = only at the end
    # learning rates and weights
    "peak": NON_NEGATIVE,
    "end": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "clip_norm": NON_NEGATIVE,  # 0 = off
    "weight": NON_NEGATIVE,
    "lr_multiplier": NON_NEGATIVE,
    # decays
    "ema_decay": FRACTION,
    "b1": FRACTION,
    "b2": FRACTION,
    "momentum": FRACTION,
}
SKIPPED_SECTIONS = ("model",)  # model and tower fields: the model's own dataclass checks them


def check_values(config: Mapping[str, Any] | ml_collections.ConfigDict, path: str = "") -> None:
    """Raises ConfigError on the first value (depth first) outside its key's range, naming the key."""
    for key, value in config.items():
        full = f"{path}.{key}" if path else str(key)
        if value is None:
            continue
        if is_section(value):
            if key not in SKIPPED_SECTIONS:
                check_values(value, full)
            continue
        rule = RULES.get(key)
        if rule is not None and not rule.check(value):
            raise ConfigError(f"config value {full}={value!r} is invalid: it must be {rule.what}")
