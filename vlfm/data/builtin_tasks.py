"""Vision-language tasks on the built-in shapes data, for the fusion models.

- ``shapes_vl``: image-caption pairs for pretraining with MLM (whole-word masking) and ITM: ``text``
  is the clean caption, ``mlm_text`` its masked copy with ``mlm_targets``.
- ``shapes_vqa``: a question about the main object (its colour, shape, size or position, or a yes/no
  check), an answer vocabulary (``info["answers"]``) and VQAv2-style soft scores ``vqa_targets``:
  ten simulated annotators answer, mostly correctly, and an answer given by ``n`` of them scores
  ``min(1, n / 3)``.
- ``shapes_nlvr2``: two images (``image``, ``image2``) and a statement about them; ``label`` 1 when
  true (half of them).
- ``shapes_snli_ve``: an image and a hypothesis; ``label`` 0 entailment, 1 neutral (true attributes
  plus a claim the image cannot settle), 2 contradiction (a wrong attribute), a third each.

Statements refer to the main object, by its grid position when there are several, so every label is
exact. Text is tokenised by ``task_tokenizer()``: the shapes vocabulary with the task words appended,
so caption word ids stay those of ``WordTokenizer.for_shapes()`` and a model pretrained on captions
fine-tunes on questions without remapping. Every example is a pure function of (split, index).
"""

from __future__ import annotations

import functools

import grain
import numpy as np

from vlfm.data import shapes
from vlfm.data.builtin import IMAGE_MEAN, IMAGE_STD, _ArraySource
from vlfm.data.masking import mlm_mask
from vlfm.data.normalization import NORMALIZE
from vlfm.data.pipeline import DATASETS, DatasetBundle
from vlfm.data.tokenizers import WordTokenizer

TASK_WORDS = ("what", "color", "shape", "size", "is", "where", "big", "or", "object", "yes", "no", "image", "images",
              "has", "contains", "both", "have", "two", "show", "same", "child", "drew", "made", "paper", "new",
              "someone", "likes", "by", "hand", "one")
ANSWERS: tuple[str, ...] = (shapes.COLORS + shapes.SHAPES + shapes.SIZES + shapes.POSITIONS + ("yes", "no"))
NUM_ANNOTATORS = 10
ANNOTATOR_ACCURACY = 0.9
VE_LABELS = ("entailment", "neutral", "contradiction")
_UNVERIFIABLE = ("a child drew the {obj}", "the {obj} is made of paper", "the {obj} is new",
                 "someone likes the {obj}", "the {obj} was drawn by hand")
_SPLIT_SALT = {"vqa": 11, "nlvr2": 12, "snli_ve": 13}


@functools.lru_cache(maxsize=1)
def task_tokenizer() -> WordTokenizer:
    """The shapes vocabulary followed by the task words (caption word ids unchanged)."""
    extra = sorted(set(TASK_WORDS) - set(shapes.VOCAB))
    return WordTokenizer(list(shapes.VOCAB) + extra)


def _bundle(arrays: dict[str, np.ndarray], info: dict, transform=None) -> DatasetBundle:
    tokenizer = task_tokenizer()
    scale = ((IMAGE_MEAN,) * 3, (IMAGE_STD,) * 3)  # images uint8 in the pipeline, scaled to [-1, 1] after it
    info = dict(info, tokenizer=tokenizer, vocab_size=tokenizer.vocab_size,
                **{NORMALIZE: {key: scale for key in ("image", "image2") if key in arrays}})
    return DatasetBundle(grain.MapDataset.source(_ArraySource(arrays)), transform, info)


def _encode(texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = task_tokenizer().encode_batch(texts, max_len)
    return tokens["ids"], tokens["mask"]


def _rng(split: str, task: str, index: int) -> np.random.Generator:
    return np.random.default_rng([shapes.SPLITS[split], _SPLIT_SALT[task], index])


def _other(rng: np.random.Generator, n: int, value: int) -> int:
    """A uniformly drawn index in range(n) other than ``value``."""
    return int((value + rng.integers(1, n)) % n)


def _object(color: int, shape: int) -> str:
    return f"{shapes.COLORS[color]} {shapes.SHAPES[shape]}"


# ----------------------------------------------------------------------------------------------------
# Pretraining pairs


def _mlm_transform(example: dict, rng: np.random.Generator, *, prob: float, whole_word: bool) -> dict:
    tok = task_tokenizer()
    ids = example["text"]
    special = np.array([tok.pad_id, tok.bos_id, tok.eos_id], np.int32)
    masked, targets = mlm_mask(ids, rng, mask_id=tok.mask_id, vocab_size=tok.vocab_size, special_ids=special,
                               prob=prob, word_starts=tok.word_starts(ids) if whole_word else None)
    return dict(example, mlm_text=masked, mlm_targets=targets)


@DATASETS.register("shapes_vl")
def shapes_vl(split: str, num_examples: int = 20_000, image_size: int = 32, max_objects: int = 2, max_len: int = 24,
              mlm_prob: float = 0.15, whole_word: bool = True, cache_dir: str | None = None) -> DatasetBundle:
    """Pairs with the clean caption (``text``, ``text_mask``) and a masked copy (``mlm_text``,
    ``mlm_targets``; whole-word masking, which for the word-level tokenizer is token masking)."""
    data = shapes.load(split, num_examples, image_size, max_objects, cache_dir=cache_dir)
    ids, mask = _encode(list(data["caption"]), max_len)
    arrays = dict(image=data["image"], text=ids, text_mask=mask, label=data["label"])
    transform = functools.partial(_mlm_transform, prob=mlm_prob, whole_word=whole_word) if mlm_prob > 0 else None
    return _bundle(arrays, dict(name="shapes_vl", max_len=max_len), transform)


# ----------------------------------------------------------------------------------------------------
# VQA


def _confusion(rng: np.random.Generator, kind: str, answer: str) -> str:
    """A plausible wrong answer of the same kind (a neighbouring cell for positions)."""
    if kind == "position":
        p = shapes.POSITIONS.index(answer)
        r, c = divmod(p, 3)
        near = [(r + dr) * 3 + (c + dc) for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)) if 0 <= r + dr < 3 and
                0 <= c + dc < 3]
        return shapes.POSITIONS[near[int(rng.integers(len(near)))]]
    options = {"color": shapes.COLORS, "shape": shapes.SHAPES, "size": shapes.SIZES, "yesno": ("yes", "no")}[kind]
    return options[_other(rng, len(options), options.index(answer))]


def vqa_annotation(split: str, index: int, attrs: dict[str, int], several: bool) -> tuple[str, str, str, list[str]]:
    """(question, true answer, question kind, the ten simulated annotators' answers) for one image's main
    object."""
    rng = _rng(split, "vqa", index)
    color, shape, size, pos = (attrs[k] for k in ("color", "shape", "size", "position"))
    where = f" at the {shapes.POSITIONS[pos]}" if several else ""
    kind = ("color", "shape", "size", "position", "yesno")[int(rng.integers(5))]
    if kind == "color":
        question, answer = f"what color is the {shapes.SHAPES[shape]}{where}", shapes.COLORS[color]
    elif kind == "shape":
        question, answer = f"what shape is the {shapes.COLORS[color]} object{where}", shapes.SHAPES[shape]
    elif kind == "size":
        question, answer = f"is the {_object(color, shape)}{where} big or small", shapes.SIZES[size]
    elif kind == "position":
        question, answer = f"where is the {_object(color, shape)}", shapes.POSITIONS[pos]
    else:
        truth = bool(rng.random() < 0.5)
        c, s = color, shape
        if not truth:
            c, s = (_other(rng, len(shapes.COLORS), c), s) if rng.random() < 0.5 else (c, _other(rng, 7, s))
        question, answer = f"is there a {_object(c, s)}{where}", "yes" if truth else "no"
    given = [answer if rng.random() < ANNOTATOR_ACCURACY else _confusion(rng, kind, answer)
             for _ in range(NUM_ANNOTATORS)]
    return question, answer, kind, given


def vqa_example(split: str, index: int, attrs: dict[str, int], several: bool) -> tuple[str, str, np.ndarray]:
    """(question, majority answer, soft scores over ANSWERS) for one image's main object."""
    question, _, _, given = vqa_annotation(split, index, attrs, several)
    counts = np.zeros(len(ANSWERS), np.float32)
    for answer in given:
        counts[ANSWERS.index(answer)] += 1
    return question, ANSWERS[int(np.argmax(counts))], np.minimum(1.0, counts / 3.0)


@DATASETS.register("shapes_vqa")
def shapes_vqa(split: str, num_examples: int = 20_000, image_size: int = 32, max_objects: int = 2, max_len: int = 16,
               cache_dir: str | None = None, annotations: bool = False) -> DatasetBundle:
    """Image, question (``text``), ``vqa_targets`` (soft scores over ``info["answers"]``), ``label``
    (the majority answer). ``annotations=True`` adds ``index`` and, as the ``vqav2`` dataset does,
    ``info["annotator_answers"](index)`` (the ten simulated answers), ``question_ids`` and
    ``answer_types``, for the ``vqav2`` evaluator's official rule."""
    data = shapes.load(split, num_examples, image_size, max_objects, cache_dir=cache_dir)
    questions, labels, targets = [], [], []
    for i in range(num_examples):
        attrs = {k: int(data[k][i]) for k in ("color", "shape", "size", "position")}
        q, a, t = vqa_example(split, i, attrs, several=max_objects > 1)
        questions.append(q)
        labels.append(ANSWERS.index(a))
        targets.append(t)
    ids, mask = _encode(questions, max_len)
    arrays = dict(image=data["image"], text=ids, text_mask=mask, vqa_targets=np.stack(targets),
                  label=np.array(labels, np.int32))
    info = dict(name="shapes_vqa", max_len=max_len, answers=list(ANSWERS), num_answers=len(ANSWERS))
    if annotations:
        given = [vqa_annotation(split, i, {k: int(data[k][i]) for k in ("color", "shape", "size", "position")},
                                max_objects > 1) for i in range(num_examples)]
        arrays["index"] = np.arange(num_examples, dtype=np.int32)
        info.update(annotator_answers=[g[3] for g in given].__getitem__, question_ids=list(range(num_examples)),
                    answer_types=["yes/no" if g[2] == "yesno" else "other" for g in given])
    return _bundle(arrays, info)


# ----------------------------------------------------------------------------------------------------
# NLVR2 and visual entailment (one object per image, so every statement is exact)


def nlvr2_example(split: str, index: int, color: np.ndarray, shape: np.ndarray) -> tuple[int, int, str, int]:
    """(left image index, right image index, statement, label) over a pool of single-object images."""
    rng = _rng(split, "nlvr2", index)
    n = len(color)
    a = index % n
    truth = bool(rng.random() < 0.5)
    kind = int(rng.integers(4))
    if kind in (0, 1):  # one side has a given object
        b = int(rng.integers(n))
        side, target = (("left", a), ("right", b))[kind]
        c, s = int(color[target]), int(shape[target])
        if not truth:
            c, s = (_other(rng, len(shapes.COLORS), c), s) if rng.random() < 0.5 else (c, _other(rng, 7, s))
        verb = ("has", "contains")[int(rng.integers(2))]
        return a, b, f"the {side} image {verb} a {_object(c, s)}", int(truth)
    attr = color if kind == 2 else shape
    same = np.flatnonzero(attr == attr[a])
    other = np.flatnonzero(attr != attr[a])
    pool = same[same != a] if truth else other
    b = int(pool[int(rng.integers(len(pool)))])
    if kind == 2:  # when false, name either image's colour: the other image lacks it
        named = color[a] if truth or rng.random() < 0.5 else color[b]
        return a, b, f"both images have a {shapes.COLORS[int(named)]} object", int(truth)
    return a, b, "the two images show the same shape", int(truth)


@DATASETS.register("shapes_nlvr2")
def shapes_nlvr2(split: str, num_examples: int = 20_000, image_size: int = 32, max_len: int = 16,
                 pool_size: int | None = None, cache_dir: str | None = None) -> DatasetBundle:
    """``image`` (left), ``image2`` (right), a statement (``text``) and ``label`` (1 = true)."""
    pool = shapes.load(split, pool_size or num_examples, image_size, 1, cache_dir=cache_dir)
    left, right, texts, labels = [], [], [], []
    for i in range(num_examples):
        a, b, text, label = nlvr2_example(split, i, pool["color"], pool["shape"])
        left.append(a)
        right.append(b)
        texts.append(text)
        labels.append(label)
    ids, mask = _encode(texts, max_len)
    arrays = dict(image=pool["image"][left], image2=pool["image"][right], text=ids, text_mask=mask,
                  label=np.array(labels, np.int32))
    return _bundle(arrays, dict(name="shapes_nlvr2", max_len=max_len, num_classes=2))


def snli_ve_example(split: str, index: int, attrs: dict[str, int]) -> tuple[str, int]:
    """(hypothesis, label) for a single-object image. A contradiction changes one attribute the
    hypothesis mentions; neutral and half the contradictions wrap the object in a claim the image
    cannot settle, so that claim alone does not give the label away."""
    rng = _rng(split, "snli_ve", index)
    label = int(rng.integers(3))
    form = int(rng.integers(3))
    mentioned = (("color", "shape"), ("size", "color"), ("color", "shape", "position"))[form]
    values = dict(attrs)
    changed = None
    if label == 2:
        changed = mentioned[int(rng.integers(len(mentioned)))]
        sizes = dict(color=len(shapes.COLORS), shape=len(shapes.SHAPES), size=len(shapes.SIZES),
                     position=len(shapes.POSITIONS))
        values[changed] = _other(rng, sizes[changed], values[changed])
    if form == 1:
        obj = f"{shapes.SIZES[values['size']]} {shapes.COLORS[values['color']]} object"
    else:
        obj = _object(values["color"], values["shape"])
    statement = f"the {obj} is at the {shapes.POSITIONS[values['position']]}" if form == 2 else f"there is a {obj}"
    if label == 1 or (label == 2 and changed != "position" and rng.random() < 0.5):
        statement = _UNVERIFIABLE[int(rng.integers(len(_UNVERIFIABLE)))].format(obj=obj)
    return statement, label


@DATASETS.register("shapes_snli_ve")
def shapes_snli_ve(split: str, num_examples: int = 20_000, image_size: int = 32, max_len: int = 16,
                   cache_dir: str | None = None) -> DatasetBundle:
    """``image``, a hypothesis (``text``) and ``label`` (0 entailment, 1 neutral, 2 contradiction)."""
    data = shapes.load(split, num_examples, image_size, 1, cache_dir=cache_dir)
    texts, labels = [], []
    for i in range(num_examples):
        attrs = {k: int(data[k][i]) for k in ("color", "shape", "size", "position")}
        text, label = snli_ve_example(split, i, attrs)
        texts.append(text)
        labels.append(label)
    ids, mask = _encode(texts, max_len)
    arrays = dict(image=data["image"], text=ids, text_mask=mask, label=np.array(labels, np.int32))
    return _bundle(arrays, dict(name="shapes_snli_ve", max_len=max_len, num_classes=3,
                                class_names=list(VE_LABELS)))
