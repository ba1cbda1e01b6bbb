"""Starting a run from another run's parameters: fine-tuning a pretrained model on a downstream head.

``config.init_from`` names the source: ``params`` (a params export, ``WORKDIR/params``),
``checkpoint`` (a training run's ``WORKDIR/checkpoints``, latest step) or ``hf`` (an HF checkpoint
directory, converted on load). Every parameter of the new model whose path and shape match the
source is loaded; parameters the source lacks (a new VQA head) keep their fresh initialisation and
source parameters the model lacks (pretraining heads) are ignored. Both lists are logged.

Options: ``skip`` (path regexes kept freshly initialised even if the source has them), ``rename``
(``(regex, replacement)`` pairs applied to source paths, e.g. ``("image/encoder/(.*)", r"encoder/\\1")``)
and ``grow_rows`` (path regexes whose first axis may be longer in the new model: the source rows are
copied and the extra rows repeat the last one, e.g. ViLT's modality-type embedding growing a third
row for NLVR2's second image, as ViLT initialises it). Any other shape difference is an error naming
the parameter. A run that resumes from its own checkpoint ignores ``init_from``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from vlfm.train.checkpoint import load_params, load_params_from_checkpoint

log = logging.getLogger(__name__)

SOURCES = ("params", "checkpoint", "hf")
INIT_KEYS = SOURCES + ("skip", "rename", "grow_rows")


def _source_params(cfg: Mapping[str, Any]) -> tuple[str, Any]:
    given = [k for k in SOURCES if cfg.get(k)]
    if len(given) != 1:
        raise KeyError(f"init_from needs exactly one of {', '.join(SOURCES)}; got {given or 'none'}")
    kind, path = given[0], cfg[given[0]]
    if kind == "hf":
        from vlfm.convert.hf import load_hf

        return path, load_hf(path)[1]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"init_from.{kind}: no directory {path!r}")
    return path, (load_params(path) if kind == "params" else load_params_from_checkpoint(path))


def _grown(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    extra = np.repeat(value[-1:], shape[0] - value.shape[0], axis=0)
    return np.concatenate([value, extra], axis=0)


def merge_params(target: Mapping[str, Any], source: Mapping[str, Any], *, skip: Sequence[str] = (),
                 rename: Sequence[tuple[str, str]] = (), grow_rows: Sequence[str] = ()) -> tuple[dict, dict]:
    """``target`` (the new model's params: arrays, possibly sharded) with ``source``'s values (host
    arrays) wherever paths match; returns ``(params, report)`` with the ``loaded``, ``fresh`` and
    ``unused`` paths. Loaded values take the target's dtype and sharding."""
    skip_res = [re.compile(p) for p in skip]
    grow_res = [re.compile(p) for p in grow_rows]
    renames = [(re.compile(p), r) for p, r in rename]
    src = {}
    for key, value in traverse_util.flatten_dict(dict(source), sep="/").items():
        for pattern, replacement in renames:
            key = pattern.sub(replacement, key)
        src[key] = value
    flat = traverse_util.flatten_dict(dict(target), sep="/")
    report: dict[str, list[str]] = {"loaded": [], "fresh": [], "unused": sorted(set(src) - set(flat))}
    wrong = []
    out = {}
    for key, current in flat.items():
        if key not in src or any(r.fullmatch(key) for r in skip_res):
            out[key] = current
            report["fresh"].append(key)
            continue
        value = np.asarray(src[key])
        shape = tuple(current.shape)
        if value.shape != shape:
            growable = (any(r.fullmatch(key) for r in grow_res) and value.ndim == len(shape)
                        and value.shape[1:] == shape[1:] and value.shape[0] < shape[0])
            if not growable:
                wrong.append(f"{key}: source {value.shape}, model {shape}")
                continue
            value = _grown(value, shape)
        value = value.astype(current.dtype)
        sharding = getattr(current, "sharding", None)
        out[key] = jax.device_put(value, sharding) if sharding is not None else value
        report["loaded"].append(key)
    if wrong:
        raise ValueError("init_from: shapes differ (list them in init_from.skip to keep them fresh, or in "
                         "init_from.grow_rows when only the first axis grew):\n  " + "\n  ".join(wrong))
    if not report["loaded"]:
        raise ValueError("init_from: no parameter path of the source matches the model (check init_from.rename); "
                         f"source paths start {sorted(src)[:5]}, model paths {sorted(flat)[:5]}")
    return traverse_util.unflatten_dict(out, sep="/"), report


def init_params_from(cfg: Mapping[str, Any], params: Any) -> Any:
    """The model's freshly initialised ``params`` updated from ``cfg`` (``config.init_from``)."""
    cfg = {k: v for k, v in dict(cfg).items() if v is not None}
    unknown = sorted(set(cfg) - set(INIT_KEYS))
    if unknown:
        raise KeyError(f"init_from has unknown keys {unknown}; valid keys: {', '.join(INIT_KEYS)}")
    path, source = _source_params(cfg)
    merged, report = merge_params(params, source, skip=tuple(cfg.get("skip", ())),
                                  rename=tuple(tuple(r) for r in cfg.get("rename", ())),
                                  grow_rows=tuple(cfg.get("grow_rows", ())))
    log.info("init_from %s: loaded %d tensors; fresh: %s; unused from the source: %s", path, len(report["loaded"]),
             ", ".join(report["fresh"]) or "none", ", ".join(report["unused"]) or "none")
    return merged
