"""Image operations on PIL images and numpy arrays: decode, resize, crops, flip, normalisation, RandAugment.

Geometric ops work on PIL images (Pillow's resampling is what torchvision uses on PIL inputs, so
``clip_preprocess`` reproduces open_clip's eval transform bit for bit); the result becomes an
``HxWx3`` float32 array, normalised in numpy with the same float32 operations as torch.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from vlfm.data.bad_data import CORRUPT_IMAGE, BadData

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STATS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD), "half": ((0.5,) * 3, (0.5,) * 3)}

BICUBIC = Image.Resampling.BICUBIC


def decode_image(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Encoded bytes -> fully decoded PIL image in its own mode; corrupt or truncated data raises BadData.

    ``draft_size`` lets the JPEG decoder scale down by 2/4/8 while decoding (much faster for large
    photos) as long as both sides stay >= ``draft_size``; it changes pixels, so eval paths that must
    match a reference leave it None.
    """
    try:
        image = Image.open(io.BytesIO(data))
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()  # decode now: truncated files raise here, not later in a transform
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise BadData(CORRUPT_IMAGE, f"{type(e).__name__}: {e}") from None
    if image.width < 1 or image.height < 1:
        raise BadData(CORRUPT_IMAGE, f"empty image {image.size}")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def short_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) with the short side ``size`` and the aspect ratio kept; the long side is truncated (as torchvision)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def resize_short_side(image: Image.Image, size: int, resample: int = BICUBIC) -> Image.Image:
    new = short_side_size(image.width, image.height, size)
    return image if new == image.size else image.resize(new, resample)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Centre ``size x size`` crop; a smaller image is zero-padded first (torchvision's rounding and padding)."""
    width, height = image.size
    if size > width or size > height:
        pad_l, pad_t = max(size - width, 0) // 2, max(size - height, 0) // 2
        padded = Image.new(image.mode, (max(width, size), max(height, size)))
        padded.paste(image, (pad_l, pad_t))
        image, (width, height) = padded, padded.size
        if (width, height) == (size, size):
            return image
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def random_resized_crop(image: Image.Image, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        resample: int = BICUBIC) -> Image.Image:
    """Inception crop: a random area fraction in ``scale`` and aspect ratio in ``ratio`` (log-uniform),
    resized to ``size x size``; after 10 misses, the largest centred crop within ``ratio``."""
    width, height = image.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return image.resize((size, size), resample, box=(left, top, left + w, top + h))
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return image.resize((size, size), resample, box=(left, top, left + w, top + h))


def to_float_array(image: Image.Image) -> np.ndarray:
    """RGB PIL image -> HxWx3 float32 in [0, 1] (x / 255 as a float32 division, like ToTensor)."""
    x = np.asarray(to_rgb(image), dtype=np.uint8).astype(np.float32)
    x /= np.float32(255.0)
    return x


def normalize(x: np.ndarray, mean, std, inplace: bool = False) -> np.ndarray:
    """(x - mean) / std per channel in float32 (the same two roundings as torchvision's Normalize);
    ``inplace`` reuses ``x`` (saves allocating a 600 KB array per 224 px image)."""
    out = np.subtract(x, np.asarray(mean, np.float32), out=x if inplace else None)
    out /= np.asarray(std, np.float32)
    return out


def mean_std(stats: str | tuple) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if isinstance(stats, str):
        if stats not in STATS:
            raise ValueError(f"unknown normalisation {stats!r}; valid: {', '.join(STATS)} or (mean, std)")
        return STATS[stats]
    mean, std = stats
    return tuple(mean), tuple(std)


def clip_preprocess(image: Image.Image, size: int = 224, stats: str | tuple = "clip") -> np.ndarray:
    """open_clip's eval transform: bicubic resize of the short side to ``size``, centre crop, RGB,
    /255, CLIP mean/std. Returns HxWx3 float32 (open_clip's CHW tensor, transposed)."""
    image = center_crop(resize_short_side(image, size), size)
    return normalize(to_float_array(image), *mean_std(stats), inplace=True)


# ----------------------------------------------------------------------------------------------------
# RandAugment (Cubuk et al. 2020): ``num_ops`` ops drawn uniformly, each at magnitude ``magnitude`` of 30
# levels (as torchvision's 31 bins) and with a random sign for the signed ones.

_FILL = (128, 128, 128)


def _affine(image: Image.Image, matrix: tuple) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, matrix, Image.Resampling.NEAREST, fillcolor=_FILL)


_RANDAUGMENT_OPS = {
    "identity": (lambda im, v: im, None),
    "autocontrast": (lambda im, v: ImageOps.autocontrast(im), None),
    "equalize": (lambda im, v: ImageOps.equalize(im), None),
    "rotate": (lambda im, v: im.rotate(v, Image.Resampling.NEAREST, fillcolor=_FILL), (0.0, 30.0)),
    "solarize": (lambda im, v: ImageOps.solarize(im, int(v)), (255.0, 0.0)),
    "color": (lambda im, v: ImageEnhance.Color(im).enhance(1 + v), (0.0, 0.9)),
    "posterize": (lambda im, v: ImageOps.posterize(im, int(v)), (8.0, 4.0)),
    "contrast": (lambda im, v: ImageEnhance.Contrast(im).enhance(1 + v), (0.0, 0.9)),
    "brightness": (lambda im, v: ImageEnhance.Brightness(im).enhance(1 + v), (0.0, 0.9)),
    "sharpness": (lambda im, v: ImageEnhance.Sharpness(im).enhance(1 + v), (0.0, 0.9)),
    "shear_x": (lambda im, v: _affine(im, (1, v, 0, 0, 1, 0)), (0.0, 0.3)),
    "shear_y": (lambda im, v: _affine(im, (1, 0, 0, v, 1, 0)), (0.0, 0.3)),
    "translate_x": (lambda im, v: _affine(im, (1, 0, v * im.width, 0, 1, 0)), (0.0, 150.0 / 331.0)),
    "translate_y": (lambda im, v: _affine(im, (1, 0, 0, 0, 1, v * im.height)), (0.0, 150.0 / 331.0)),
}
_SIGNED = {"rotate", "color", "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x",
           "translate_y"}


def randaugment(image: Image.Image, rng: np.random.Generator, num_ops: int = 2, magnitude: int = 9) -> Image.Image:
    """Applies ``num_ops`` random RandAugment ops at ``magnitude`` (0..30) to an RGB image."""
    if not 0 <= magnitude <= 30:
        raise ValueError(f"RandAugment magnitude must be in [0, 30], got {magnitude}")
    image = to_rgb(image)
    names = list(_RANDAUGMENT_OPS)
    for _ in range(num_ops):
        name = names[int(rng.integers(len(names)))]
        fn, span = _RANDAUGMENT_OPS[name]
        value = 0.0
        if span is not None:
            value = span[0] + (span[1] - span[0]) * magnitude / 30.0
            if name in _SIGNED and rng.random() < 0.5:
                value = -value
        image = fn(image, value)
    return image
