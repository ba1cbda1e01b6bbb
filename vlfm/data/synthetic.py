"""Generated corpora in real formats (JPEG webdataset shards, text files), for tests and benchmarks.

Images are colour gradients with a few rectangles and some noise, so JPEG sizes and decode times are
close to those of web photos at the same size (about 20 KB at 224 px); captions differ per sample.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from vlfm.data.webdataset import write_shards

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
_RGB = np.array([(220, 40, 40), (40, 180, 60), (40, 60, 220), (230, 220, 50), (140, 50, 170), (240, 140, 30),
                 (245, 245, 245), (15, 15, 15)], np.float32)


def image(index: int, height: int = 224, width: int = 224) -> np.ndarray:
    """A deterministic HxWx3 uint8 picture for ``index``."""
    rng = np.random.default_rng(index)
    a, b = _RGB[rng.integers(len(_RGB), size=2)]
    t = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    s = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    pixels = a * (1 - t) * (1 - s / 2) + b * t + 20 * np.sin(8 * s + index)
    for _ in range(3):  # rectangles of 1/8 to 1/2 of each side
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        h, w = rng.integers(height // 8 + 1, height // 2 + 2), rng.integers(width // 8 + 1, width // 2 + 2)
        pixels[y0:y0 + h, x0:x0 + w] = _RGB[rng.integers(len(_RGB))]
    pixels += rng.normal(0, 10, (height, width, 1)) + rng.normal(0, 6, (height, width, 3))  # sensor-like noise
    return np.clip(pixels, 0, 255).astype(np.uint8)


def caption(index: int) -> str:
    rng = np.random.default_rng(index)
    a, b = rng.choice(COLOURS, 2, replace=False)
    return f"a {a} and {b} picture number {index}"


def encode(pixels: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def sample(index: int, size: int = 224, label_classes: int | None = None) -> dict:
    """One img2dataset-style sample: ``jpg``, ``txt``, ``json`` (and ``cls`` with ``label_classes``)."""
    out = {"__key__": f"{index:09d}", "jpg": encode(image(index, size, size)), "txt": caption(index),
           "json": f'{{"key": "{index:09d}", "caption": "{caption(index)}"}}'}
    if label_classes:
        out["cls"] = str(index % label_classes)
    return out


def write_webdataset(directory: str | os.PathLike, num_samples: int, per_shard: int, size: int = 224,
                     prefix: str = "shard", label_classes: int | None = None) -> list[str]:
    """Writes ``num_samples`` samples into ``prefix-00000.tar``, ... in ``directory``; returns the paths."""
    pattern = os.path.join(os.fspath(directory), f"{prefix}-%05d.tar")
    return write_shards((sample(i, size, label_classes) for i in range(num_samples)), pattern, per_shard)


def write_text_files(directory: str | os.PathLike, num_lines: int, per_file: int, prefix: str = "text") -> list[str]:
    """Writes ``num_lines`` captions, ``per_file`` per file; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for start in range(0, num_lines, per_file):
        path = os.path.join(os.fspath(directory), f"{prefix}-{start // per_file:05d}.txt")
        with open(path, "w", encoding="utf-8") as f:
            for i in range(start, min(start + per_file, num_lines)):
                f.write(caption(i) + "\n")
        paths.append(path)
    return paths
