"""Built-in videos: one of the built-in shapes moving across a still background, with its direction,
speed, colour and shape as labels and a caption ("a red circle moving to the left").

Each clip is drawn from its own seeded generator (identical on every machine, any slice on its own):
a shape (7), colour (8) and size (2) as in ``vlfm.data.shapes``, a direction (left, right, up, down)
and a speed (slowly: a fifth of the side over the clip; quickly: nearly half), from a start that keeps
the whole path inside the frame, with a little jitter across the motion. The label is
``direction * 2 + speed`` (8 classes); ``color`` and ``shape`` come along for other tasks.
"""

from __future__ import annotations

import grain
import numpy as np

from vlfm.data import shapes
from vlfm.data.pipeline import DATASETS, DatasetBundle
from vlfm.data.tokenizers import WordTokenizer

DIRECTIONS = ("left", "right", "up", "down")
SPEEDS = ("slowly", "quickly")
TRAVEL = (0.2, 0.45)  # fraction of the side covered over the clip
SPLIT_SEEDS = {"train": 52361, "validation": 86243, "test": 3571}
CLASS_NAMES = tuple(f"moving {d} {s}" for d in DIRECTIONS for s in SPEEDS)
VIEWS = ("video_label", "video_caption")

_DIRECTION_WORDS = {"left": ("to the left", "left"), "right": ("to the right", "right"), "up": ("up", "upwards"),
                    "down": ("down", "downwards")}
_SPEED_WORDS = {"slowly": ("slowly",), "quickly": ("quickly", "fast")}
_FORMS = ("a {c} {s} moving {d}", "a {c} {s} moving {d} {v}", "a {c} {s} going {d} {v}")
_PROMPTS = ("a video of a shape {name}.", "something {name}.")
VOCAB = tuple(sorted({w for text in (*_FORMS, *_PROMPTS, *CLASS_NAMES, *shapes.SHAPES, *shapes.COLORS,
                                     *(p for ps in _DIRECTION_WORDS.values() for p in ps),
                                     *(p for ps in _SPEED_WORDS.values() for p in ps))
                      for w in text.replace(".", "").split() if "{" not in w}))


def _rng(split: str, index: int, stream: int = 0) -> np.random.Generator:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_SEEDS)}")
    return np.random.default_rng([SPLIT_SEEDS[split], index, stream])


def attributes(split: str, index: int) -> dict[str, int]:
    """direction, speed, shape, color and size of clip ``index`` of ``split``."""
    rng = _rng(split, index)
    return dict(direction=int(rng.integers(len(DIRECTIONS))), speed=int(rng.integers(len(SPEEDS))),
                shape=int(rng.integers(len(shapes.SHAPES))), color=int(rng.integers(len(shapes.COLORS))),
                size=int(rng.integers(len(shapes.SIZES))))


def clip(split: str, index: int, num_frames: int = 8, image_size: int = 32) -> np.ndarray:
    """``[num_frames, image_size, image_size, 3]`` uint8 frames of clip ``index`` of ``split``."""
    a = attributes(split, index)
    rng = _rng(split, index, 1)
    radius = 0.12 if a["size"] == 0 else 0.17
    travel = TRAVEL[a["speed"]]
    dx, dy = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1)}[a["direction"]]
    margin = radius + 0.02
    start = [rng.uniform(margin, 1 - margin), rng.uniform(margin, 1 - margin)]
    for axis, d in ((0, dx), (1, dy)):  # room for the whole path along the motion
        if d:
            lo, hi = (margin + travel, 1 - margin) if d < 0 else (margin, 1 - margin - travel)
            start[axis] = rng.uniform(lo, hi)
    rgb = shapes.COLOR_RGB[a["color"]] + rng.uniform(-12, 12, 3)
    still = shapes.background(rng, image_size)
    frames = np.empty((num_frames, image_size, image_size, 3), np.uint8)
    for t in range(num_frames):
        p = t / max(num_frames - 1, 1)
        wobble = rng.uniform(-0.01, 0.01, 2)
        cx, cy = start[0] + dx * travel * p + wobble[0], start[1] + dy * travel * p + wobble[1]
        frame = still.copy()
        shapes.draw(frame, shapes.SHAPES[a["shape"]], rgb, cx * image_size, cy * image_size, radius * image_size)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def caption(split: str, index: int) -> str:
    a = attributes(split, index)
    rng = _rng(split, index, 2)
    pick = lambda words: words[int(rng.integers(len(words)))]  # noqa: E731
    return pick(_FORMS).format(c=shapes.COLORS[a["color"]], s=shapes.SHAPES[a["shape"]],
                               d=pick(_DIRECTION_WORDS[DIRECTIONS[a["direction"]]]),
                               v=pick(_SPEED_WORDS[SPEEDS[a["speed"]]]))


VOCABS = ("own", "shapes")


def tokenizer(vocab: str = "own") -> WordTokenizer:
    """``own``: the clips' words alone; ``shapes``: the built-in shapes' vocabulary, then the clips' other
    words (so one text encoder reads the built-in images' and videos' texts with the same ids)."""
    if vocab == "own":
        return WordTokenizer(VOCAB)
    if vocab == "shapes":
        return WordTokenizer(list(shapes.VOCAB) + sorted(set(VOCAB) - set(shapes.VOCAB)))
    raise ValueError(f"unknown moving_shapes vocab {vocab!r}; valid: {', '.join(VOCABS)}")


class _Clips(grain.sources.RandomAccessDataSource):
    """index -> {"video" [-1, 1], "label", "direction", "speed", "color", "shape"(, "text", "text_mask")},
    generated on access."""

    def __init__(self, split: str, num_examples: int, num_frames: int, image_size: int, max_len: int | None,
                 vocab: str = "own"):
        self.split, self.num_examples, self.num_frames, self.image_size = split, num_examples, num_frames, image_size
        self.max_len, self.vocab = max_len, vocab

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        a = attributes(self.split, index)
        frames = clip(self.split, index, self.num_frames, self.image_size)
        out = {"video": frames.astype(np.float32) / 127.5 - 1.0,
               "label": np.int32(a["direction"] * len(SPEEDS) + a["speed"]),
               "direction": np.int32(a["direction"]), "speed": np.int32(a["speed"]),
               "color": np.int32(a["color"]), "shape": np.int32(a["shape"])}
        if self.max_len is not None:
            tokens = tokenizer(self.vocab).encode_batch([caption(self.split, index)], self.max_len)
            out["text"], out["text_mask"] = tokens["ids"][0], tokens["mask"][0]
        return out


@DATASETS.register("moving_shapes")
def moving_shapes_dataset(split: str, num_examples: int = 10_000, view: str = "video_label", num_frames: int = 8,
                          image_size: int = 32, max_len: int = 10, vocab: str = "own") -> DatasetBundle:
    """Built-in videos: ``video`` ``[num_frames, image_size, image_size, 3]`` in [-1, 1] with ``label``
    (direction x speed), ``direction``, ``speed``, ``color`` and ``shape``; ``video_caption`` adds the
    caption as ``text``.
    ``vocab``: the tokenizer's words (``tokenizer``): ``shapes`` to share a text encoder with the built-in
    images."""
    if view not in VIEWS:
        raise ValueError(f"unknown moving_shapes view {view!r}; valid views: {', '.join(VIEWS)}")
    tok = tokenizer(vocab)
    source = _Clips(split, num_examples, num_frames, image_size, max_len if view == "video_caption" else None, vocab)
    info = dict(name="moving_shapes", num_classes=len(CLASS_NAMES), class_names=list(CLASS_NAMES),
                class_prompts=[[p.format(name=n) for p in _PROMPTS] for n in CLASS_NAMES], tokenizer=tok,
                vocab_size=tok.vocab_size, max_len=max_len)
    return DatasetBundle(grain.MapDataset.source(source), None, info)
