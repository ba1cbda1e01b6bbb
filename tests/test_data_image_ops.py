"""Image preprocessing: open_clip parity on real JPEGs, crops, flips, normalisation, RandAugment, decoding."""

import importlib.util
import io
import os

import numpy as np
import pytest
from PIL import Image

from vlfm.data import image_ops
from vlfm.data.bad_data import BadData

skimage = pytest.importorskip("skimage")


def _real_jpegs() -> dict[str, bytes]:
    """Real photos as JPEG bytes: scikit-image's three JPEG files, plus PNG photos (one greyscale) saved
    as JPEG; sizes cover portrait, landscape, square, odd crops and an 'L'-mode file."""
    import skimage.data

    folder = os.path.join(os.path.dirname(skimage.__file__), "data")
    out = {}
    for name in ("rocket.jpg", "hubble_deep_field.jpg", "retina.jpg"):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    for name in ("chelsea", "coffee", "astronaut", "camera"):
        buf = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).save(buf, "JPEG", quality=92)
        out[name] = buf.getvalue()
    # Odd sizes exercise the long-side truncation and the centre-crop rounding.
    buf = io.BytesIO()
    Image.fromarray(skimage.data.coffee()[:257, :391]).save(buf, "JPEG")
    out["coffee_257x391"] = buf.getvalue()
    return out


def _torch_reference(image: Image.Image) -> np.ndarray:
    """torchvision's PIL path written out: Pillow bicubic resize of the short side (long side truncated),
    Pillow crop at torchvision's rounded offsets, convert('RGB'), then ToTensor and Normalize in torch."""
    import torch

    w, h = image.size
    if w <= h:
        size = (224, int(224 * h / w))
    else:
        size = (int(224 * w / h), 224)
    if size != image.size:
        image = image.resize(size, Image.BICUBIC)
    top = int(round((image.height - 224) / 2.0))
    left = int(round((image.width - 224) / 2.0))
    image = image.crop((left, top, left + 224, top + 224)).convert("RGB")
    t = torch.from_numpy(np.array(image, np.uint8, copy=True)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    mean = torch.as_tensor(image_ops.CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(image_ops.CLIP_STD, dtype=torch.float32)[:, None, None]
    return t.sub(mean).div(std).numpy().transpose(1, 2, 0)


def _open_clip_transform():
    """open_clip's own eval transform where open_clip and torchvision are installed (tests/conftest.py
    installs the torchvision import hook of the parity notes §3)."""
    if importlib.util.find_spec("open_clip") is None or importlib.util.find_spec("torchvision") is None:
        return None
    import open_clip

    return open_clip.image_transform(224, is_train=False)


@pytest.mark.parity
def test_clip_preprocess_bit_exact_on_real_jpegs():
    pytest.importorskip("torch")
    reference_transform = _open_clip_transform()
    for name, data in _real_jpegs().items():
        ours = image_ops.clip_preprocess(image_ops.decode_image(data))
        assert ours.shape == (224, 224, 3) and ours.dtype == np.float32
        ref = _torch_reference(Image.open(io.BytesIO(data)))
        np.testing.assert_array_equal(ours, ref, err_msg=name)
        if reference_transform is not None:
            oc = reference_transform(Image.open(io.BytesIO(data))).numpy().transpose(1, 2, 0)
            np.testing.assert_array_equal(ours, oc, err_msg=f"{name} vs open_clip")


def test_clip_preprocess_is_sensitive_to_each_step():
    """The comparison above can fail: a bilinear resize, an off-by-one crop or ImageNet statistics differ."""
    image = image_ops.decode_image(_real_jpegs()["coffee_257x391"])
    ours = image_ops.clip_preprocess(image)
    bilinear = image_ops.center_crop(image_ops.resize_short_side(image, 224, Image.BILINEAR), 224)
    assert not np.array_equal(ours, image_ops.normalize(image_ops.to_float_array(bilinear), image_ops.CLIP_MEAN,
                                                        image_ops.CLIP_STD))
    assert not np.array_equal(ours, image_ops.clip_preprocess(image, stats="imagenet"))
    resized = image_ops.resize_short_side(image, 224)
    shifted = resized.crop((1, 0, 225, 224))
    assert not np.array_equal(image_ops.to_float_array(image_ops.center_crop(resized, 224)),
                              image_ops.to_float_array(shifted))


def test_short_side_and_centre_crop_geometry():
    assert image_ops.short_side_size(640, 427, 224) == (335, 224)
    assert image_ops.short_side_size(427, 640, 224) == (224, 335)
    assert image_ops.short_side_size(300, 300, 224) == (224, 224)
    img = Image.fromarray(np.arange(5 * 8 * 3, dtype=np.uint8).reshape(5, 8, 3))
    crop = np.asarray(image_ops.center_crop(img, 4))
    # (8-4)/2 = 2 columns, round(0.5) = 0 rows (Python rounds half to even, as torchvision does)
    np.testing.assert_array_equal(crop, np.asarray(img)[0:4, 2:6])
    padded = np.asarray(image_ops.center_crop(img, 7))
    # 5 rows padded to 7 (one zero row above and below), then columns round(0.5) = 0 .. 7
    assert padded.shape == (7, 7, 3) and (padded[0] == 0).all() and (padded[6] == 0).all()
    np.testing.assert_array_equal(padded[1:6], np.asarray(img)[:, 0:7])


def test_random_resized_crop_is_seeded_and_in_range():
    img = Image.fromarray(skimage.data.astronaut())
    a = image_ops.random_resized_crop(img, 64, np.random.default_rng(3), scale=(0.2, 0.5))
    b = image_ops.random_resized_crop(img, 64, np.random.default_rng(3), scale=(0.2, 0.5))
    c = image_ops.random_resized_crop(img, 64, np.random.default_rng(4), scale=(0.2, 0.5))
    assert a.size == (64, 64)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    # A crop covering the whole image (scale 1, its own aspect) is a plain resize.
    square = Image.fromarray(skimage.data.astronaut())
    full = image_ops.random_resized_crop(square, 64, np.random.default_rng(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_array_equal(np.asarray(full), np.asarray(square.resize((64, 64), Image.BICUBIC)))


def test_randaugment_changes_pixels_deterministically():
    img = Image.fromarray(skimage.data.chelsea())
    outs = [np.asarray(image_ops.randaugment(img, np.random.default_rng(s), 2, 9)) for s in (0, 0, 1, 2, 3)]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert all(o.shape == np.asarray(img).shape for o in outs)
    assert sum(not np.array_equal(o, np.asarray(img)) for o in outs[2:]) >= 2
    with pytest.raises(ValueError, match="magnitude"):
        image_ops.randaugment(img, np.random.default_rng(0), 2, 31)


def test_decode_rejects_corrupt_and_truncated_jpegs():
    data = _real_jpegs()["rocket.jpg"]
    assert image_ops.decode_image(data).size == (640, 427)
    for bad in (data[: len(data) // 2], b"not an image", b"", data[:20] + b"\x00" * 200):
        with pytest.raises(BadData) as e:
            image_ops.decode_image(bad)
        assert e.value.kind == "corrupt_image"


def test_draft_decoding_keeps_at_least_the_requested_size():
    big = image_ops.decode_image(_real_jpegs()["retina.jpg"], draft_size=224)
    assert min(big.size) >= 224 and max(big.size) < 1411  # decoded at 1/4 scale
