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
from collections.abc import Mapping
from typing import Any

from vlfm.convert.hf import load_hf
from vlfm.core.checkpoint import load_params, load_params_from_checkpoint
from vlfm.core.tree import merge_params

log = logging.getLogger(__name__)

SOURCES = ("params", "checkpoint", "hf")
INIT_KEYS = SOURCES + ("skip", "rename", "grow_rows")


def _source_params(cfg: Mapping[str, Any]) -> tuple[str, Any]:
    given = [k for k in SOURCES if cfg.get(k)]
    if len(given) != 1:
        raise KeyError(f"init_from needs exactly one of {', '.join(SOURCES)}; got {given or 'none'}")
    kind, path = given[0], cfg[given[0]]
    if kind == "hf":
        return path, load_hf(path)[1]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"init_from.{kind}: no directory {path!r}")
    return path, (load_params(path) if kind == "params" else load_params_from_checkpoint(path))


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
