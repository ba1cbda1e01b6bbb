"""Frozen teacher models for knowledge distillation, restored and sharded like the student.

``config.teachers`` maps a name to either ``config`` (a vlfm config file whose ``model`` is the
teacher) or ``model`` (a model config), plus ``params`` (a params export, e.g. ``workdir/params``
of the run that trained it) or ``checkpoint`` (a training run's ``workdir/checkpoints``: its latest
step); or to ``workdir`` alone (a training run's workdir: the model of its resolved config, overrides
included, and its params export, else its latest checkpoint); or to ``hf`` alone (an HF checkpoint
directory, converted on load). Teachers
run inside the jitted step under ``stop_gradient``; their parameters are arguments of the step,
never captured constants.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from vlfm.convert.hf import load_hf
from vlfm.core.checkpoint import load_params, load_params_from_checkpoint
from vlfm.core.tree import strip_boxes
from vlfm.models import build_model
from vlfm.train.config import load_config_file, load_workdir_config
from vlfm.train.forward import Forward, parse_forward
from vlfm.train.schema import TEACHER_KEYS


@dataclasses.dataclass
class Teacher:
    name: str
    model: nn.Module
    params: Any
    forward: Forward = dataclasses.field(default_factory=Forward)


def _teacher_model_cfg(name: str, cfg: Mapping[str, Any]) -> dict:
    if "model" in cfg:
        return dict(cfg["model"])
    if "config" in cfg:
        return load_config_file(cfg["config"]).model.to_dict()
    if "workdir" in cfg:
        return load_workdir_config(cfg["workdir"]).model.to_dict()
    raise KeyError(f"teacher {name!r} needs 'config' (a config file), 'model' (a model config) or 'workdir' "
                   "(a training run)")


def _workdir_sources(name: str, cfg: dict) -> dict:
    """``workdir=DIR`` -> its params export (``DIR/params``), else its checkpoints (``DIR/checkpoints``)."""
    if "workdir" not in cfg:
        return cfg
    given = sorted(set(cfg) & {"config", "model", "params", "checkpoint", "hf"})
    if given:
        raise KeyError(f"teacher {name!r}: 'workdir' brings its own model and params; drop {given}")
    params, checkpoint = os.path.join(cfg["workdir"], "params"), os.path.join(cfg["workdir"], "checkpoints")
    if os.path.isdir(params):
        return dict(cfg, params=params)
    if os.path.isdir(checkpoint):
        return dict(cfg, checkpoint=checkpoint)
    raise FileNotFoundError(f"teacher {name!r}: workdir {cfg['workdir']!r} has neither params/ nor checkpoints/")


def build_teachers(teachers_cfg: Mapping[str, Mapping[str, Any]], example_batch: Mapping[str, np.ndarray], mesh,
                   rules) -> dict[str, Teacher]:
    """Builds each teacher and loads its parameters directly into their sharded layout."""
    teachers = {}
    for name, cfg in (teachers_cfg or {}).items():
        cfg = dict(cfg)
        unknown = sorted(set(cfg) - set(TEACHER_KEYS))
        if unknown:
            raise KeyError(f"teacher {name!r} has unknown keys {unknown}; valid keys: {', '.join(TEACHER_KEYS)}")
        cfg = _workdir_sources(name, cfg)
        if "hf" in cfg:
            model_cfg, host_params = load_hf(cfg["hf"])
            model = build_model(model_cfg)
        else:
            model = build_model(_teacher_model_cfg(name, cfg))
            host_params = None
        boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), dict(example_batch)))["params"]
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                strip_boxes(boxed), shardings)
        if host_params is not None:
            params = jax.tree.map(lambda x, a: jax.device_put(np.asarray(x, a.dtype), a.sharding), host_params, abstract)
        elif "checkpoint" in cfg:
            if not os.path.isdir(cfg["checkpoint"]):
                raise FileNotFoundError(f"teacher {name!r}: no checkpoint directory {cfg['checkpoint']!r}")
            params = load_params_from_checkpoint(cfg["checkpoint"], abstract)
        else:
            if "params" not in cfg:
                raise KeyError(f"teacher {name!r} needs 'params' (a params export), 'checkpoint' or 'hf'")
            if not os.path.isdir(cfg["params"]):
                raise FileNotFoundError(f"teacher {name!r}: no params export at {cfg['params']!r} "
                                        "(train the teacher first; its run writes WORKDIR/params)")
            params = load_params(cfg["params"], abstract)
        forward = parse_forward(cfg.get("forward"), f"teacher {name!r}")
        forward.check(model)
        teachers[name] = Teacher(name, model, params, forward)
    return teachers


def teacher_outputs(teachers: Mapping[str, Teacher], names, params: Mapping[str, Any], batch: dict,
                    task: str | None = None) -> dict:
    """``{"teacher/<name>": outputs}`` for the named teachers (eval mode, each through its forward),
    without gradients. ``task`` is the student's task, passed on when a teacher's forward asks for it."""
    out = {}
    for name in names:
        if name not in teachers:
            raise KeyError(f"unknown teacher {name!r}; configured teachers: {', '.join(sorted(teachers)) or '(none)'}")
        teacher = teachers[name]
        o = teacher.forward.apply(teacher.model, params[name], batch, task=task, train=False)
        out[f"teacher/{name}"] = jax.lax.stop_gradient(o)
    return out
