"""Retrieval with several captions per image (COCO 5k / Flickr30k 1k rule): hand-worked cases, the Karpathy
JSON reader on a small file, and the evaluator on the built-in data's 5-wordings split."""

import json

import numpy as np
import pytest
from PIL import Image

from vlfm.data import shapes
from vlfm.data.normalization import host_normalize
from vlfm.data.pipeline import build_dataset
from vlfm.evaluators import EVALUATORS
from vlfm.evaluators.retrieval import multi_caption_recall


def _naive(sim, caption_image, k):
    """R@k by sorting, one query at a time (ties broken against the correct item)."""
    n_img, n_cap = sim.shape
    i2t = []
    for i in range(n_img):
        order = sorted(range(n_cap), key=lambda j: (-sim[i, j], caption_image[j] == i))
        i2t.append(any(caption_image[j] == i for j in order[:k]))
    t2i = []
    for j in range(n_cap):
        order = sorted(range(n_img), key=lambda i: (-sim[i, j], i == caption_image[j]))
        t2i.append(caption_image[j] in order[:k])
    return np.mean(i2t), np.mean(t2i)


def test_only_the_third_caption_matches():
    """Three images, three captions each (captions 3i..3i+2 describe image i). Image 0's first two
    captions rank last, its third first: a hit at R@1 under the any-caption rule."""
    caption_image = np.repeat(np.arange(3), 3)
    sim = np.full((3, 9), 0.0)
    sim[0] = [-1.0, -0.9, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]   # best: its own caption 2
    sim[1] = [0.8, 0.1, 0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0]     # best: image 0's caption 0 (a miss at R@1)
    sim[2] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.3]     # best: its own caption 8
    got = multi_caption_recall(sim, caption_image, ks=(1, 2, 5))
    assert got["i2t_r1"] == pytest.approx(2 / 3)
    # image 1: its best caption (0.4) comes after image 0's caption 0 (0.8) only: rank 1
    assert got["i2t_r2"] == 1.0
    # the first-caption-only rule would miss image 0 at R@1 and R@2 (its caption 0 ranks last of 9)
    first_caption_rank = (sim[0] > sim[0, 0]).sum()
    assert first_caption_rank == 8
    # text to image: caption j's own image must rank first in column j
    columns_won = [int(np.argmax(sim[:, j]) == caption_image[j]) for j in range(9)]
    assert got["t2i_r1"] == pytest.approx(np.mean(columns_won))
    for k in (1, 2, 5):
        assert (got[f"i2t_r{k}"], got[f"t2i_r{k}"]) == pytest.approx(_naive(sim, caption_image, k))


def test_ties_count_against_the_model_and_uneven_caption_counts():
    caption_image = np.array([0, 0, 1])  # image 0 has two captions, image 1 one
    assert multi_caption_recall(np.ones((2, 3)), caption_image, ks=(1,)) == {"i2t_r1": 0.0, "t2i_r1": 0.0}
    rng = np.random.default_rng(0)
    sim = rng.integers(0, 4, size=(7, 25)).astype(np.float32)  # many ties
    caption_image = np.concatenate([np.arange(7), rng.integers(0, 7, size=18)])
    got = multi_caption_recall(sim, caption_image, ks=(1, 3))
    for k in (1, 3):
        assert (got[f"i2t_r{k}"], got[f"t2i_r{k}"]) == pytest.approx(_naive(sim, caption_image, k))
    with pytest.raises(ValueError, match="no caption"):
        multi_caption_recall(sim, np.zeros(25, int))


def _bag_of_words(vocab_size, dim, seed):
    table = np.random.default_rng(seed).normal(size=(vocab_size, dim)).astype(np.float32)

    def encode_text(params, batch):
        return (table[batch["text"]] * batch["text_mask"][..., None]).sum(1)
    return encode_text


def test_karpathy_reader_and_evaluator(tmp_path):
    """A Karpathy-format file with a test image that has six captions; every caption is scored."""
    entries = []
    for i, (split, n) in enumerate([("test", 5), ("test", 6), ("train", 5), ("test", 5), ("restval", 5)]):
        Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(tmp_path / f"img{i}.png")
        words = shapes.COLORS[i] + " " + shapes.SHAPES[i]
        entries.append({"filename": f"img{i}.png", "split": split, "imgid": i, "cocoid": 100 + i,
                        "sentences": [{"raw": f"a {words} number {k}", "tokens": []} for k in range(n)]})
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": entries}))
    data = dict(name="karpathy_captions", annotations=str(tmp_path / "dataset_coco.json"), images=str(tmp_path),
                image=dict(size=8, eval_crop="resize", mean_std="half"),
                text=dict(tokenizer=dict(kind="word_shapes"), max_len=8))
    bundle = build_dataset(data, "test")
    assert bundle.info["num_examples"] == 3 and bundle.info["num_captions"] == 16
    assert len(bundle.info["reference_captions"](1)) == 6 and len(bundle.info["reference_captions"](1, 5)) == 5
    assert build_dataset(data, "train").info["num_examples"] == 2  # train + restval

    tokenizer = bundle.info["tokenizer"]
    encode_text = _bag_of_words(tokenizer.vocab_size, 6, 1)
    image_table = np.random.default_rng(2).normal(size=(256, 6)).astype(np.float32)

    def encode_image(params, batch):
        level = np.rint((batch["image"][:, 0, 0, 0] + 1) / 2 * 255).astype(int)
        return image_table[level]

    ev = EVALUATORS.get("multi_caption_retrieval")({"encode_image": encode_image, "encode_text": encode_text},
                                                   data=data, split="test", captions_per_image=None, view=None,
                                                   batch_size=2)
    got = dict(ev.run(None))
    assert got["num_images"] == 3 and got["num_captions"] == 16
    captions = [s["raw"] for i in (0, 1, 3) for s in entries[i]["sentences"]]
    caption_image = np.repeat(np.arange(3), [5, 6, 5])
    tokens = tokenizer.encode_batch(captions, 8)
    sim = image_table[[0, 50, 150]] @ encode_text(None, {"text": tokens["ids"], "text_mask": tokens["mask"]}).T
    for k in (1, 5, 10):
        assert (got[f"i2t_r{k}"], got[f"t2i_r{k}"]) == pytest.approx(_naive(sim, caption_image, k))
    six = [got[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert got["rsum"] == pytest.approx(100 * sum(six)) and got["mean_recall"] == pytest.approx(np.mean(six))


def test_builtin_split_with_five_wordings_per_image():
    """The shapes data's captions view: five wordings per image, all scored."""
    data = dict(name="shapes", num_examples=12, image_size=8, max_len=20)
    tokenizer = build_dataset(dict(data, view="captions"), "validation").info["tokenizer"]
    encode_text = _bag_of_words(tokenizer.vocab_size, 8, 3)
    w = np.random.default_rng(4).normal(size=(8 * 8 * 3, 8)).astype(np.float32)
    encode_image = lambda p, b: b["image"].reshape(len(b["image"]), -1) @ w  # noqa: E731
    got = dict(EVALUATORS.get("multi_caption_retrieval")({"encode_image": encode_image, "encode_text": encode_text},
                                                         data=data, batch_size=8).run(None))
    assert got["num_captions"] == 60
    refs = [c for i in range(12) for c in shapes.reference_captions("validation", i, 5)]
    assert len(set(refs)) > 12  # the wordings differ
    images = build_dataset(dict(data, view="image"), "validation")
    rows = [host_normalize(images.examples[i], images.normalization) for i in range(12)]  # uint8 -> as the model
    zi = np.stack([encode_image(None, {"image": row["image"][None]})[0] for row in rows])
    tokens = tokenizer.encode_batch(refs, 20)
    sim = zi @ encode_text(None, {"text": tokens["ids"], "text_mask": tokens["mask"]}).T
    for k in (1, 5, 10):
        assert (got[f"i2t_r{k}"], got[f"t2i_r{k}"]) == pytest.approx(_naive(sim, np.repeat(np.arange(12), 5), k))
