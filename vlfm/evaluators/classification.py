"""Held-out accuracy of a model's own classifier or MLM head."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from vlfm.data.pipeline import build_dataset, eval_examples
from vlfm.evaluators.predict import predict_split
from vlfm.evaluators.registry import EVALUATORS


def view_starts(length: int, size: int, count: int) -> list[int]:
    """Starts of ``count`` windows of ``size`` spread evenly over ``length`` (first at 0, last at the end;
    one window: centred), as ViViT's and TimeSformer's multi-view tests place their clips and crops."""
    if size > length:
        raise ValueError(f"a view of {size} does not fit in {length}")
    if count == 1:
        return [(length - size) // 2]
    return [int(round(s)) for s in np.linspace(0, length - size, count)]


def clip_views(video: np.ndarray, frames: int | None, temporal: int, crop: int | None,
               spatial: int) -> list[np.ndarray]:
    """The views of a batch of videos ``[B, T, H, W, C]``: ``temporal`` clips of ``frames`` consecutive
    frames (evenly spaced), each cut into ``spatial`` square crops of ``crop`` (1: the centre; 3: the
    start, centre and end of the longer side, the shorter centred), in (clip, crop) order."""
    if video.ndim != 5:
        raise ValueError(f"multi-view classification takes videos [batch, frames, height, width, channels], "
                         f"got shape {video.shape}")
    _, t, h, w, _ = video.shape
    frames = t if frames is None else frames
    crop = min(h, w) if crop is None else crop
    if crop > min(h, w):
        raise ValueError(f"crop_size {crop} is larger than the frames ({h}x{w})")
    along_h = h > w
    long_starts = view_starts(h if along_h else w, crop, spatial)
    short_start = view_starts(w if along_h else h, crop, 1)[0]
    views = []
    for s in view_starts(t, frames, temporal):
        clip = video[:, s:s + frames]
        for ls in long_starts:
            y, x = (ls, short_start) if along_h else (short_start, ls)
            views.append(clip[:, :, y:y + crop, x:x + crop])
    return views


@EVALUATORS.register("classification")
class ClassificationEvaluator:
    """Top-1 accuracy of ``predict_fns[predict]`` (default ``logits``; PolyViT: ``logits/<task>``) against
    ``label`` on a held-out split.

    Multi-view video evaluation (ViViT, TimeSformer): with ``views > 1`` or ``spatial_crops > 1`` each
    video ``batch[input_key]`` ``[B, T, H, W, C]`` (read long: the data's ``num_frames`` is the span the
    views cover) is cut into ``views`` clips of ``view_frames`` consecutive frames, evenly spaced over
    it, each into ``spatial_crops`` (1 or 3) crops of ``crop_size`` (``clip_views``); the model runs on
    every view (one batch shape: each view is a batch of its own) and its logits are averaged over the
    views. Metrics then also give ``single_view_accuracy``: the centre clip's centre crop alone, and
    ``num_views``."""

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256, predict: str = "logits", views: int = 1,
                 view_frames: int | None = None, spatial_crops: int = 1, crop_size: int | None = None,
                 input_key: str = "video"):
        if predict not in predict_fns:
            raise KeyError(f"classification: the model has no predict function {predict!r}; it has "
                           f"{', '.join(sorted(predict_fns))}")
        if views < 1 or spatial_crops not in (1, 3):
            raise ValueError(f"classification: views must be >= 1 and spatial_crops 1 or 3, got {views} and "
                             f"{spatial_crops}")
        if views > 1 and view_frames is None:
            raise ValueError("classification: views > 1 needs view_frames (the frames of each clip)")
        self.multi_view = views > 1 or spatial_crops > 1 or view_frames is not None or crop_size is not None
        self.predict = predict_fns[predict]
        self.bundle, self.num_examples, self.batch_size = build_dataset(data, split), num_examples, batch_size
        self.views, self.view_frames, self.spatial_crops, self.crop_size = views, view_frames, spatial_crops, crop_size
        self.input_key = input_key

    def _view_logits(self, p: Any, b: Mapping[str, np.ndarray]) -> np.ndarray:
        """Logits of every view, ``[views * crops, B, classes]``."""
        if self.input_key not in b:
            raise KeyError(f"classification: multi-view needs the videos under input_key={self.input_key!r}; the "
                           f"batch has {', '.join(sorted(b))}")
        rest = {k: v for k, v in b.items() if k not in ("label", self.input_key)}
        return np.stack([np.asarray(self.predict(p, dict(rest, **{self.input_key: v}))) for v in
                         clip_views(b[self.input_key], self.view_frames, self.views, self.crop_size,
                                    self.spatial_crops)])

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        def predicted(p, b):
            return np.argmax(self.predict(p, {k: v for k, v in b.items() if k != "label"}), -1)

        def multi(p, b):
            logits = self._view_logits(p, b).astype(np.float32)
            centre = (self.views // 2) * self.spatial_crops + self.spatial_crops // 2
            return {"predicted": np.argmax(logits.mean(0), -1), "single": np.argmax(logits[centre], -1)}

        fns = {"out": multi if self.multi_view else predicted, "label": lambda p, b: b["label"]}
        out = predict_split(fns, params, eval_examples(self.bundle, self.num_examples), self.batch_size)
        if not self.multi_view:
            yield "accuracy", float(np.mean(out["out"] == out["label"]))
            return
        yield "accuracy", float(np.mean(out["out"]["predicted"] == out["label"]))
        yield "single_view_accuracy", float(np.mean(out["out"]["single"] == out["label"]))
        yield "num_views", float(self.views * self.spatial_crops)


@EVALUATORS.register("mlm_accuracy")
class MaskedTokenEvaluator:
    """Accuracy of ``predict_fns["mlm_logits"]`` on masked tokens of held-out text.

    The held-out split is masked once, with a fixed seed per example, so every evaluation of a run
    (and of every run, on any number of hosts) scores the same positions. Also reports the unigram
    baseline: the accuracy of always predicting the most frequent masked token of the held-out split.
    """

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256, seed: int = 0):
        self.predict = predict_fns["mlm_logits"]
        self.bundle = build_dataset(data, split)
        if self.bundle.raw_transform is None:
            raise ValueError("mlm_accuracy needs a data config that masks tokens (e.g. mlm_prob > 0)")
        if self.bundle.examples is None:
            raise ValueError("mlm_accuracy needs a random-access data set (its examples are masked by index)")
        n = len(self.bundle.examples)
        self.num_examples = n if num_examples is None else min(num_examples, n)
        self.batch_size, self.seed = batch_size, seed

    def _rows(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """This host's examples (every process_count-th), each masked with its own seed."""
        for i in range(jax.process_index(), self.num_examples, jax.process_count()):
            row = self.bundle.random_transform(self.bundle.examples[i], np.random.default_rng([self.seed, i]))
            yield i, {k: row[k] for k in ("text", "text_mask", "text_type_ids", "mlm_targets") if k in row}

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        def predicted(p, b):
            return np.argmax(self.predict(p, {k: v for k, v in b.items() if k != "mlm_targets"}), -1)

        out = predict_split({"predicted": predicted, "targets": lambda p, b: b["mlm_targets"]}, params,
                            self._rows(), self.batch_size)
        targets = out["targets"]
        valid = targets >= 0
        yield "accuracy", float(np.mean(out["predicted"][valid] == targets[valid]))
        yield "unigram_baseline", unigram_baseline(targets)


def unigram_baseline(targets: np.ndarray) -> float:
    """The accuracy of always predicting the most frequent masked token (targets < 0 are not masked)."""
    _, counts = np.unique(targets[targets >= 0], return_counts=True)
    return float(counts.max() / counts.sum()) if len(counts) else 0.0
