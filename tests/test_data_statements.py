"""The NLVR2 and SNLI-VE readers on files in the released formats (written here, tiny)."""

import json

import numpy as np
import pytest
from PIL import Image

from vlfm.data import build_dataset
from vlfm.data.pipeline import pipeline_stats
from vlfm.data.statements import nlvr2_pair
from vlfm.evaluators import EVALUATORS

TEXT = dict(tokenizer=dict(kind="word_shapes"), max_len=8)
IMAGE = dict(size=8, eval_crop="resize", mean_std="half")


def _png(path, level):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), level, np.uint8)).save(path)


def _lines(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _grey(image):
    """The grey level a normalised ("half": [-1, 1]) 8x8 image was written with."""
    return int(round((float(image.mean()) + 1) * 127.5))


def test_nlvr2_pair_drops_the_sentence_number():
    assert nlvr2_pair("train-10171-0-0") == "train-10171-0"
    assert nlvr2_pair("dev-850-1-3") == "dev-850-1"


def test_nlvr2_train_layout_reads_both_images_sentence_and_label(tmp_path):
    # Train images sit in numbered sub-folders; two sentences share the first pair.
    _png(tmp_path / "images/train/7/train-1-0-img0.png", 40)
    _png(tmp_path / "images/train/7/train-1-0-img1.png", 200)
    _png(tmp_path / "images/train/3/train-2-1-img0.png", 120)
    _png(tmp_path / "images/train/3/train-2-1-img1.png", 80)
    _lines(tmp_path / "train.json", [
        {"identifier": "train-1-0-0", "sentence": "a red circle", "label": "True", "directory": "7"},
        {"identifier": "train-1-0-1", "sentence": "a blue square", "label": "False", "directory": "7"},
        {"identifier": "train-2-1-0", "sentence": "the left image", "label": "True", "directory": "3"}])
    bundle = build_dataset(dict(name="nlvr2", data=str(tmp_path / "train.json"),
                                images=str(tmp_path / "images/train/{directory}/{pair}-img{side}.png"),
                                image=dict(IMAGE, train_crop="resize"), text=TEXT), "train")
    assert bundle.info["identifiers"] == ["train-1-0-0", "train-1-0-1", "train-2-1-0"]
    assert bundle.info["num_classes"] == 2
    got = [bundle.random_transform(bundle.examples[i], np.random.default_rng(0)) for i in range(3)]
    assert [int(e["label"]) for e in got] == [1, 0, 1]
    assert [int(e["index"]) for e in got] == [0, 1, 2]
    assert [(_grey(e["image"]), _grey(e["image2"])) for e in got] == [(40, 200), (40, 200), (120, 80)]
    tokenizer = bundle.info["tokenizer"]
    assert got[1]["text"].shape == (8,)
    np.testing.assert_array_equal(got[1]["text"], tokenizer.encode_batch(["a blue square"], 8)["ids"][0])

    # The classification evaluator scores it as it scores the built-in task: a "model" that says true
    # where the left image is darker than the right is right on line 1 only (lines 2 and 3 are labelled
    # against it).
    def logits(params, batch):
        darker = (batch["image"].mean((1, 2, 3)) < batch["image2"].mean((1, 2, 3))).astype(np.float32)
        return np.stack([1 - darker, darker], -1)

    data = dict(name="nlvr2", data=str(tmp_path / "train.json"),
                images=str(tmp_path / "images/train/{directory}/{pair}-img{side}.png"), image=IMAGE, text=TEXT)
    result = dict(EVALUATORS.get("classification")({"logits": logits}, data=data, split="train",
                                                   batch_size=2).run(None))
    assert result["accuracy"] == pytest.approx(1 / 3)


def test_nlvr2_missing_image_is_skipped_and_counted(tmp_path):
    _png(tmp_path / "dev/dev-1-0-img0.png", 10)
    _png(tmp_path / "dev/dev-1-0-img1.png", 20)
    _png(tmp_path / "dev/dev-2-0-img0.png", 30)  # its right image is missing
    _lines(tmp_path / "dev.json", [
        {"identifier": "dev-1-0-0", "sentence": "one", "label": "False"},
        {"identifier": "dev-2-0-0", "sentence": "two", "label": "True"}])
    bundle = build_dataset(dict(name="nlvr2", data={"validation": str(tmp_path / "dev.json")},
                                images={"validation": str(tmp_path / "dev/{pair}-img{side}.png")},
                                image=IMAGE, text=TEXT), "validation")
    it = iter(bundle.example_stream(seed=0, num_epochs=1, shuffle=False))
    examples = list(it)
    assert [int(e["index"]) for e in examples] == [0]
    assert pipeline_stats(it.get_state()) == {"data/bad/missing_file": 1}


def test_nlvr2_rejects_an_unknown_label_and_names_the_line(tmp_path):
    _lines(tmp_path / "dev.json", [{"identifier": "dev-1-0-0", "sentence": "s", "label": "True"},
                                   {"identifier": "dev-1-0-1", "sentence": "s", "label": "yes"}])
    with pytest.raises(ValueError, match=r"dev.json:2: label 'yes'"):
        build_dataset(dict(name="nlvr2", data=str(tmp_path / "dev.json"), images="{pair}-img{side}.png",
                           image=IMAGE, text=TEXT), "validation")


def test_snli_ve_labels_images_and_no_consensus_lines(tmp_path):
    for name, level in (("100.jpg", 50), ("200.jpg", 150)):
        Image.fromarray(np.full((8, 8, 3), level, np.uint8)).save(tmp_path / name, format="JPEG", quality=100)
    _lines(tmp_path / "snli_ve_dev.jsonl", [
        {"Flikr30kID": "100.jpg", "sentence1": "premise", "sentence2": "a red circle", "gold_label": "contradiction",
         "pairID": "p0"},
        {"Flikr30kID": "200.jpg", "sentence2": "a blue square", "gold_label": "-", "pairID": "p1"},
        {"Flikr30kID": "200.jpg", "sentence2": "a green circle", "gold_label": "entailment", "pairID": "p2"},
        {"Flikr30kID": "100.jpg", "sentence2": "a big object", "gold_label": "neutral", "pairID": "p3"}])
    bundle = build_dataset(dict(name="snli_ve", data=str(tmp_path / "snli_ve_dev.jsonl"),
                                images=str(tmp_path / "{image}"), image=IMAGE, text=TEXT), "validation")
    assert bundle.info["no_consensus"] == 1
    assert bundle.info["pair_ids"] == ["p0", "p2", "p3"]
    assert bundle.info["class_names"] == ["entailment", "neutral", "contradiction"]
    got = [bundle.random_transform(bundle.examples[i], np.random.default_rng(0)) for i in range(3)]
    assert [int(e["label"]) for e in got] == [2, 0, 1]
    assert [abs(_grey(e["image"]) - want) <= 2 for e, want in zip(got, (50, 150, 50))] == [True] * 3
    assert "image2" not in got[0]


def test_snli_ve_names_the_fields_a_line_lacks(tmp_path):
    _lines(tmp_path / "bad.jsonl", [{"image": "1.jpg", "sentence2": "s", "gold_label": "neutral"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: no Flikr30kID / Flickr30kID / Flickr30K_ID \(the line has "
                                         r"gold_label, image, sentence2\)"):
        build_dataset(dict(name="snli_ve", data=str(tmp_path / "bad.jsonl"), images="{image}", image=IMAGE,
                           text=TEXT), "validation")
