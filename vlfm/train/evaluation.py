"""Running evaluators from the trainer: predict functions from the model, evaluators from config."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from vlfm.evaluators import EVALUATORS


def make_predict_fns(model: nn.Module) -> dict[str, Callable]:
    """Jitted ``fn(params, batch)`` for each of the model's ``PREDICT`` entries (for evaluators)."""
    fns = {}
    for name, fn in getattr(type(model), "PREDICT", {}).items():
        def predict(params, batch, fn=fn):
            return model.apply({"params": params}, batch, method=lambda m, b: fn(m, b))
        # Replicated outputs: every process gets the whole result (multi-host runs read it on the host).
        fns[name] = jax.jit(predict, out_shardings=jax.sharding.PartitionSpec())
    return fns


def build_evaluators(config: ml_collections.ConfigDict, predict_fns: Mapping[str, Callable]) -> dict:
    """``config.evals``: name -> ``type`` (default: the name), ``every`` (steps) and the evaluator's
    own arguments; ``data`` defaults to ``config.data``."""
    evaluators = {}
    for name, cfg in config.evals.items():
        cfg = dict(cfg)
        kind = cfg.pop("type", name)
        every = cfg.pop("every", None)
        if "data" not in cfg:
            if not config.data.get("name"):
                raise KeyError(f"eval {name!r} needs a 'data' config (the run has several tasks)")
            cfg["data"] = dict(config.data)
        evaluators[name] = (EVALUATORS.get(kind)(predict_fns, **cfg), every)
    return evaluators


def run_evaluators(evaluators: Mapping[str, Any], params: Any, step: int, total_steps: int,
                   force: bool = False) -> dict[str, float]:
    results = {}
    for name, (evaluator, every) in evaluators.items():
        if force or (every and step % every == 0) or step == total_steps:
            start = time.perf_counter()
            for metric, value in evaluator.run(params):
                results[f"eval/{name}/{metric}"] = value
            results[f"eval/{name}/seconds"] = time.perf_counter() - start
    return results
