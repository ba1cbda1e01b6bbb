"""Zero-shot classification by CLIP's protocol: the shipped ImageNet metadata, the prompt ensemble (a hand
case where averaging raw embeddings gives another class), top-k with ties, and the evaluator on the
built-in data with its own class names."""

import io
import re

import numpy as np
import pytest
from PIL import Image

from vlfm.data import shapes
from vlfm.data.pipeline import build_dataset, eval_arrays
from vlfm.data.tokenizers import build_tokenizer
from vlfm.evaluators import EVALUATORS
from vlfm.evaluators.imagenet_metadata import CLIP_IMAGENET_TEMPLATES, IMAGENET_CLASS_NAMES
from vlfm.evaluators.zeroshot import CLIP_IMAGENET_SIMPLE_TEMPLATES, ensemble_class_embeddings, topk_accuracy


def test_shipped_imagenet_metadata():
    assert len(IMAGENET_CLASS_NAMES) == 1000 and len(CLIP_IMAGENET_TEMPLATES) == 80
    assert len(set(CLIP_IMAGENET_TEMPLATES)) == 80 and all(t.count("{}") == 1 for t in CLIP_IMAGENET_TEMPLATES)
    assert set(CLIP_IMAGENET_SIMPLE_TEMPLATES) <= set(CLIP_IMAGENET_TEMPLATES)
    # spot checks of the label order (TFDS imagenet2012 / ILSVRC class indices)
    assert IMAGENET_CLASS_NAMES[0] == "tench" and IMAGENET_CLASS_NAMES[1] == "goldfish"
    assert IMAGENET_CLASS_NAMES[207] == "Golden Retriever" and IMAGENET_CLASS_NAMES[999] == "toilet paper"
    # open_clip's two duplicates: "missile" (657, 744) and "sunglasses" (836, 837)
    assert len(set(IMAGENET_CLASS_NAMES)) == 998 and IMAGENET_CLASS_NAMES[744] == IMAGENET_CLASS_NAMES[657]
    assert CLIP_IMAGENET_TEMPLATES[0].format("tench") == "a bad photo of a tench."


def _angle(deg):
    return np.array([np.cos(np.radians(deg)), np.sin(np.radians(deg))])


def test_prompt_ensemble_normalises_each_prompt_first():
    """Class A's prompts point at 0 deg (norm 10) and 90 deg (norm 1): normalised and averaged they point at
    45 deg; averaged raw, at 5.7 deg. Class B's point at 20 deg. An image at 40 deg is class A by CLIP's rule
    and class B by the raw average."""
    prompts = np.stack([np.stack([10 * _angle(0), _angle(90)]), np.stack([_angle(20), 3 * _angle(20)])])
    classes = ensemble_class_embeddings(prompts)
    np.testing.assert_allclose(classes[0], _angle(45), atol=1e-6)
    np.testing.assert_allclose(classes[1], _angle(20), atol=1e-6)
    image = _angle(40)
    assert np.argmax(classes @ image) == 0
    raw = prompts.mean(axis=1)
    raw /= np.linalg.norm(raw, axis=-1, keepdims=True)
    assert np.argmax(raw @ image) == 1


def test_topk_accuracy_ties_count_against():
    logits = np.array([[3.0, 2.0, 1.0], [1.0, 1.0, 1.0], [0.0, 5.0, 4.0]])
    labels = np.array([0, 1, 2])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)  # the all-tied row ranks last
    assert topk_accuracy(logits, labels, 3) == 1.0


def test_evaluator_on_builtin_data_with_its_class_names():
    """Random linear encoders: the evaluator's figures equal the protocol computed here step by step."""
    data = dict(name="shapes", num_examples=40, image_size=8, max_len=12)
    bundle = build_dataset(dict(data, view="image_label"), "validation")
    tokenizer = bundle.info["tokenizer"]
    rng = np.random.default_rng(0)
    word_table = rng.normal(size=(tokenizer.vocab_size, 16)).astype(np.float32)
    w = rng.normal(size=(8 * 8 * 3, 16)).astype(np.float32)

    def encode_text(params, batch):
        return (word_table[batch["text"]] * batch["text_mask"][..., None]).sum(1)

    def encode_image(params, batch):
        return batch["image"].reshape(len(batch["image"]), -1) @ w

    templates = ["a photo of a {}.", "{}", "there is a {}"]
    got = dict(EVALUATORS.get("clip_zeroshot")({"encode_image": encode_image, "encode_text": encode_text},
                                               data=data, templates=templates, batch_size=16).run(None))
    arrays = eval_arrays(bundle, 40)
    class_embeddings = []
    for name in shapes.CLASS_NAMES:
        tokens = tokenizer.encode_batch([t.format(name) for t in templates], 12)
        z = encode_text(None, {"text": tokens["ids"], "text_mask": tokens["mask"]})
        z = (z / np.linalg.norm(z, axis=1, keepdims=True)).mean(0)
        class_embeddings.append(z / np.linalg.norm(z))
    scores = encode_image(None, arrays) @ np.stack(class_embeddings).T
    order = np.argsort(-scores, axis=1)
    assert got["accuracy"] == pytest.approx(np.mean(order[:, 0] == arrays["label"]))
    assert got["top5_accuracy"] == pytest.approx(np.mean([l in o[:5] for l, o in zip(arrays["label"], order)]))
    assert got["num_classes"] == 56 and got["num_templates"] == 3 and got["chance"] == pytest.approx(1 / 56)

    # the data's own prompts, and CLIP's 80 templates with the data's names
    fns = {"encode_image": encode_image, "encode_text": encode_text}
    own = dict(EVALUATORS.get("clip_zeroshot")(fns, data=data, templates="data", num_examples=8).run(None))
    assert own["num_templates"] == len(shapes.DEFAULT_PROMPT_TEMPLATES)
    clip80 = dict(EVALUATORS.get("clip_zeroshot")(fns, data=data, num_examples=8).run(None))
    assert clip80["num_templates"] == 80
    with pytest.raises(ValueError, match="56 classes but class_names gives 1000"):
        EVALUATORS.get("clip_zeroshot")(fns, data=data, class_names="imagenet")
    with pytest.raises(ValueError, match="unknown templates"):
        EVALUATORS.get("clip_zeroshot")(fns, data=data, templates="clip_imagenet_80")


def test_imagenet_names_on_a_prepared_tfds_dataset(tmp_path):
    """A TFDS dataset like imagenet2012 (1,000-class label, synset-style names, no text field), written
    here without TensorFlow: class_names="imagenet" replaces the synset names, the evaluator's own
    tokenizer encodes the prompts. The image encoder returns the ensembled embedding of the image's class
    (computed here), so every image must be classified right; the two "missile" classes tie, and a tie
    counts against the model."""
    import tensorflow_datasets as tfds  # heavy: imported where used, as the TFDS source does

    labels = [0, 1, 207, 999, 657, 744]

    class VlfmToyImagenet(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=[f"n{i:08d}" for i in range(1000)])}))

        def _split_generators(self, dl_manager):
            return {"validation": self._generate_examples()}

        def _generate_examples(self):
            for k, label in enumerate(labels):
                pixels = np.zeros((4, 4, 3), np.uint8)
                pixels[..., 0], pixels[..., 1] = label % 256, label // 256
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="PNG")
                yield k, {"image": buf.getvalue(), "label": label}

    VlfmToyImagenet(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    texts = [t.format(n) for n in IMAGENET_CLASS_NAMES for t in CLIP_IMAGENET_SIMPLE_TEMPLATES]
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    tokenizer_cfg = dict(kind="wordpiece", path=str(vocab))
    tokenizer = build_tokenizer(**tokenizer_cfg)
    table = np.random.default_rng(5).normal(size=(tokenizer.vocab_size, 32)).astype(np.float32)

    def encode_text(params, batch):
        return (table[batch["text"]] * batch["text_mask"][..., None]).sum(1)

    tokens = tokenizer.encode_batch(texts, 32)
    prompts = encode_text(None, {"text": tokens["ids"], "text_mask": tokens["mask"]}).reshape(1000, 7, 32)
    classes = ensemble_class_embeddings(prompts)

    def encode_image(params, batch):
        rgb = np.rint((batch["image"][:, 0, 0, :2] * 0.5 + 0.5) * 255).astype(int)
        return classes[rgb[:, 0] + 256 * rgb[:, 1]]

    data = dict(name="tfds", tfds_name="vlfm_toy_imagenet", data_dir=str(tmp_path),
                image=dict(size=4, eval_crop="resize", mean_std="half"), label=dict(key="label"))
    got = dict(EVALUATORS.get("clip_zeroshot")(
        {"encode_image": encode_image, "encode_text": encode_text}, data=data, view=None, class_names="imagenet",
        templates="clip_imagenet_simple", tokenizer=tokenizer_cfg, max_len=32, batch_size=512).run(None))
    assert got["num_classes"] == 1000 and got["num_templates"] == 7
    assert got["accuracy"] == pytest.approx(4 / 6) and got["top5_accuracy"] == 1.0
