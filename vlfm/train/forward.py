"""The forward contract: how the train step, the initialiser and teachers call the model for a task.

A task's ``forward`` config (all keys optional) says which model method runs and with what:

- ``method``: the model method to call (None: ``__call__``). It is called as
  ``method(batch, train=..., **constants)``, plus ``task=<task name>`` when ``pass_task``;
- ``rngs``: the random streams the model may draw from with ``make_rng`` in training, each an
  independent key folded from the step's key (default: every standard stream, ``STREAMS``:
  ``dropout``; ``masking`` for input masking such as MAE/MLM; ``sampling`` for drawn pairs such as
  ITM negatives). A stream nobody draws from costs nothing. Evaluation passes no streams;
- ``mutable``: collections the method writes (``intermediates`` for sown attention maps, ``cache``);
  each comes back in the outputs under its own name (``outputs["intermediates"]``) for losses;
- ``constants``: keyword arguments that are the same for every batch of the task (e.g. a candidate
  label set). They never go into the batch, so micro-batching and sharding never split them;
- ``pass_task``: pass the task name as ``task=`` (e.g. PolyViT's head per task). Off by default so
  models whose methods take no ``task`` keep working.

The defaults reproduce the plain ``model.apply({"params": p}, batch, train=True, rngs=...)`` call.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax

STREAMS = ("dropout", "masking", "sampling")
FORWARD_KEYS = ("method", "rngs", "mutable", "constants", "pass_task")
_RESERVED_KWARGS = ("train", "task")


@dataclasses.dataclass(frozen=True)
class Forward:
    """One task's call of the model (see the module docstring)."""

    method: str | None = None
    rngs: tuple[str, ...] = STREAMS
    mutable: tuple[str, ...] = ()
    constants: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pass_task: bool = False

    def __post_init__(self):
        for field in ("rngs", "mutable"):
            names = getattr(self, field)
            if isinstance(names, str) or not all(isinstance(n, str) for n in names):
                raise TypeError(f"forward.{field} must be a sequence of names, got {names!r}")
            if "params" in names:
                raise ValueError(f"forward.{field} may not name 'params' (the trainer owns the parameters)")
            object.__setattr__(self, field, tuple(names))
        object.__setattr__(self, "constants", dict(self.constants))
        reserved = sorted(set(self.constants) & set(_RESERVED_KWARGS))
        if reserved:
            raise ValueError(f"forward.constants may not use the reserved argument names {reserved}")

    def check(self, model: nn.Module) -> None:
        """Fails early, naming the model, when ``method`` is not one of its methods."""
        if self.method is not None and not callable(getattr(type(model), self.method, None)):
            raise AttributeError(f"forward.method {self.method!r}: model {type(model).__name__} has no such method")

    def streams(self, rng: jax.Array) -> dict[str, jax.Array]:
        """An independent key per declared stream (fixed per name, so adding a stream changes no other)."""
        return {name: jax.random.fold_in(rng, zlib.crc32(name.encode()) & 0x7FFFFFFF) for name in self.rngs}

    def kwargs(self, task: str) -> dict[str, Any]:
        return dict(self.constants, **({"task": task} if self.pass_task else {}))

    def apply(self, model: nn.Module, params: Any, batch: Mapping[str, Any], *, task: str, train: bool,
              rng: jax.Array | None = None) -> dict:
        """The model's outputs, with each ``mutable`` collection added under its name. ``rng`` None: no
        streams (evaluation, teachers)."""
        rngs = self.streams(rng) if rng is not None else {}
        call = dict(train=train, rngs=rngs, method=self.method, **self.kwargs(task))
        if not self.mutable:
            return model.apply({"params": params}, batch, **call)
        outputs, state = model.apply({"params": params}, batch, mutable=list(self.mutable), **call)
        if not isinstance(outputs, Mapping):
            raise TypeError(f"forward.mutable {self.mutable} needs a model method that returns a dict; "
                            f"{type(model).__name__} returned {type(outputs).__name__}")
        clash = sorted(set(self.mutable) & set(outputs))
        if clash:
            raise ValueError(f"forward.mutable collections {clash} clash with output keys of the same name")
        return dict(outputs, **{name: state.get(name, {}) for name in self.mutable})

    def init_params(self, model: nn.Module, params_rng: jax.Array, streams_rng: jax.Array,
                    batch: Mapping[str, Any], *, task: str) -> Any:
        """The parameters this forward creates in training mode (train-only modules included)."""
        rngs = dict(self.streams(streams_rng), params=params_rng)
        variables = model.init(rngs, batch, train=True, method=self.method, **self.kwargs(task))
        return variables.get("params", {})


def parse_forward(cfg: Mapping[str, Any] | None, where: str) -> Forward:
    """A ``Forward`` from a ``forward`` config dict; unknown keys fail naming the valid ones."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(FORWARD_KEYS))
    if unknown:
        raise KeyError(f"{where}: forward has unknown keys {unknown}; valid keys: {', '.join(FORWARD_KEYS)}")
    if "rngs" in cfg:
        cfg["rngs"] = _names(cfg["rngs"], f"{where}: forward.rngs")
    if "mutable" in cfg:
        cfg["mutable"] = _names(cfg["mutable"], f"{where}: forward.mutable")
    if "constants" in cfg:
        cfg["constants"] = dict(cfg["constants"] or {})
    if "pass_task" in cfg:
        cfg["pass_task"] = bool(cfg["pass_task"])
    return Forward(**cfg)


def _names(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):  # a lone string would otherwise become its characters
        raise TypeError(f"{what} must be a list of names, got the string {value!r}")
    return tuple(value or ())
