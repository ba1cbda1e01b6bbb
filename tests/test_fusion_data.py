"""Vision-language task datasets on the built-in shapes data, and the fusion evaluators (VQA accuracy,
masked tokens with the image, ITM accuracy, ITM re-ranking retrieval) on hand-made predictions."""

import numpy as np
import pytest

from vlfm.data import build_dataset, shapes
from vlfm.data.builtin_tasks import ANSWERS, TASK_WORDS, task_tokenizer
from vlfm.data.pipeline import eval_arrays
from vlfm.data.tokenizers import WordTokenizer
from vlfm.evaluators import EVALUATORS

N = 300


def _arrays(name, split="validation", n=N, **kw):
    bundle = build_dataset(dict(name=name, num_examples=n, **kw), split)
    return bundle, eval_arrays(bundle, n)


def test_task_tokenizer_extends_the_caption_vocabulary():
    tok, base = task_tokenizer(), WordTokenizer.for_shapes()
    assert tok.tokens[:base.vocab_size] == base.tokens  # caption ids unchanged
    assert set(TASK_WORDS) <= set(tok.tokens) and tok.vocab_size <= 96  # the tiny configs' vocab_size
    captions = list(shapes.generate("validation", 20)["caption"])
    np.testing.assert_array_equal(tok.encode_batch(captions, 24)["ids"], base.encode_batch(captions, 24)["ids"])


def test_shapes_vl_has_clean_and_masked_text():
    bundle, a = _arrays("shapes_vl", max_len=24)
    tok = bundle.info["tokenizer"]
    assert tok.unk_id not in a["text"]  # no unknown words
    lengths = a["text_mask"].sum(1)
    assert np.all(a["text"][np.arange(N), lengths - 1] == tok.eos_id)  # 24 holds the longest caption
    masked = a["mlm_targets"] >= 0
    assert masked.any(axis=1).all()  # every caption has a target
    np.testing.assert_array_equal(a["mlm_targets"][masked], a["text"][masked])
    assert np.all(a["mlm_text"][~masked] == a["text"][~masked])
    assert 0.5 < np.mean(a["mlm_text"][masked] == tok.mask_id) < 0.95  # BERT's 80% [MASK]
    _, again = _arrays("shapes_vl", max_len=24)
    np.testing.assert_array_equal(again["mlm_text"], a["mlm_text"])  # evaluation masks are fixed


def test_vqa_questions_answers_and_soft_scores():
    bundle, a = _arrays("shapes_vqa")
    assert bundle.info["answers"] == list(ANSWERS) and a["vqa_targets"].shape == (N, len(ANSWERS))
    tok = bundle.info["tokenizer"]
    assert tok.unk_id not in a["text"]
    t = a["vqa_targets"]
    assert set(np.round(np.unique(t) * 3).astype(int)) <= {0, 1, 2, 3}  # min(1, n/3) with n annotators
    np.testing.assert_array_equal(t[np.arange(N), a["label"]], 1.0)  # the majority answer scores fully
    data = shapes.load("validation", N, 32, 2)
    for i in range(40):
        q, answer = tok.decode(a["text"][i]), ANSWERS[a["label"][i]]
        if q.startswith("what color"):
            assert answer == shapes.COLORS[data["color"][i]]
        elif q.startswith("what shape"):
            assert answer == shapes.SHAPES[data["shape"][i]]
        elif q.startswith("where"):
            assert answer == shapes.POSITIONS[data["position"][i]]
        elif q.startswith("is there"):
            named = f"{shapes.COLORS[data['color'][i]]} {shapes.SHAPES[data['shape'][i]]}"
            assert (answer == "yes") == (named in q)
        else:
            assert answer == shapes.SIZES[data["size"][i]]
    # Answers of every kind occur; the prior baseline is far from perfect.
    assert len(np.unique(a["label"])) > 20 and t[:, np.argmax(t.sum(0))].mean() < 0.3


def test_nlvr2_statements_are_true_exactly_when_labelled():
    bundle, a = _arrays("shapes_nlvr2")
    tok = bundle.info["tokenizer"]
    assert 0.4 < a["label"].mean() < 0.6 and a["image2"].shape == a["image"].shape
    pool = shapes.load("validation", N, 32, 1)
    mean_colour = {c: shapes.COLOR_RGB[i] for i, c in enumerate(shapes.COLORS)}

    def colour_of(img):  # the object's colour: the palette entry nearest to the most saturated pixel
        flat = ((img.reshape(-1, 3) + 1) * 127.5)
        px = flat[np.argmax(flat.max(1) - flat.min(1))]
        return min(mean_colour, key=lambda c: np.abs(mean_colour[c] - px).sum())

    checked = 0
    for i in range(60):
        text = tok.decode(a["text"][i])
        if text.startswith("both images have"):
            named = text.split()[4]
            truth = colour_of(a["image"][i]) == named and colour_of(a["image2"][i]) == named
            assert truth == bool(a["label"][i]), text
            checked += 1
        elif text.startswith("the left image"):
            assert colour_of(a["image"][i]) == text.split()[5] or not a["label"][i]
    assert checked > 5 and len(pool["image"]) == N


def test_snli_ve_labels():
    bundle, a = _arrays("shapes_snli_ve")
    tok = bundle.info["tokenizer"]
    assert bundle.info["class_names"] == ["entailment", "neutral", "contradiction"]
    assert np.all(np.bincount(a["label"]) > N / 5)
    data = shapes.load("validation", N, 32, 1)
    for i in range(60):
        text, label = tok.decode(a["text"][i]), a["label"][i]
        colour, shape = shapes.COLORS[data["color"][i]], shapes.SHAPES[data["shape"][i]]
        if label == 0:  # entailment: every attribute named is the object's
            assert colour in text.split() and ("object" in text or shape in text)
        if label == 1:  # neutral: true attributes inside a claim the image cannot settle
            assert colour in text.split() and not text.startswith("there is")
        if label == 2 and text.startswith("there is a") and "object" not in text:
            assert f"{colour} {shape}" not in text


# ----------------------------------------------------------------------------------------------------
# Evaluators with hand-made predict fns


def test_vqa_evaluator_scores_the_predicted_answer():
    data = dict(name="shapes_vqa", num_examples=64)
    _, a = _arrays("shapes_vqa", n=64)
    oracle = {"vqa_logits": lambda p, b: np.eye(len(ANSWERS))[_lookup(a, b)]}
    ev = EVALUATORS.get("vqa")(oracle, data=data, num_examples=64, batch_size=16)
    results = dict(ev.run(None))
    assert results["accuracy"] == pytest.approx(1.0) and results["prior_baseline"] < 0.5
    wrong = {"vqa_logits": lambda p, b: -np.eye(len(ANSWERS))[_lookup(a, b)]}
    assert dict(EVALUATORS.get("vqa")(wrong, data=data, num_examples=64).run(None))["accuracy"] < 0.5


def _lookup(arrays, batch):
    """Row of each batch example in ``arrays`` (by its question and image), then its majority answer."""
    keys = [hash(t.tobytes() + i.tobytes()) for t, i in zip(arrays["text"], arrays["image"])]
    rows = [keys.index(hash(t.tobytes() + i.tobytes())) for t, i in zip(batch["text"], batch["image"])]
    return arrays["label"][rows]


def test_itm_and_mlm_evaluators():
    data = dict(name="shapes_vl", num_examples=32)
    _, a = _arrays("shapes_vl", n=32)
    truth = {hash(i.tobytes()): t.tobytes() for i, t in zip(a["image"], a["text"])}
    score = lambda p, b: np.array([1.0 if truth[hash(i.tobytes())] == t.tobytes() else -1.0  # noqa: E731
                                   for i, t in zip(b["image"], b["text"])])
    results = dict(EVALUATORS.get("itm_accuracy")({"itm_score": score}, data=data, num_examples=32).run(None))
    assert results["accuracy"] == 1.0 and results["ranking_accuracy"] == 1.0
    text_of = {m.tobytes(): t for m, t in zip(a["mlm_text"], a["text"])}
    mlm = lambda p, b: np.eye(96)[np.stack([text_of[m.tobytes()] for m in b["mlm_text"]])]  # noqa: E731
    results = dict(EVALUATORS.get("vl_mlm_accuracy")({"mlm_logits": mlm}, data=data, num_examples=32).run(None))
    assert results["accuracy"] == 1.0 and 0 < results["unigram_baseline"] < 0.5


def test_itm_evaluator_reads_videos_with_input_key():
    """Video-text matching: the mismatched input is another row's clip under ``input_key``."""
    data = dict(name="moving_shapes", num_examples=16, num_frames=2, image_size=16, view="video_caption")
    _, a = _arrays("moving_shapes", n=16, num_frames=2, image_size=16, view="video_caption")
    truth = {hash(v.tobytes()): t.tobytes() for v, t in zip(a["video"], a["text"])}
    score = lambda p, b: np.array([1.0 if truth[hash(v.tobytes())] == t.tobytes() else -1.0  # noqa: E731
                                   for v, t in zip(b["video"], b["text"])])
    ev = EVALUATORS.get("itm_accuracy")({"itm_score": score}, data=data, num_examples=16, input_key="video")
    results = dict(ev.run(None))
    assert results["accuracy"] == 1.0 and results["ranking_accuracy"] == 1.0
    always = {"itm_score": lambda p, b: np.ones(len(b["video"]))}
    ev = EVALUATORS.get("itm_accuracy")(always, data=data, num_examples=16, input_key="video")
    assert dict(ev.run(None))["accuracy"] == 0.5


def test_rerank_retrieval_fixes_a_poor_dual_encoder_inside_the_top_k():
    """A dual encoder that ranks the right caption 2nd-5th, and an ITM oracle: re-ranking its top 10
    lifts R@1 to 1; with k=1 nothing can change."""
    n = 20
    r = np.random.default_rng(0)
    zt = np.linalg.qr(r.normal(size=(32, 32)))[0][:n]
    offset = r.integers(1, 5, size=n)
    # Each image embedding sits between its own caption and a decoy caption, nearer the decoy.
    decoy = (np.arange(n) + offset) % n
    zi = 0.4 * zt + 0.6 * zt[decoy]
    images = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 3), np.float32)
    texts = np.arange(n)[:, None].astype(np.int32)
    fns = {"encode_image": lambda p, b: zi[b["image"][:, 0, 0, 0].astype(int)],
           "encode_text": lambda p, b: zt[b["text"][:, 0]],
           "itm_score": lambda p, b: (b["image"][:, 0, 0, 0].astype(int) == b["text"][:, 0]).astype(np.float32)}
    ev = EVALUATORS.get("itm_rerank_retrieval").__new__(EVALUATORS.get("itm_rerank_retrieval"))
    ev.itm_score, ev.encode_image, ev.encode_text, ev.dual_params = fns["itm_score"], fns["encode_image"], \
        fns["encode_text"], None
    ev.images, ev.texts, ev.batch_size = images, {"text": texts, "text_mask": np.ones_like(texts)}, 8
    ev.sim_weight = 1.0
    for k, expected, combine in ((10, 1.0, "itm"), (10, 1.0, "sum"), (1, None, "itm")):
        ev.k, ev.combine = k, combine
        res = dict(ev.run(None))
        assert res["dual_i2t_r1"] < 0.5
        if expected is not None:
            assert res["i2t_r1"] == expected and res["t2i_r1"] == expected
        else:  # the order is the dual encoder's
            assert all(res[f"{d}_r{j}"] == res[f"dual_{d}_r{j}"] for d in ("i2t", "t2i") for j in (1, 5, 10))


def test_rerank_retrieval_sum_weighs_the_similarity_by_the_learned_temperature():
    """``combine="sum"``: ITM + w * cosine; ``sim_weight="logit_scale"`` takes w = exp(logit_scale)
    of the dual encoder's params (capped at 100), so a similarity gap of 0.1 outweighs an ITM gap of 1
    at w = 20 but not at the default w = 1."""
    cls = EVALUATORS.get("itm_rerank_retrieval")
    ev = cls.__new__(cls)
    ev.combine, ev.k, ev.batch_size = "sum", 2, 8
    ev.images = np.arange(2, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 3), np.float32)
    ev.texts = {"text": np.arange(2, dtype=np.int32)[:, None], "text_mask": np.ones((2, 1), np.int32)}
    ev.itm_score = lambda p, b: (b["text"][:, 0] == 1).astype(np.float32)  # prefers caption 1 by 1 logit
    sim = np.array([[0.5, 0.4], [0.5, 0.4]], np.float32)  # the dual encoder prefers caption 0 by 0.1
    for weight, dual_params, first in ((1.0, None, 1), ("logit_scale", {"logit_scale": np.log(20.0)}, 0),
                                       ("logit_scale", {"logit_scale": np.log(1e4)}, 0)):
        ev.sim_weight = weight
        w = ev._weight(dual_params)
        assert w == pytest.approx(1.0 if weight == 1.0 else min(np.exp(dual_params["logit_scale"]), 100.0))
        assert np.argmax(ev._rerank(None, sim, images_first=True, weight=w)[0]) == first
    ev.sim_weight = "logit_scale"
    with pytest.raises(ValueError, match="logit_scale"):
        ev._weight({"other": 1.0})
    with pytest.raises(ValueError, match="sim_weight"):
        cls({"itm_score": ev.itm_score}, data={}, sim_weight="temperature")


def test_rerank_retrieval_with_a_separately_trained_dual_encoder(tmp_path):
    """``dual_encoder={"model", "params"}`` loads a params export (e.g. a clip_tiny run) for the first stage."""
    import jax
    import flax.linen as nn
    from vlfm.models import build_model
    from vlfm.core.checkpoint import export_params

    cfg = dict(name="dual_encoder", embed_dim=8,
               image=dict(name="vit", image_size=32, patch_size=16, width=16, depth=1, num_heads=2, mlp_dim=32),
               text=dict(name="text_transformer", vocab_size=96, max_len=24, width=16, depth=1, num_heads=2,
                         mlp_dim=32, pool="eos", eos_id=3))
    model = build_model(cfg)
    _, a = _arrays("shapes", n=16, max_len=24)
    params = nn.meta.unbox(model.init(jax.random.key(0), {"image": a["image"][:1], "text": a["text"][:1]})["params"])
    export_params(params, tmp_path / "params")
    itm_score = lambda p, b: np.zeros(len(b["text"]), np.float32)  # noqa: E731  (keeps the dual order)
    ev = EVALUATORS.get("itm_rerank_retrieval")({"itm_score": itm_score}, data=dict(name="shapes", max_len=24),
                                                num_examples=16, dual_encoder={"model": cfg,
                                                                               "params": str(tmp_path / "params")})
    res = dict(ev.run(None))
    zi = model.apply({"params": params}, a["image"], method=type(model).encode_image)
    zt = model.apply({"params": params}, a["text"], a["text_mask"], method=type(model).encode_text)
    sim = np.asarray(zi) @ np.asarray(zt).T
    want = np.mean(np.argmax(sim, 1) == np.arange(16))
    assert res["dual_i2t_r1"] == pytest.approx(want) and res["i2t_r1"] == res["dual_i2t_r1"]
