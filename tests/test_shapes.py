"""Tests of the built-in shapes dataset: determinism, caching, captions and that the attributes are visible."""

import os
import re
import time

import numpy as np
import pytest

from vlfm.data import shapes

KEYS = ("image", "caption", "label", "shape", "color", "size", "position")


def _saturation(images: np.ndarray) -> np.ndarray:
    """Max minus min channel: objects are saturated, backgrounds near-grey."""
    x = images.astype(np.int32)
    return x.max(-1) - x.min(-1)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text)


def test_same_example_regardless_of_start_and_count():
    full = shapes.generate("train", 30)
    part = shapes.generate("train", 7, start=12)
    again = shapes.generate("train", 30)
    for key in KEYS:
        np.testing.assert_array_equal(part[key], full[key][12:19])
        np.testing.assert_array_equal(again[key], full[key])


def test_attributes_and_captions_do_not_depend_on_image_size():
    small = shapes.generate("validation", 20, image_size=32)
    big = shapes.generate("validation", 20, image_size=64)
    for key in ("caption", "label", "shape", "color", "size", "position"):
        np.testing.assert_array_equal(small[key], big[key])


def test_splits_differ():
    data = {s: shapes.generate(s, 50) for s in ("train", "validation", "test")}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        same_images = [np.array_equal(x, y) for x, y in zip(data[a]["image"], data[b]["image"])]
        assert not any(same_images)
        assert np.mean(data[a]["caption"] != data[b]["caption"]) > 0.8


def test_shapes_dtypes_and_label_definition():
    data = shapes.generate("train", 40, image_size=32)
    assert set(data) == set(KEYS)
    assert data["image"].shape == (40, 32, 32, 3) and data["image"].dtype == np.uint8
    assert data["caption"].shape == (40,) and data["caption"].dtype.kind in "UO"
    for key in ("label", "shape", "color", "size", "position"):
        assert data[key].shape == (40,) and data[key].dtype == np.int32
    assert len(shapes.CLASS_NAMES) == len(shapes.COLORS) * len(shapes.SHAPES)
    np.testing.assert_array_equal(data["label"], data["color"] * len(shapes.SHAPES) + data["shape"])
    for label, c, s in zip(data["label"], data["color"], data["shape"]):
        assert shapes.CLASS_NAMES[label] == f"{shapes.COLORS[c]} {shapes.SHAPES[s]}"
    assert data["size"].max() < len(shapes.SIZES) and data["position"].max() < len(shapes.POSITIONS)


@pytest.mark.parametrize("image_size", [64, 224])
def test_other_image_sizes(image_size):
    data = shapes.generate("test", 4, image_size=image_size)
    assert data["image"].shape == (4, image_size, image_size, 3)
    # Every image holds at least a small object's worth of saturated pixels.
    counts = (_saturation(data["image"]) > 60).sum(axis=(1, 2))
    assert counts.min() > 0.02 * image_size**2


def test_bad_arguments_name_the_valid_choices():
    with pytest.raises(ValueError, match="train, validation, test"):
        shapes.generate("val", 3)
    with pytest.raises(ValueError, match="max_objects"):
        shapes.generate("train", 3, max_objects=0)


def test_vocab_is_closed_and_covers_every_caption():
    assert shapes.VOCAB == sorted(set(shapes.VOCAB))
    assert all(w == w.lower() and re.fullmatch(r"[a-z0-9]+", w) for w in shapes.VOCAB)
    vocab = set(shapes.VOCAB)
    data = shapes.generate("train", 1000)
    seen = set()
    for caption in data["caption"]:
        words = _words(caption)
        assert words and set(words) <= vocab, caption
        seen.update(words)
    assert len(seen) > 0.8 * len(vocab)  # the vocabulary is not padded with words captions never use


def test_captions_describe_the_main_object_first():
    data = shapes.generate("train", 500)
    color_words = set(shapes.COLORS)
    shape_words = {w: s for s, ws in shapes._SHAPE_WORDS.items() for w in ws}
    size_words = {w: s for s, ws in shapes._SIZE_WORDS.items() for w in ws}
    for i, caption in enumerate(data["caption"]):
        words = _words(caption)
        colors = [w for w in words if w in color_words]
        assert 1 <= len(colors) <= 2
        assert colors[0] == shapes.COLORS[data["color"][i]], caption
        first_shape = [shape_words[w] for w in words if w in shape_words][0]
        first_size = [size_words[w] for w in words if w in size_words][0]
        assert first_shape == shapes.SHAPES[data["shape"][i]], caption
        assert first_size == shapes.SIZES[data["size"][i]], caption
        position = shapes.POSITIONS[data["position"][i]]
        phrases = shapes._POSITION_PHRASES[position] + shapes._POSITION_SHORT[position]
        assert any(p in caption for p in phrases), caption


def test_caption_wording_varies():
    captions = shapes.generate("train", 500)["caption"]
    openings = {" ".join(_words(c)[:2]) for c in captions}
    assert len(openings) >= 8
    words = {w for c in captions for w in _words(c)}
    assert {"big", "large", "small", "tiny", "centre", "middle"} <= words
    assert any(";" in c for c in captions) and any(" and " in c for c in captions)


def test_max_objects_controls_how_many_objects_are_described():
    one = shapes.generate("train", 200, max_objects=1)
    two = shapes.generate("train", 200, max_objects=2)
    count = lambda c: sum(w in shapes.COLORS for w in _words(c))  # noqa: E731
    assert all(count(c) == 1 for c in one["caption"])
    counts = [count(c) for c in two["caption"]]
    assert 0.3 < np.mean(np.array(counts) == 2) < 0.7


def test_single_object_attributes_are_visible():
    """With one object, the saturated pixels have its colour, lie in its grid cell and scale with its size."""
    data = shapes.generate("validation", 400, max_objects=1)
    sat = _saturation(data["image"]) > 60
    size = data["image"].shape[1]
    areas = sat.sum(axis=(1, 2))
    assert areas.min() > 0
    color_ok = cell_ok = 0
    for i in range(len(areas)):
        mean_rgb = data["image"][i][sat[i]].astype(np.float64).mean(0)
        nearest = np.argmin(((shapes.COLOR_RGB - mean_rgb) ** 2).sum(-1))
        color_ok += nearest == data["color"][i]
        ys, xs = np.nonzero(sat[i])
        row, col = int(ys.mean() * 3 // size), int(xs.mean() * 3 // size)
        cell_ok += row * 3 + col == data["position"][i]
    assert color_ok / len(areas) > 0.97
    assert cell_ok == len(areas)
    for s in range(len(shapes.SHAPES)):
        small = areas[(data["shape"] == s) & (data["size"] == 0)]
        large = areas[(data["shape"] == s) & (data["size"] == 1)]
        assert small.mean() * 1.8 < large.mean(), shapes.SHAPES[s]


def test_edges_are_anti_aliased():
    """Supersampled rendering leaves blended pixels along object edges, between near-grey and saturated."""
    data = shapes.generate("train", 300, max_objects=1)
    sat = _saturation(data["image"])
    blended = ((sat > 45) & (sat < 80)).sum(axis=(1, 2))
    assert blended.mean() > 3 and np.mean(blended >= 2) > 0.6


def test_main_object_colour_is_present_with_two_objects():
    data = shapes.generate("test", 300, max_objects=2)
    images = data["image"].astype(np.float64)
    sat = _saturation(data["image"]) > 60
    dist = ((images[..., None, :] - shapes.COLOR_RGB) ** 2).sum(-1)  # [N, H, W, colours]
    nearest = dist.argmin(-1)
    main_pixels = (sat & (nearest == data["color"][:, None, None])).sum(axis=(1, 2))
    assert np.mean(main_pixels >= 8) > 0.97


def test_backgrounds_are_muted_and_varied():
    data = shapes.generate("train", 200, max_objects=1)
    corners = data["image"][:, [0, 0, -1, -1], [0, -1, 0, -1]].astype(np.int32)  # [N, 4, 3]
    assert (corners.max(-1) - corners.min(-1)).max() < 60  # near-grey, far from every object colour
    flat = data["image"].reshape(200, -1, 3).astype(np.float64)
    stds = flat[:, :64].std(axis=1).mean(-1)  # a stretch of the top row, object-free in most images
    assert (stds < 0.5).mean() > 0.15 and (stds > 3.0).mean() > 0.15  # solid and textured ones both occur
    assert np.ptp(corners.mean(axis=(1, 2))) > 60  # brightness varies across images


def test_shape_is_recognisable_at_32px():
    """Nearest-centroid on object-centred saturation crops tells the seven shapes apart, at either size."""

    def crops(data, win=16):
        sat = np.clip(_saturation(data["image"]) / 150.0, 0.0, 1.0)
        out = []
        for s in sat:
            ys, xs = np.nonzero(s > 0.4)
            cy, cx = int(round(ys.mean())) + win, int(round(xs.mean())) + win
            padded = np.pad(s, win)
            out.append(padded[cy - win // 2: cy + win // 2, cx - win // 2: cx + win // 2].ravel())
        return np.array(out)

    train = shapes.generate("train", 1500, max_objects=1)
    held = shapes.generate("validation", 500, max_objects=1)
    x_train, x_held = crops(train), crops(held)
    for size in range(len(shapes.SIZES)):
        tr, he = train["size"] == size, held["size"] == size
        centroids = np.stack([x_train[tr & (train["shape"] == k)].mean(0) for k in range(len(shapes.SHAPES))])
        pred = ((x_held[he][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        assert np.mean(pred == held["shape"][he]) > 0.85, shapes.SIZES[size]


def test_main_colour_learnable_from_raw_pixels():
    """Softmax regression on 8x8-pooled raw pixels predicts the main object's colour on held-out images."""

    def features(images):
        x = images.astype(np.float32) / 255.0
        n, h, w, c = x.shape
        return x.reshape(n, 8, h // 8, 8, w // 8, c).mean(axis=(2, 4)).reshape(n, -1)

    train = shapes.generate("train", 2000)
    held = shapes.generate("test", 600)
    x, y = features(train["image"]), train["color"]
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    k = len(shapes.COLORS)
    w, b = np.zeros((x.shape[1], k)), np.zeros(k)
    onehot = np.eye(k)[y]
    for _ in range(300):
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(x)
        w -= 0.5 * (x.T @ g + 1e-4 * w)
        b -= 0.5 * g.sum(0)
    pred = (((features(held["image"]) - mean) / std) @ w + b).argmax(1)
    assert np.mean(pred == held["color"]) > 2.0 / k


def test_class_prompts():
    prompts = shapes.class_prompts()
    assert len(prompts) == len(shapes.CLASS_NAMES)
    assert all(len(p) == len(shapes.DEFAULT_PROMPT_TEMPLATES) for p in prompts)
    orange_circle = shapes.CLASS_NAMES.index("orange circle")
    assert "a photo of an orange circle" in prompts[orange_circle]
    assert "a photo of a red circle" in prompts[shapes.CLASS_NAMES.index("red circle")]
    assert all(set(_words(t)) <= set(shapes.VOCAB) for p in prompts for t in p)
    custom = shapes.class_prompts(["{}", "a drawing of {a} {name}"])
    assert custom[orange_circle] == ["orange circle", "a drawing of an orange circle"]


def test_views():
    data = shapes.generate("train", 3)
    assert set(shapes.view(data, "pairs")) == {"image", "caption"}
    assert set(shapes.view(data, "image")) == {"image"}
    assert set(shapes.view(data, "text")) == {"caption"}
    assert set(shapes.view(data, "image_label")) == {"image", "label"}
    assert set(shapes.view(data, "captions")) == {"image", "caption"}
    with pytest.raises(ValueError, match="pairs, image, text, image_label, captions"):
        shapes.view(data, "caption")


def test_cache_round_trip(tmp_path, monkeypatch):
    first = shapes.load("validation", 25, image_size=32, max_objects=2, cache_dir=str(tmp_path))
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".npz")
    for part in (shapes.DATASET_VERSION, "validation", "n25", "s32", "o2"):
        assert part in files[0]

    def fail(*args, **kwargs):
        raise AssertionError("load() regenerated instead of reading the cache")

    monkeypatch.setattr(shapes, "generate", fail)
    second = shapes.load("validation", 25, image_size=32, max_objects=2, cache_dir=str(tmp_path))
    assert set(second) == set(KEYS)
    for key in KEYS:
        np.testing.assert_array_equal(first[key], second[key])
        assert first[key].dtype == second[key].dtype
    with pytest.raises(AssertionError, match="regenerated"):  # other parameters -> another file
        shapes.load("validation", 25, image_size=64, cache_dir=str(tmp_path))


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VLFM_CACHE_DIR", str(tmp_path / "env"))
    data = shapes.load("train", 5, max_objects=1)
    assert len(os.listdir(tmp_path / "env")) == 1
    np.testing.assert_array_equal(data["image"], shapes.generate("train", 5, max_objects=1)["image"])


def test_generation_speed():
    # CPU time of this process, not wall time: the bound holds on a loaded machine or beside other tests.
    start = time.process_time()
    shapes.generate("train", 2000)
    assert time.process_time() - start < 4.0


@pytest.mark.parametrize("max_objects", [1, 2])
def test_max_caption_words_bounds_the_captions(max_objects):
    bound = shapes.max_caption_words(max_objects)
    lengths = [len(_words(c)) for c in shapes.generate("train", 3000, max_objects=max_objects)["caption"]]
    assert bound - 2 <= max(lengths) <= bound
