"""Running evaluators from the trainer (and ``python -m vlfm.evaluate``): predict functions from the
model, evaluators from config."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlfm.data import to_global
from vlfm.evaluators import EVALUATORS
from vlfm.core.sharding import BATCH_AXES, data_parallel_size
from vlfm.train.schema import ConfigError

TASK_DATA = "task:"  # an eval's ``data="task:NAME"`` reads the data config of task NAME


def make_predict_fns(model: nn.Module, mesh: Mesh) -> dict[str, Callable]:
    """``fn(params, batch)`` for each of the model's ``PREDICT`` entries (for evaluators).

    ``batch`` holds this host's rows (numpy, the same row count on every host); they are laid out over
    the mesh's data-parallel axes as one global batch, and ``fn`` returns this host's rows of the outputs
    (a pytree of numpy arrays, dtypes kept). Rows are padded to a multiple of the host's data-parallel
    devices and the padding dropped, so any batch size works.
    """
    spec = PartitionSpec(tuple(a for a in BATCH_AXES if a in mesh.axis_names))
    multiple = max(1, data_parallel_size(mesh) // jax.process_count())
    fns = {}
    for name, fn in getattr(type(model), "PREDICT", {}).items():
        def predict(params, batch, fn=fn):
            return model.apply({"params": params}, batch, method=lambda m, b: fn(m, b))

        jitted = jax.jit(predict, out_shardings=NamedSharding(mesh, spec))

        def host_fn(params, batch, jitted=jitted):
            rows = len(next(iter(batch.values())))
            pad = -rows % multiple
            if pad:
                batch = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in batch.items()}
            out = jitted(params, to_global(batch, mesh))
            local = multihost_utils.global_array_to_host_local_array(out, mesh, spec)
            return jax.tree.map(lambda x: np.asarray(x)[:rows], local)

        fns[name] = host_fn
    return fns


def eval_data(config: ml_collections.ConfigDict, name: str, data: Any) -> dict:
    """The data config of eval ``name``: its own ``data``, ``"task:NAME"`` (a task's data) or, in a
    single-task run only, ``config.data``. A multi-task run has no default: ``config.data`` is not what it
    trains on, and silently evaluating on it would report numbers for the wrong data."""
    tasks = dict(config.get("tasks") or {})
    if data is None:
        if tasks:
            raise ConfigError(f"eval {name!r} needs a 'data' config: this run has several tasks, so config.data is not "
                           f"its data; give data=dict(name=...) or data='{TASK_DATA}NAME' with NAME one of "
                           f"{', '.join(tasks)}")
        return dict(config.data)
    if isinstance(data, str):
        if not data.startswith(TASK_DATA):
            raise ConfigError(f"eval {name!r}: data {data!r} is neither a data config nor '{TASK_DATA}NAME'")
        task = data[len(TASK_DATA):]
        if task not in tasks:
            raise ConfigError(f"eval {name!r}: data {data!r} names no task; valid tasks: {', '.join(tasks) or 'none'}")
        return dict(tasks[task]["data"])
    return dict(data)


def build_evaluators(config: ml_collections.ConfigDict, predict_fns: Mapping[str, Callable],
                     names: list[str] | None = None) -> dict:
    """``config.evals``: name -> ``type`` (default: the name), ``every`` (steps) and the evaluator's
    own arguments; ``data`` as in ``eval_data``. ``names`` picks some of them (default: all)."""
    available = list(config.evals.keys())
    unknown = [n for n in names or () if n not in available]
    if unknown:
        raise ConfigError(f"unknown evals {unknown}; the config's evals: {', '.join(available) or 'none'}")
    evaluators = {}
    for name in names or available:
        cfg = dict(config.evals[name])
        kind = cfg.pop("type", name)
        every = cfg.pop("every", None)
        cfg["data"] = eval_data(config, name, cfg.get("data"))
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
