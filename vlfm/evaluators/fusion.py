"""Evaluators for fusion models: VQA accuracy, masked-token accuracy with the image, ITM accuracy and
image-text retrieval by ITM re-ranking of a dual encoder's top-k.

NLVR2 and visual entailment are classifications of the model's ``logits``: the ``classification``
evaluator scores them (its batches carry every input key, ``image2`` included).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from vlfm.core.checkpoint import load_params
from vlfm.data.pipeline import build_dataset, eval_examples
from vlfm.evaluators.classification import unigram_baseline
from vlfm.evaluators.predict import (eval_batches, gather_rows, predict_all, predict_rows, predict_split,
                                    process_sum)
from vlfm.evaluators.registry import EVALUATORS
from vlfm.evaluators.retrieval import recall_at_k
from vlfm.models import build_model


@EVALUATORS.register("vqa")
class VqaEvaluator:
    """VQA accuracy (the soft score of the predicted answer, VQAv2's metric) of ``vqa_logits`` on a
    held-out split with ``vqa_targets``; also the accuracy of always answering the most common
    answer (a prior baseline)."""

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256):
        self.predict = predict_fns["vqa_logits"]
        self.bundle, self.num_examples, self.batch_size = build_dataset(data, split), num_examples, batch_size

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        def score(p, b):
            logits = self.predict(p, {k: b[k] for k in ("image", "text", "text_mask") if k in b})
            return b["vqa_targets"][np.arange(len(logits)), np.argmax(logits, -1)]

        # Each host sums the targets of its own rows: the prior answer needs only the per-answer totals.
        index, rows = predict_rows({"score": score, "targets": lambda p, b: b["vqa_targets"]}, params,
                                   eval_batches(eval_examples(self.bundle, self.num_examples), self.batch_size))
        scores = gather_rows(index, rows["score"])
        totals = process_sum(rows["targets"].sum(0, dtype=np.float64))
        yield "accuracy", float(scores.mean())
        yield "prior_baseline", float(totals.max() / len(scores))


@EVALUATORS.register("vl_mlm_accuracy")
class VlMaskedTokenEvaluator:
    """Accuracy of ``mlm_logits`` on the masked tokens of held-out pairs (``mlm_text`` with the
    image, as the fusion models' MLM pass sees them), masked once with a fixed seed per example.
    ``unigram_baseline``: always predicting the most frequent masked token."""

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256):
        self.predict = predict_fns["mlm_logits"]
        self.bundle, self.num_examples, self.batch_size = build_dataset(data, split), num_examples, batch_size
        if "mlm_targets" not in self.bundle.example():
            raise ValueError("vl_mlm_accuracy needs data with mlm_text / mlm_targets (e.g. shapes_vl, mlm_prob > 0)")

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        def predicted(p, b):
            # The MLM pass reads mlm_text; "text" is kept too since the model encodes it for its other heads.
            return np.argmax(self.predict(p, {k: b[k] for k in ("image", "text", "text_mask", "mlm_text")}), -1)

        out = predict_split({"predicted": predicted, "targets": lambda p, b: b["mlm_targets"]}, params,
                            eval_examples(self.bundle, self.num_examples), self.batch_size)
        targets = out["targets"]
        valid = targets >= 0
        yield "accuracy", float(np.mean(out["predicted"][valid] == targets[valid]))
        yield "unigram_baseline", unigram_baseline(targets)


@EVALUATORS.register("itm_accuracy")
class ItmEvaluator:
    """ITM accuracy on held-out pairs: each pair once with its own image (match) and once with the
    image of a row ``shift`` away (no match); a pair counts as right when ``itm_score`` is positive
    for the match and negative for the mismatch. Also reports the match-vs-mismatch ranking accuracy.

    The mismatched images come from the host's own share of the split (on one host: the whole split).
    ``input_key``: the batch key of the visual input (``video`` for video-text matching)."""

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256, shift: int = 1, input_key: str = "image"):
        self.predict = predict_fns["itm_score"]
        self.bundle, self.num_examples, self.batch_size = build_dataset(data, split), num_examples, batch_size
        self.shift, self.input_key = shift, input_key

    def _rows(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """The host's pairs, each with the image of the pair ``shift`` rows before it (wrapping around)."""
        rows = list(eval_examples(self.bundle, self.num_examples))
        key = self.input_key
        for j, (i, row) in enumerate(rows):
            pair = {k: row[k] for k in (key, "text", "text_mask")}
            yield i, dict(pair, other_image=rows[(j - self.shift) % len(rows)][1][key])

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        key = self.input_key

        def scores(p, b):
            pair = {k: b[k] for k in (key, "text", "text_mask")}
            return self.predict(p, pair), self.predict(p, dict(pair, **{key: b["other_image"]}))

        pos, neg = predict_split({"scores": scores}, params, self._rows(), self.batch_size)["scores"]
        yield "accuracy", float(0.5 * (np.mean(pos > 0) + np.mean(neg < 0)))
        yield "ranking_accuracy", float(np.mean(pos > neg))


def _external_dual_encoder(cfg: Mapping[str, Any]) -> tuple[Callable, Callable, Any]:
    """``encode_image``/``encode_text`` fns and params of a separately trained dual encoder:
    ``{"model": <model config, or a JSON file of one>, "workdir": <its run> | "params": <params export>}``."""
    model_cfg = cfg["model"]
    if isinstance(model_cfg, str):
        with open(model_cfg) as f:
            model_cfg = json.load(f)
    path = cfg.get("params") or os.path.join(cfg["workdir"], "params")
    model = build_model(model_cfg)
    params = load_params(path)
    image = jax.jit(lambda p, b: model.apply({"params": p}, b["image"], method=type(model).encode_image))
    text = jax.jit(lambda p, b: model.apply({"params": p}, b["text"], b.get("text_mask"),
                                            method=type(model).encode_text))
    return image, text, params


@EVALUATORS.register("itm_rerank_retrieval")
class ItmRerankRetrievalEvaluator:
    """Image-text retrieval (R@1/5/10 both ways) by a dual encoder, then with its top ``k``
    candidates re-ranked by the fusion model's ``itm_score`` (``combine="itm"``, ALBEF) or by ITM score
    plus ``sim_weight`` times the dual encoder's cosine similarity (``combine="sum"``; BLIP adds the
    plain cosine, ``sim_weight=1``). ``sim_weight="logit_scale"`` weighs the cosine by the dual
    encoder's learned temperature (``exp(params["logit_scale"])``, capped at 100), so both terms are
    logits: the ITM log-odds plus the contrastive logit (a product of the two models' scores). At
    small scale the plain cosine (within [-1, 1]) hardly moves ITM log-odds of several units.

    ``score`` names the model's predict function that scores a pair (``itm_score``; R2D2 also has
    ``itm_score_text`` and ``itm_score_image``, one cross encoder each).

    The dual encoder is the model's own contrastive half (``encode_image``/``encode_text`` predict
    fns) or, with ``dual_encoder={"model": <config or JSON path>, "workdir" | "params": ...}``, a
    separately trained one (e.g. ``configs/clip_tiny.py``'s run). Candidates outside the top ``k``
    keep the dual encoder's order after the re-ranked ones. Reports ``dual_*`` (dual encoder alone)
    and the re-ranked ``i2t_r1`` ...
    """

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256, k: int = 10,
                 dual_encoder: Mapping[str, Any] | None = None, combine: str = "itm",
                 sim_weight: float | str = 1.0, score: str = "itm_score"):
        if combine not in ("itm", "sum"):
            raise ValueError(f"unknown combine {combine!r}; valid: itm (ALBEF), sum (BLIP: ITM + similarity)")
        if isinstance(sim_weight, str) and sim_weight != "logit_scale":
            raise ValueError(f"sim_weight is a number or 'logit_scale', got {sim_weight!r}")
        if score not in predict_fns or not score.startswith("itm_score"):
            valid = sorted(k for k in predict_fns if k.startswith("itm_score"))
            raise ValueError(f"score {score!r} is not a pair score of this model; valid: {', '.join(valid)}")
        self.itm_score, self.combine, self.sim_weight = predict_fns[score], combine, sim_weight
        if dual_encoder is not None:
            self.encode_image, self.encode_text, self.dual_params = _external_dual_encoder(dual_encoder)
        else:
            self.encode_image, self.encode_text, self.dual_params = (predict_fns["encode_image"],
                                                                     predict_fns["encode_text"], None)
        # Re-ranking scores any (image, caption) pair of the split, so every host holds all images and captions.
        pairs = predict_split({"pair": lambda p, b: {k: b[k] for k in ("image", "text", "text_mask")}}, None,
                              eval_examples(build_dataset(data, split), num_examples), batch_size)["pair"]
        self.images = pairs["image"]
        self.texts = {k: pairs[k] for k in ("text", "text_mask")}
        self.batch_size, self.k = batch_size, k

    def _weight(self, dual_params: Any) -> float:
        """The weight of the cosine similarity in ``combine="sum"``."""
        if self.sim_weight != "logit_scale":
            return float(self.sim_weight)
        if not isinstance(dual_params, Mapping) or "logit_scale" not in dual_params:
            raise ValueError("sim_weight='logit_scale' needs a dual encoder with a logit_scale parameter")
        return float(min(np.exp(float(np.asarray(dual_params["logit_scale"]))), 100.0))

    def _rerank(self, params: Any, sim: np.ndarray, images_first: bool, weight: float = 1.0) -> np.ndarray:
        """Scores (queries x candidates) that order each query's top k by ITM score, then the rest in
        the dual encoder's order (scores are minus the final position, so there are no ties)."""
        k = min(self.k, sim.shape[1])
        order = np.argsort(-sim, axis=1, kind="stable")
        top = order[:, :k]
        query = np.repeat(np.arange(len(sim)), k)
        image_idx, text_idx = (query, top.ravel()) if images_first else (top.ravel(), query)

        def itm_score(p, b):
            return self.itm_score(p, {"image": self.images[b["image"]], **{key: v[b["text"]]
                                                                        for key, v in self.texts.items()}})

        itm = predict_all(itm_score, params, {"image": image_idx, "text": text_idx}, self.batch_size)
        itm = itm.astype(np.float32).reshape(len(sim), k)
        if self.combine == "sum":
            itm = itm + weight * np.take_along_axis(sim, top, axis=1)
        top = np.take_along_axis(top, np.argsort(-itm, axis=1, kind="stable"), axis=1)
        order = np.concatenate([top, order[:, k:]], axis=1)
        out = np.empty(sim.shape, np.float32)
        np.put_along_axis(out, order, -np.arange(sim.shape[1], dtype=np.float32)[None], axis=1)
        return out

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        dual_params = params if self.dual_params is None else self.dual_params
        zi = predict_all(self.encode_image, dual_params, {"image": self.images}, self.batch_size)
        zt = predict_all(self.encode_text, dual_params, self.texts, self.batch_size)
        sim = zi.astype(np.float32) @ zt.astype(np.float32).T
        weight = self._weight(dual_params) if self.combine == "sum" else 0.0
        for direction, s in (("i2t", sim), ("t2i", sim.T)):
            for name, value in recall_at_k(s).items():
                yield f"dual_{direction}_{name}", value
            reranked = self._rerank(params, s, images_first=direction == "i2t", weight=weight)
            for name, value in recall_at_k(reranked).items():
                yield f"{direction}_{name}", value
        yield "chance_r1", 1.0 / len(sim)
