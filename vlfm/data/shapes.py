"""The built-in dataset: procedurally generated coloured shapes with varied captions.

Every example is drawn from its own seeded generator, so the dataset needs no download, is identical on
every machine, and any slice of it can be produced on its own. The attributes (shape, colour, size and
position) are chosen to stay unambiguous at 32x32 pixels, so contrastive, matching, masked-language and
captioning objectives are learnable within minutes on a CPU.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import tempfile
from typing import Sequence

import numpy as np

DATASET_VERSION = "shapes-v1"

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring", "star")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "cyan")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)  # row-major over a 3x3 grid

# Saturated object colours; backgrounds are near-grey, so the two never collide.
COLOR_RGB = np.array(
    [
        (220, 40, 40),    # red
        (40, 170, 60),    # green
        (40, 80, 225),    # blue
        (240, 215, 40),   # yellow
        (250, 135, 20),   # orange
        (140, 50, 190),   # purple
        (250, 125, 195),  # pink
        (40, 205, 215),   # cyan
    ],
    dtype=np.float32,
)

SPLITS: dict[str, int] = {"train": 7919, "validation": 104729, "test": 1299709}

_COLOR_JITTER = 12  # per-channel uniform jitter, small against the distances between palette colours
_SIZE_RADIUS = ((0.11, 0.125), (0.18, 0.2))  # bounding-circle radius range, as a fraction of the side
_GRID = (0.22, 0.5, 0.78)  # grid-cell centres, as a fraction of the side
_POS_JITTER = 0.02  # uniform jitter of an object's centre, as a fraction of the side
_SUPERSAMPLE = 4  # sub-pixels per pixel side, for anti-aliased edges
_MAX_OBJECTS = 4

# Words used in captions. Colours keep a single name so the colour label is never ambiguous in text.
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_SHAPE_WORDS = {
    "circle": ("circle",),
    "square": ("square",),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus"),
    "ring": ("ring",),
    "star": ("star",),
}
_POSITION_PHRASES = {
    "top left": ("in the top left", "at the top left", "in the upper left corner", "in the top left corner"),
    "top": ("at the top", "at the top centre", "in the upper middle", "near the top"),
    "top right": ("in the top right", "at the top right", "in the upper right corner",
                  "in the top right corner"),
    "left": ("on the left", "at the left", "on the left side", "in the middle left"),
    "centre": ("in the centre", "in the center", "in the middle", "at the centre"),
    "right": ("on the right", "at the right", "on the right side", "in the middle right"),
    "bottom left": ("in the bottom left", "at the bottom left", "in the lower left corner",
                    "in the bottom left corner"),
    "bottom": ("at the bottom", "at the bottom centre", "in the lower middle", "near the bottom"),
    "bottom right": ("in the bottom right", "at the bottom right", "in the lower right corner",
                     "in the bottom right corner"),
}
_POSITION_SHORT = {
    "top left": ("top left", "upper left"),
    "top": ("top", "top centre"),
    "top right": ("top right", "upper right"),
    "left": ("left", "left side"),
    "centre": ("centre", "center", "middle"),
    "right": ("right", "right side"),
    "bottom left": ("bottom left", "lower left"),
    "bottom": ("bottom", "bottom centre"),
    "bottom right": ("bottom right", "lower right"),
}
_PREFIXES = ("", "a photo of ", "there is ", "an image of ", "a picture showing ", "this image shows ",
             "a drawing of ")
_JOINERS = (" and ", " with ", ", and ")
_TERSE_PROB = 0.2  # share of captions in the terse "red circle, small, left" style

DEFAULT_PROMPT_TEMPLATES: tuple[str, ...] = (
    "a photo of {a} {name}",
    "{a} {name}",
    "there is {a} {name}",
    "an image of {a} {name}",
    "a picture showing {a} {name}",
    "a drawing of {a} {name}",
)

CLASS_NAMES: list[str] = [f"{c} {s}" for c in COLORS for s in SHAPES]  # label = colour * len(SHAPES) + shape


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _build_vocab() -> list[str]:
    """Every word any caption or default prompt can contain, so word-level tokenizers never see unknowns."""
    texts: list[str] = ["a an"]
    texts += COLORS + SHAPES + SIZES + POSITIONS + _PREFIXES + _JOINERS + DEFAULT_PROMPT_TEMPLATES
    for table in (_SIZE_WORDS, _SHAPE_WORDS, _POSITION_PHRASES, _POSITION_SHORT):
        for phrases in table.values():
            texts += phrases
    words = {w for t in texts for w in _words(t.replace("{a}", "").replace("{name}", ""))}
    return sorted(words)


VOCAB: list[str] = _build_vocab()

VIEWS: dict[str, tuple[str, ...]] = {
    "pairs": ("image", "caption"),
    "image": ("image",),
    "text": ("caption",),
    "image_label": ("image", "label"),
    "captions": ("image", "caption"),  # + the example's index, for its reference captions (captioning evals)
}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def class_prompts(templates: Sequence[str] | None = None) -> list[list[str]]:
    """Zero-shot prompts per class, in CLASS_NAMES order.

    A template may use ``{}`` or ``{name}`` for the class name and ``{a}`` for its article ("a"/"an").
    """
    templates = list(DEFAULT_PROMPT_TEMPLATES if templates is None else templates)
    if not templates:
        raise ValueError("class_prompts needs at least one template")
    return [[t.format(name, a=_article(name), name=name) for t in templates] for name in CLASS_NAMES]


def max_caption_words(max_objects: int = 2) -> int:
    """The most words a caption can have, so text models can pick a max_len that never truncates."""
    longest = lambda phrases: max(len(_words(p)) for p in phrases)  # noqa: E731
    sizes = longest([w for ws in _SIZE_WORDS.values() for w in ws])
    shape = longest([w for ws in _SHAPE_WORDS.values() for w in ws])
    obj = 1 + sizes + longest(COLORS) + shape + max(longest(v) for v in _POSITION_PHRASES.values())
    sentence = longest(_PREFIXES) + max_objects * obj + (longest(_JOINERS) if max_objects > 1 else 0)
    terse = max_objects * (longest(COLORS) + shape + sizes + max(longest(v) for v in _POSITION_SHORT.values()))
    return max(sentence, terse)


def view(data: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """The key subset of a generated dict that one training view (pairs, image, text, image_label) uses."""
    if name not in VIEWS:
        raise ValueError(f"unknown shapes view {name!r}; valid views: {', '.join(VIEWS)}")
    return {k: data[k] for k in VIEWS[name]}


# ----------------------------------------------------------------------------------------------------
# Layout


@functools.lru_cache(maxsize=None)
def _valid_layouts(sizes: tuple[int, ...]) -> np.ndarray:
    """All ordered tuples of distinct grid cells whose objects, at these sizes, can never overlap.

    The check uses the largest radius and the worst-case centre jitter, so it holds for every draw.
    """
    centres = np.array([(_GRID[p % 3], _GRID[p // 3]) for p in range(len(POSITIONS))])
    slack = 2.0 * np.sqrt(2.0) * _POS_JITTER + 0.01
    layouts = []
    for cells in itertools.permutations(range(len(POSITIONS)), len(sizes)):
        ok = True
        for a, b in itertools.combinations(range(len(sizes)), 2):
            gap = np.linalg.norm(centres[cells[a]] - centres[cells[b]])
            if gap < _SIZE_RADIUS[sizes[a]][1] + _SIZE_RADIUS[sizes[b]][1] + slack:
                ok = False
                break
        if ok:
            layouts.append(cells)
    return np.array(layouts, dtype=np.int64).reshape(len(layouts), len(sizes))


# ----------------------------------------------------------------------------------------------------
# Rendering

_STAR_INNER = 0.45  # inner/outer radius of the five-pointed star; fatter than a regular star, for small sizes
_STAR_BY = _STAR_INNER * np.sin(np.pi / 5)
_STAR_BX = _STAR_INNER * np.cos(np.pi / 5)


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape, in coordinates where its bounding circle is the unit circle (v points down)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.78
    if shape == "triangle":  # equilateral, apex up, inscribed in the unit circle
        return (v <= 0.5) & (v >= np.sqrt(3.0) * np.abs(u) - 1.0)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "ring":
        rr = u * u + v * v
        return (rr <= 1.0) & (rr >= 0.47**2)
    if shape == "star":
        # Fold the angle into one half-spike, then test against the edge from the tip to the inner vertex.
        sector = 2.0 * np.pi / 5.0
        phi = np.mod(np.arctan2(v, u) + np.pi / 2.0, sector)
        phi = np.minimum(phi, sector - phi)
        rho = np.hypot(u, v)
        return rho * (_STAR_BY * np.cos(phi) + (1.0 - _STAR_BX) * np.sin(phi)) <= _STAR_BY
    raise ValueError(f"unknown shape {shape!r}")


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted, low-saturation background: solid, linear gradient or light noise texture."""
    kind = int(rng.integers(3))
    grey = rng.uniform(70.0, 180.0)
    base = grey + rng.uniform(-12.0, 12.0, size=3)
    if kind == 0:
        return np.full((size, size, 3), base, dtype=np.float32)
    if kind == 1:
        other = np.clip(grey + rng.uniform(-60.0, 60.0), 60.0, 190.0) + rng.uniform(-12.0, 12.0, size=3)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        t = coords[None, :] * np.cos(angle) + coords[:, None] * np.sin(angle)  # in [-0.71, 0.71]
        t = (t / np.sqrt(0.5) + 1.0) / 2.0
        return (base * (1.0 - t[..., None]) + other * t[..., None]).astype(np.float32)
    sigma = rng.uniform(6.0, 14.0)
    noise = rng.normal(0.0, sigma, size=(size, size, 1)) + rng.normal(0.0, 2.0, size=(size, size, 3))
    return (base + noise).astype(np.float32)


def draw(image: np.ndarray, shape: str, rgb: np.ndarray, cx: float, cy: float, radius: float) -> None:
    """Alpha-composite one anti-aliased shape into image (float [H, W, 3], in place), via supersampling."""
    size = image.shape[0]
    ss = _SUPERSAMPLE
    x0, x1 = max(0, int(np.floor(cx - radius))), min(size, int(np.ceil(cx + radius)))
    y0, y1 = max(0, int(np.floor(cy - radius))), min(size, int(np.ceil(cy + radius)))
    if x1 <= x0 or y1 <= y0:
        return
    u = (x0 + (np.arange((x1 - x0) * ss, dtype=np.float32) + 0.5) / ss - cx) / radius
    v = (y0 + (np.arange((y1 - y0) * ss, dtype=np.float32) + 0.5) / ss - cy) / radius
    mask = _inside(shape, u[None, :], v[:, None])
    alpha = mask.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3), dtype=np.float32)[..., None]
    crop = image[y0:y1, x0:x1]
    crop += alpha * (rgb - crop)


# ----------------------------------------------------------------------------------------------------
# Examples


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _caption(rng: np.random.Generator, objects: list[dict[str, int]]) -> str:
    """One caption mentioning every object, main object first, in randomly drawn wording."""
    if rng.random() < _TERSE_PROB:
        parts = []
        for o in objects:
            size = _pick(rng, _SIZE_WORDS[SIZES[o["size"]]])
            shape = _pick(rng, _SHAPE_WORDS[SHAPES[o["shape"]]])
            where = _pick(rng, _POSITION_SHORT[POSITIONS[o["position"]]])
            parts.append(f"{COLORS[o['color']]} {shape}, {size}, {where}")
        return "; ".join(parts)
    phrases = []
    for o in objects:
        size = _pick(rng, _SIZE_WORDS[SIZES[o["size"]]])
        shape = _pick(rng, _SHAPE_WORDS[SHAPES[o["shape"]]])
        where = _pick(rng, _POSITION_PHRASES[POSITIONS[o["position"]]])
        phrases.append(f"{_article(size)} {size} {COLORS[o['color']]} {shape} {where}")
    prefix = _pick(rng, _PREFIXES)
    if len(phrases) == 1:
        return prefix + phrases[0]
    joiner = _pick(rng, _JOINERS)
    return prefix + ", ".join(phrases[:-1]) + joiner + phrases[-1]


def _example(
    seed: int, index: int, image_size: int, max_objects: int
) -> tuple[np.ndarray, str, list[dict[str, int]]]:
    """Example `index` of the split with this seed. Everything except the background noise is drawn
    before any size-dependent draw, so attributes and captions do not depend on image_size."""
    rng = np.random.default_rng([seed, index])
    n = int(rng.integers(1, max_objects + 1))
    sizes = tuple(int(s) for s in rng.integers(len(SIZES), size=n))
    layouts = _valid_layouts(sizes)
    while len(layouts) == 0:  # too many large objects for the grid: drop the last one
        sizes = sizes[:-1]
        layouts = _valid_layouts(sizes)
    cells = layouts[int(rng.integers(len(layouts)))]
    shape_ids = rng.integers(len(SHAPES), size=len(sizes))
    color_ids = rng.integers(len(COLORS), size=len(sizes))
    objects = [
        {"shape": int(shape_ids[k]), "color": int(color_ids[k]), "size": sizes[k], "position": int(cells[k])}
        for k in range(len(sizes))
    ]
    geometry = []
    for o in objects:
        lo, hi = _SIZE_RADIUS[o["size"]]
        radius = rng.uniform(lo, hi)
        jx, jy = rng.uniform(-_POS_JITTER, _POS_JITTER, size=2)
        rgb = np.clip(COLOR_RGB[o["color"]] + rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, size=3), 0, 255)
        geometry.append((_GRID[o["position"] % 3] + jx, _GRID[o["position"] // 3] + jy, radius, rgb))
    caption = _caption(rng, objects)

    image = background(rng, image_size)
    for o, (fx, fy, fr, rgb) in zip(objects, geometry):
        rgb = rgb.astype(np.float32)
        draw(image, SHAPES[o["shape"]], rgb, fx * image_size, fy * image_size, fr * image_size)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), caption, objects


def _check_args(split: str, num_examples: int, image_size: int, max_objects: int, start: int = 0) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; valid splits: {', '.join(SPLITS)}")
    if num_examples < 0 or start < 0:
        raise ValueError(f"num_examples and start must be >= 0, got {num_examples} and {start}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if not 1 <= max_objects <= _MAX_OBJECTS:
        raise ValueError(f"max_objects must be in [1, {_MAX_OBJECTS}], got {max_objects}")


def generate(
    split: str, num_examples: int, image_size: int = 32, max_objects: int = 2, start: int = 0
) -> dict[str, np.ndarray]:
    """Examples start .. start+num_examples-1 of a split.

    Returns image uint8 [N, H, W, 3], caption str [N], label int32 [N] (index into CLASS_NAMES of the
    main object's colour and shape) and the main object's shape, color, size and position int32 [N]
    (indices into SHAPES, COLORS, SIZES, POSITIONS). Example i depends only on (split, i, image_size,
    max_objects), and its attributes and caption not even on image_size.
    """
    _check_args(split, num_examples, image_size, max_objects, start)
    seed = SPLITS[split]
    images = np.empty((num_examples, image_size, image_size, 3), dtype=np.uint8)
    captions: list[str] = []
    attrs = np.empty((num_examples, 4), dtype=np.int32)
    for k in range(num_examples):
        image, caption, objects = _example(seed, start + k, image_size, max_objects)
        images[k] = image
        captions.append(caption)
        main = objects[0]
        attrs[k] = (main["shape"], main["color"], main["size"], main["position"])
    return {
        "image": images,
        "caption": np.array(captions, dtype=str),
        "label": (attrs[:, 1] * len(SHAPES) + attrs[:, 0]).astype(np.int32),
        "shape": attrs[:, 0].copy(),
        "color": attrs[:, 1].copy(),
        "size": attrs[:, 2].copy(),
        "position": attrs[:, 3].copy(),
    }


_KEYS = ("image", "caption", "label", "shape", "color", "size", "position")


def cache_path(
    split: str, num_examples: int, image_size: int = 32, max_objects: int = 2, cache_dir: str | None = None
) -> str:
    """Where load() keeps this exact dataset; the name encodes the version and every parameter."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "vlfm")
    root = cache_dir or os.environ.get("VLFM_CACHE_DIR") or default
    name = f"{DATASET_VERSION}_{split}_n{num_examples}_s{image_size}_o{max_objects}.npz"
    return os.path.join(root, name)


def load(
    split: str, num_examples: int, image_size: int = 32, max_objects: int = 2, cache_dir: str | None = None
) -> dict[str, np.ndarray]:
    """Like generate(), but generated once into a cache file and read back on later calls.

    The file is written to a temporary name in the same folder and renamed, so concurrent readers and
    writers never see a partial file.
    """
    _check_args(split, num_examples, image_size, max_objects)
    path = cache_path(split, num_examples, image_size, max_objects, cache_dir)
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in _KEYS}
    data = generate(split, num_examples, image_size, max_objects)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return data



def reference_captions(split: str, index: int, num: int, max_objects: int = 2) -> list[str]:
    """`num` independent wordings of example `index` of a split, the first its usual caption.

    For captioning metrics and multi-caption retrieval; wordings 1.. come from their own generator
    (seeded by seed, index and the wording number), so existing examples are unchanged."""
    seed = SPLITS[split]
    _, caption, objects = _example(seed, index, 1, max_objects)  # captions do not depend on image_size
    return [caption] + [_caption(np.random.default_rng([seed, index, j]), objects) for j in range(1, num)]
