"""Starting a run from another run's parameters: fine-tuning a pretrained model on a downstream head.

``config.init_from`` names the source: ``params`` (a params export, ``WORKDIR/params``),
``checkpoint`` (a training run's ``WORKDIR/checkpoints``, latest step), ``hf`` (an HF checkpoint
directory, converted on load) or ``open_clip`` (an open_clip directory: ``open_clip_config.json`` +
``open_clip_model.safetensors``, CLIP or CoCa). Every parameter of the new model whose path and shape match the
source is loaded; parameters the source lacks (a new VQA head) keep their fresh initialisation and
source parameters the model lacks (pretraining heads) are ignored. Both lists are logged.

Options: ``skip`` (path regexes kept freshly initialised even if the source has them), ``rename``
(``(regex, replacement)`` pairs applied to source paths, e.g. ``("image/encoder/(.*)", r"encoder/\\1")``)
and ``grow_rows`` (path regexes whose first axis may be longer in the new model: the source rows are
copied and the extra rows repeat the last one, e.g. ViLT's modality-type embedding growing a third
row for NLVR2's second image, as ViLT initialises it) and ``resample`` (path regexes of 2-D position
tables resampled bilinearly to the new model's grid: a 224 px checkpoint in a 288 px model) and
``inflate`` (path regexes of 2-D patch kernels that become tubelet kernels, central frame: a video model
from an image checkpoint). Any other shape difference is an error naming the parameter. A run that resumes from its own checkpoint ignores ``init_from``.

Several sources (METER's CLIP image tower and RoBERTa text tower, say): ``sources`` is a list of
dicts, each with one of ``params`` / ``checkpoint`` / ``hf`` and its own ``skip`` / ``rename`` /
``grow_rows`` / ``resample`` / ``inflate``, merged in order. Each must load something, and a parameter two sources both load is
an error naming it (skip it in one of them): no source silently overwrites another.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from vlfm.convert.hf import load_hf
from vlfm.convert.open_clip import load_open_clip
from vlfm.core.checkpoint import load_params, load_params_from_checkpoint
from vlfm.core.tree import merge_params

log = logging.getLogger(__name__)

SOURCES = ("params", "checkpoint", "hf", "open_clip")
MERGE_KEYS = ("skip", "rename", "grow_rows", "resample", "inflate")
INIT_KEYS = SOURCES + MERGE_KEYS + ("sources",)


def has_source(cfg: Mapping[str, Any]) -> bool:
    """Whether ``config.init_from`` names anything to start from."""
    return any(cfg.get(k) for k in SOURCES) or bool(cfg.get("sources"))


def _source_params(cfg: Mapping[str, Any]) -> tuple[str, Any]:
    given = [k for k in SOURCES if cfg.get(k)]
    if len(given) != 1:
        raise KeyError(f"init_from needs exactly one of {', '.join(SOURCES)}; got {given or 'none'}")
    kind, path = given[0], cfg[given[0]]
    if kind == "hf":
        return path, load_hf(path)[1]
    if kind == "open_clip":
        return path, load_open_clip(path)[1]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"init_from.{kind}: no directory {path!r}")
    return path, (load_params(path) if kind == "params" else load_params_from_checkpoint(path))


def _merge_one(cfg: Mapping[str, Any], params: Any, where: str) -> tuple[Any, dict]:
    unknown = sorted(set(cfg) - set(SOURCES + MERGE_KEYS))
    if unknown:
        raise KeyError(f"{where} has unknown keys {unknown}; valid keys: {', '.join(SOURCES + MERGE_KEYS)}")
    path, source = _source_params(cfg)
    merged, report = merge_params(params, source, skip=tuple(cfg.get("skip", ())),
                                  rename=tuple(tuple(r) for r in cfg.get("rename", ())),
                                  grow_rows=tuple(cfg.get("grow_rows", ())), resample=tuple(cfg.get("resample", ())),
                                  inflate=tuple(cfg.get("inflate", ())))
    log.info("%s %s: loaded %d tensors; fresh: %s; unused from the source: %s", where, path, len(report["loaded"]),
             ", ".join(report["fresh"]) or "none", ", ".join(report["unused"]) or "none")
    return merged, report


def init_params_from(cfg: Mapping[str, Any], params: Any) -> Any:
    """The model's freshly initialised ``params`` updated from ``cfg`` (``config.init_from``)."""
    cfg = {k: v for k, v in dict(cfg).items() if v is not None and not (k == "sources" and not v)}
    unknown = sorted(set(cfg) - set(INIT_KEYS))
    if unknown:
        raise KeyError(f"init_from has unknown keys {unknown}; valid keys: {', '.join(INIT_KEYS)}")
    if "sources" not in cfg:
        return _merge_one(cfg, params, "init_from")[0]
    alongside = sorted(k for k in cfg if k != "sources" and (k in SOURCES or cfg[k]))
    if alongside:
        raise KeyError(f"init_from.sources lists every source with its own options; {alongside} belong inside "
                       "one of them")
    loaded_by: dict[str, int] = {}
    for i, source_cfg in enumerate(cfg["sources"]):
        source_cfg = {k: v for k, v in dict(source_cfg).items() if v is not None}
        params, report = _merge_one(source_cfg, params, f"init_from.sources[{i}]")
        both = sorted(k for k in report["loaded"] if k in loaded_by)
        if both:
            raise ValueError(f"init_from.sources[{i}] loads parameters that sources[{loaded_by[both[0]]}] loaded "
                             f"already: {', '.join(both[:10])}{' ...' if len(both) > 10 else ''} (skip them in one)")
        loaded_by.update((k, i) for k in report["loaded"])
    return params
