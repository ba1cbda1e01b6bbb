"""Captioning image files with a trained generative model (``python -m vlfm.caption``).

The model comes from the config, its weights from a params export (``export_params``, as the trainer
writes it to ``WORKDIR/params``) or a training workdir (its latest checkpoint, else its params export),
loaded onto the model's shardings as ``python -m vlfm.evaluate`` loads them: every parameter of the model
must be in the weights. Images are prepared as the config's data
prepares evaluation images (the dataset's ``info["preprocess_image"]``: the built-in shapes data squashes
to its ``image_size`` and scales to [-1, 1]; image fields resize or centre-crop and normalise with their
``eval_crop``), and generated ids become words with the data's own tokenizer.

The data is the one the config's first ``captioning`` eval reads (else ``config.data``), and that eval's
``generate`` options are the defaults that the caller's options override. As in the evaluator, ``bos_id``,
``eos_id`` and ``pad_id`` default to the tokenizer's and ``max_length`` to the data's ``max_len - 1``.

Bad input fails before the model is built, naming what is wrong: a missing image file, one that is not
a decodable image (every file is read first, so nothing is printed for a partly bad list), an unknown
decoding option (naming the valid ones).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from vlfm.core.sharding import make_mesh, rules_from_config
from vlfm.data.bad_data import BadData
from vlfm.data.pipeline import build_dataset
from vlfm.evaluate import abstract_params, load_weights, weights_source
from vlfm.models import build_model
from vlfm.models.decoding import GenerateConfig
from vlfm.train.config import ConfigError, validate_config
from vlfm.train.evaluation import GENERATE, eval_data, make_predict_fns

CAPTIONING = "captioning"  # the evaluator type whose data and options the command follows


class ImageFileError(ValueError):
    """An image file that cannot be decoded as an image."""


class OptionError(ValueError):
    """Decoding options that do not make a ``GenerateConfig`` (an unknown key, a bad value)."""


def captioning_setup(config: ml_collections.ConfigDict) -> tuple[dict, str, dict]:
    """``(data config, split, generate options)`` of the config's first captioning eval; without one,
    ``config.data``, its ``eval_split`` (default validation) and no options."""
    for name, cfg in (config.get("evals") or {}).items():
        if cfg.get("type", name) == CAPTIONING:
            return (eval_data(config, name, cfg.get("data")), cfg.get("split", "validation"),
                    dict(cfg.get("generate") or {}))
    return eval_data(config, CAPTIONING, None), config.data.get("eval_split", "validation"), {}


def check_files(paths: Sequence[str]) -> None:
    """Fails naming every missing image file."""
    if not paths:
        raise FileNotFoundError("no image files given")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"no image file {', '.join(repr(p) for p in missing)}")


def read_images(paths: Sequence[str], preprocess: Callable[[bytes], np.ndarray]) -> np.ndarray:
    """The files as model inputs [N, ...]; fails naming the first file that is not a decodable image."""
    check_files(paths)
    images = []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        try:
            images.append(preprocess(data))
        except BadData as e:
            raise ImageFileError(f"{path!r} is not a readable image ({e})") from e
    return np.stack(images)


def decode_options(config: ml_collections.ConfigDict, info: Mapping[str, Any],
                   options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``GenerateConfig`` fields to generate with: the tokenizer's ids and the data's length, then the
    config's captioning ``generate`` options, then ``options``; checked (an unknown one names the valid)."""
    tokenizer = info["tokenizer"]
    opts: dict[str, Any] = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    if "max_len" in info:
        opts["max_length"] = int(info["max_len"]) - 1
    opts.update(captioning_setup(config)[2])
    opts.update(options or {})
    try:
        GenerateConfig.from_dict(opts)
    except ValueError as e:
        raise OptionError(f"decoding options: {e}") from e
    return opts


def check_length(model: nn.Module, options: Mapping[str, Any]) -> None:
    """Fails (before any weights are read) when BOS + ``max_length`` tokens exceed the decoder's positions
    (``max_positions``, else the model's ``max_decode_length``), as generation itself would."""
    config = GenerateConfig.from_dict(options)
    limit = config.max_positions or getattr(model, "max_decode_length", None)
    if limit is not None and config.max_length + 1 > limit:
        raise OptionError(f"decoding options: max_length {config.max_length} + BOS exceeds the decoder's {limit} "
                          "positions: ask for fewer tokens")


def caption_images(config: ml_collections.ConfigDict, weights: Mapping[str, str] | str, paths: Sequence[str],
                   options: Mapping[str, Any] | None = None, *, seed: int = 0, batch_size: int = 8) -> list[str]:
    """One caption per image file, in order. ``weights``: a params export directory, or a source as
    ``vlfm.evaluate.weights_source`` gives it (``{"params" | "checkpoint" | "hf": path}``). ``options``
    (``GenerateConfig`` fields) override the config's captioning options; ``seed`` is for
    ``method="sample"`` (each batch folds in its first row's number)."""
    validate_config(config)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_files(paths)
    source = weights_source("params", weights) if isinstance(weights, str) else dict(weights)
    data, split, _ = captioning_setup(config)
    bundle = build_dataset(data, split)
    info = bundle.info
    for key in ("tokenizer", "preprocess_image"):
        if key not in info:
            raise ConfigError(f"data {bundle.name!r} offers no {key!r}: it cannot prepare image files or turn ids "
                              "into words")
    opts = decode_options(config, info, options)
    pixels = read_images(paths, info["preprocess_image"])
    rows = min(batch_size, len(pixels))  # one compiled shape: the last batch repeats its last image
    padded = np.concatenate([pixels, np.repeat(pixels[-1:], -len(pixels) % rows, axis=0)])

    mesh = make_mesh(config.mesh.shape, dcn_shape=config.mesh.get("dcn_shape"))
    rules = rules_from_config(config.mesh.get("rules", ()))
    model = build_model(config.model)
    check_length(model, opts)
    tokenizer = info["tokenizer"]
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        fns = make_predict_fns(model, mesh)
        if GENERATE not in fns:
            raise ConfigError(f"model {config.model.name!r} does not follow the generation contract "
                              "(generation_context and decode_logits): it cannot caption")
        params = load_weights(source, abstract_params(config, model, mesh, rules))
        captions = []
        for start in range(0, len(pixels), rows):
            rng = jax.random.fold_in(jax.random.key(seed), start) if opts.get("method") == "sample" else None
            out = fns[GENERATE](params, {"image": padded[start:start + rows]}, opts, rng=rng)
            captions += [tokenizer.decode([int(t) for t in row[:n]]) for row, n in zip(out["tokens"], out["lengths"])]
    return captions[:len(paths)]
