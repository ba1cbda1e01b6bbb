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
from vlfm.core.sharding import BATCH_AXES, DEFAULT_RULES, data_parallel_size
from vlfm.models.decoding import GenerateConfig, make_generate_fn
from vlfm.train.schema import ConfigError

TASK_DATA = "task:"  # an eval's ``data="task:NAME"`` reads the data config of task NAME
GENERATE = "generate"  # the predict function of models that follow the generation contract


def is_generative(model: nn.Module) -> bool:
    """Whether the model follows the generation contract (``vlfm.models.decoding``)."""
    return all(callable(getattr(model, name, None)) for name in ("generation_context", "decode_logits"))


def _pad_rows(batch: dict, multiple: int) -> tuple[dict, int]:
    """Rows padded (repeating the last) to a multiple of ``multiple``; returns the batch and its real rows."""
    rows = len(next(iter(batch.values())))
    pad = -rows % multiple
    if pad:
        batch = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in batch.items()}
    return batch, rows


def make_predict_fns(model: nn.Module, mesh: Mesh) -> dict[str, Callable]:
    """``fn(params, batch)`` for each of the model's ``PREDICT`` entries (for evaluators), and
    ``fns["generate"]`` for a model that follows the generation contract.

    ``batch`` holds this host's rows (numpy, the same row count on every host); they are laid out over
    the mesh's data-parallel axes as one global batch, and ``fn`` returns this host's rows of the outputs
    (a pytree of numpy arrays, dtypes kept). Rows are padded to a multiple of the host's data-parallel
    devices and the padding dropped, so any batch size works.

    ``fns["generate"](params, batch, options, rng=None, prompt=None) -> {"tokens", "lengths", "scores"}``
    (this host's rows, numpy): ``options`` is a dict of ``GenerateConfig`` fields (an unknown one fails
    naming the valid ones); ``batch`` holds what the model's ``generation_context`` reads (e.g. ``image``);
    ``prompt`` int32 [rows, P] right-padded with ``pad_id``; ``rng`` a key, needed by ``method="sample"``.
    It is built with ``make_generate_fn`` once per distinct options and compiled once per batch shape, so
    evaluators can generate without seeing the model. The logical-axis rules in force when this is called
    (the trainer's) shard the model as in training.
    """
    spec = PartitionSpec(tuple(a for a in BATCH_AXES if a in mesh.axis_names))
    multiple = max(1, data_parallel_size(mesh) // jax.process_count())
    fns = {}
    if is_generative(model):
        fns[GENERATE] = _generate_fn(model, mesh, spec, multiple)
    for name, fn in getattr(model, "PREDICT", {}).items():  # a class dict, or a property of the config (PolyViT)
        def predict(params, batch, fn=fn):
            return model.apply({"params": params}, batch, method=lambda m, b: fn(m, b))

        jitted = jax.jit(predict, out_shardings=NamedSharding(mesh, spec))

        def host_fn(params, batch, jitted=jitted):
            batch, rows = _pad_rows(batch, multiple)
            out = jitted(params, to_global(batch, mesh))
            local = multihost_utils.global_array_to_host_local_array(out, mesh, spec)
            return jax.tree.map(lambda x: np.asarray(x)[:rows], local)

        fns[name] = host_fn
    return fns


def _generate_fn(model: nn.Module, mesh: Mesh, spec: PartitionSpec, multiple: int) -> Callable:
    rules = tuple(nn.get_logical_axis_rules()) or DEFAULT_RULES
    compiled: dict[GenerateConfig, Callable] = {}

    def generate(params, batch, options: Mapping[str, Any], rng=None, prompt=None) -> dict[str, np.ndarray]:
        config = GenerateConfig.from_dict(dict(options))
        if config not in compiled:
            compiled[config] = make_generate_fn(model, config, mesh, rules=rules)
        inputs = dict(batch) if prompt is None else dict(batch, _prompt=np.asarray(prompt, np.int32))
        inputs, rows = _pad_rows(inputs, multiple)
        inputs = to_global(inputs, mesh)
        prompt = inputs.pop("_prompt", None)
        out = compiled[config](params, inputs, rng=rng, prompt=prompt)
        out = jax.device_put(out, NamedSharding(mesh, spec))
        local = multihost_utils.global_array_to_host_local_array(out, mesh, spec)
        return jax.tree.map(lambda x: np.asarray(x)[:rows], local)

    return generate


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
