"""Captioning image files with a trained generative model (``python -m vlfm.caption``).

The model comes from the config, its weights from a params export (as the trainer writes it, e.g.
``WORKDIR/params``). Images are prepared as the config's data prepares them (the dataset's
``info["preprocess_image"]``: the built-in shapes data squashes to its ``image_size`` and scales to
[-1, 1]; image fields resize or centre-crop and normalise as in evaluation) and generated ids become words
with the data's tokenizer. The data is the one the config's first ``captioning`` eval reads (else
``config.data``), and its ``generate`` options are the defaults that command-line options override.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from vlfm.core.checkpoint import load_params
from vlfm.core.sharding import make_mesh, rules_from_config
from vlfm.data.bad_data import BadData
from vlfm.data.pipeline import build_dataset
from vlfm.models import build_model
from vlfm.train.config import ConfigError, validate_config
from vlfm.train.evaluation import GENERATE, eval_data, make_predict_fns

CAPTIONING = "captioning"


def captioning_setup(config: ml_collections.ConfigDict) -> tuple[dict, str, dict]:
    """``(data config, split, generate options)`` of the config's first captioning eval, or ``config.data``
    (its ``eval_split``, default validation) and no options."""
    for name, cfg in (config.get("evals") or {}).items():
        if cfg.get("type", name) == CAPTIONING:
            return (eval_data(config, name, cfg.get("data")), cfg.get("split", "validation"),
                    dict(cfg.get("generate") or {}))
    return eval_data(config, CAPTIONING, None), config.data.get("eval_split", "validation"), {}


class ImageFileError(ValueError):
    """An image file that cannot be read as an image."""


def check_files(paths: Sequence[str]) -> None:
    """Fails naming every missing image file (before anything is loaded)."""
    if not paths:
        raise FileNotFoundError("no image files given")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"no image file {', '.join(repr(p) for p in missing)}")


def _prepare(preprocess, path: str) -> np.ndarray:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return preprocess(data)
    except BadData as e:
        raise ImageFileError(f"{path!r} is not a readable image ({e})") from e


def caption_images(config: ml_collections.ConfigDict, params_dir: str, paths: Sequence[str],
                   options: Mapping[str, Any] | None = None, *, seed: int = 0, batch_size: int = 8) -> list[str]:
    """One caption per image file, in order. ``options`` (``GenerateConfig`` fields) override the config's
    captioning options; ``bos_id``/``eos_id``/``pad_id`` default to the data tokenizer's and ``max_length`` to
    the data's ``max_len - 1``, as in the captioning evaluator."""
    check_files(paths)
    if not os.path.isdir(params_dir):
        raise FileNotFoundError(f"--params: no directory {params_dir!r}")
    validate_config(config)
    data, split, defaults = captioning_setup(config)
    bundle = build_dataset(data, split)
    info = bundle.info
    for key in ("tokenizer", "preprocess_image"):
        if key not in info:
            raise ConfigError(f"data {bundle.name!r} offers no {key!r}: it cannot prepare image files or read "
                              "captions")
    tokenizer = info["tokenizer"]
    opts = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    if "max_len" in info:
        opts["max_length"] = int(info["max_len"]) - 1
    opts.update(defaults)
    opts.update(options or {})
    pixels = np.stack([_prepare(info["preprocess_image"], p) for p in paths])
    mesh = make_mesh(config.mesh.shape, dcn_shape=config.mesh.get("dcn_shape"))
    rules = rules_from_config(config.mesh.get("rules", ()))
    model = build_model(config.model)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        fns = make_predict_fns(model, mesh)
        if GENERATE not in fns:
            raise ConfigError(f"model {config.model.name!r} does not follow the generation contract "
                              "(generation_context and decode_logits): it cannot caption")
        params = load_params(params_dir)
        captions = []
        for start in range(0, len(pixels), batch_size):
            rng = jax.random.fold_in(jax.random.key(seed), start)
            out = fns[GENERATE](params, {"image": pixels[start:start + batch_size]}, opts, rng=rng)
            captions += [tokenizer.decode([int(t) for t in row[:n]]) for row, n in zip(out["tokens"], out["lengths"])]
    return captions
