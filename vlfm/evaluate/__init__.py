"""Evaluation without training: a config's evaluators on given weights (``python -m vlfm.evaluate``).

The weights come from a params export (``--params``), a training checkpoint directory (``--checkpoint``,
its latest committed step), a workdir (``--workdir``: its latest checkpoint if any, else its params export),
an HF checkpoint (``--hf``, converted on load) or an open_clip directory (``--open_clip``, CLIP or CoCa).
They are loaded onto the model's shardings on the config's mesh, exactly as the trainer holds them, so the
metrics equal the trainer's evaluation of the same parameters. Every parameter of the model must be in the weights (a missing one is an error, never
random); weights the model lacks are logged. A ``progress`` observer (``vlfm.evaluate.progress``) sees
every evaluation batch go by.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax
from flax import traverse_util

from vlfm.core.checkpoint import COMMIT_MARKER
from vlfm.core.sharding import data_parallel_size, make_mesh, rules_from_config
from vlfm.core.tree import strip_boxes
from vlfm.evaluators.predict import observe_batches
from vlfm.models import build_model
from vlfm.train.config import ConfigError, apply_overrides, load_config, load_workdir_config, validate_config
from vlfm.train.evaluation import build_evaluators, make_predict_fns, run_evaluators
from vlfm.train.init_from import init_params_from
from vlfm.train.state import TaskInit, init_batch, state_initializer
from vlfm.train.tasks import build_tasks

log = logging.getLogger("vlfm")

WEIGHTS = ("workdir", "params", "checkpoint", "hf", "open_clip")


class WeightsError(ValueError):
    """The given weights do not hold every parameter of the config's model."""


def obtain_config(config_spec: str | None, overrides: Sequence[str] = (),
                  workdir: str | None = None) -> ml_collections.ConfigDict:
    """The config to evaluate with: the ``--config`` file plus overrides, or, without ``--config``, the
    resolved config a training run saved in its ``workdir`` (``WORKDIR/config.json``, with the run's own
    overrides) plus these overrides."""
    if config_spec:
        return load_config(config_spec, overrides)
    if not workdir:
        raise ConfigError("give --config, or --workdir of a run (its saved config.json is used)")
    return apply_overrides(load_workdir_config(workdir), overrides)


def _committed(path: str) -> bool:
    return os.path.exists(os.path.join(path, COMMIT_MARKER))


def weights_source(kind: str, path: str) -> dict[str, str]:
    """``(kind, path)`` from the command line -> an ``init_from``-style source ({"params" | "checkpoint" |
    "hf": path}); a workdir means its latest committed checkpoint if any, else its params export."""
    if kind not in WEIGHTS:
        raise ValueError(f"unknown weights kind {kind!r}; valid: {', '.join(WEIGHTS)}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--{kind}: no directory {path!r}")
    if kind != "workdir":
        return {kind: path}
    checkpoints = os.path.join(path, "checkpoints")
    if os.path.isdir(checkpoints) and any(
            name.isdigit() and _committed(os.path.join(checkpoints, name)) for name in os.listdir(checkpoints)):
        return {"checkpoint": checkpoints}
    if _committed(os.path.join(path, "params")):
        return {"params": os.path.join(path, "params")}
    raise FileNotFoundError(f"workdir {path!r} holds neither a committed checkpoint (checkpoints/<step>) nor a "
                            "params export (params/)")


def abstract_params(config: ml_collections.ConfigDict, model: nn.Module, mesh, rules) -> Any:
    """The model's parameters as ShapeDtypeStructs on their shardings (nothing is initialised): the union
    of what every task's forward creates in training mode, each with its own example, as the trainer does."""
    rows = data_parallel_size(mesh)
    tasks = [TaskInit(t.name, init_batch(t.example(), rows), t.forward) for t in build_tasks(config)]
    init = state_initializer(model, optax.identity(), tasks=tasks)
    boxed = jax.eval_shape(init, jax.random.key(0))["params"]
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), strip_boxes(boxed),
                        shardings)


def load_weights(source: Mapping[str, str], abstract: Any) -> Any:
    """The weights of ``source`` on the shardings of ``abstract``; fails when the model has parameters the
    weights lack (they would be left unset)."""
    params = init_params_from(dict(source), abstract)
    flat = traverse_util.flatten_dict(params, sep="/")
    missing = sorted(k for k, v in flat.items() if isinstance(v, jax.ShapeDtypeStruct))
    if missing:
        raise WeightsError(f"the weights in {next(iter(source.values()))} lack {len(missing)} parameters of the "
                         f"config's model (a different model?): {', '.join(missing[:10])}")
    return params


def evaluate(config: ml_collections.ConfigDict, source: Mapping[str, str],
             names: Sequence[str] | None = None, progress: Callable | None = None) -> dict[str, float]:
    """Runs the config's evaluators (or those in ``names``) on the weights of ``source``; returns the
    metrics keyed as the trainer logs them (``eval/<name>/<metric>``). ``progress``: a
    ``vlfm.evaluate.progress.ProgressReport`` (or any ``observe_batches`` observer) told about every batch."""
    validate_config(config)
    if not config.evals:
        raise ConfigError("the config has no evals (config.evals is empty): nothing to evaluate")
    if config.get("eval_with_ema"):
        log.warning("config.eval_with_ema is set: the trainer evaluates the EMA parameters, this evaluates the "
                    "given weights (params exports and checkpoints' params are the raw parameters)")
    mesh = make_mesh(config.mesh.shape, dcn_shape=config.mesh.get("dcn_shape"))
    rules = rules_from_config(config.mesh.get("rules", ()))
    model = build_model(config.model)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        evaluators = build_evaluators(config, make_predict_fns(model, mesh), names=list(names) if names else None)
        params = load_weights(source, abstract_params(config, model, mesh, rules))
        if progress is None:
            return run_evaluators(evaluators, params, step=0, total_steps=0, force=True)
        results = {}
        for i, (name, evaluator) in enumerate(evaluators.items(), 1):
            label = getattr(progress, "evaluator", None)
            with (label(name, i, len(evaluators)) if label else contextlib.nullcontext()), observe_batches(progress):
                results.update(run_evaluators({name: evaluator}, params, step=0, total_steps=0, force=True))
        return results
