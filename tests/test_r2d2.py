"""R2D2: independent cross encoders (``exchange=False``), its two ITM heads on the hard-negative pairs, the
pair scores the re-ranking evaluator can pick, and the configs."""

import re
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.evaluators.fusion import ItmRerankRetrievalEvaluator
from vlfm.models import build_model
from vlfm.models.fusion import CoAttentionFusion
from vlfm.train.config import load_config

TOWERS = dict(
    image=dict(name="vit", image_size=16, patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64, pre_norm=True,
               patch_bias=False),
    text=dict(name="bert", vocab_size=40, max_len=12, width=32, depth=2, num_heads=2, mlp_dim=64),
    width=32, depth=2, num_heads=2, mlp_dim=64, contrastive_dim=16, init_std=None, dropout_rate=0.0,
    attn_dropout_rate=0.0)


def test_independent_cross_encoders_never_see_the_other_stream():
    """Without exchange, the text stream reads the image *input* at every layer: the image stream's own
    layers cannot change it (with exchange, layer 1's text layer reads the image layer 0's output)."""
    r = np.random.default_rng(0)
    text, image = (jnp.asarray(r.normal(size=(2, 1, n, 16)), jnp.float32) for n in (5, 7))
    mask = jnp.ones((2, 5), bool)
    for exchange in (True, False):
        fusion = CoAttentionFusion(depth=2, num_heads=2, mlp_dim=32, exchange=exchange, scan=False)
        params = jax.jit(fusion.init)(jax.random.key(0), text, image, mask)
        flat = flax.traverse_util.flatten_dict(flax.linen.unbox(params["params"]))
        moved = {"params": flax.traverse_util.unflatten_dict(
            {k: v + 0.5 if "image_layer" in k else v for k, v in flat.items()})}
        run = jax.jit(lambda p, i, fusion=fusion: fusion.apply(p, text, i, mask)[0])
        ref = run(params, image)
        assert not np.allclose(run(params, 2.0 * image), ref, atol=1e-4)  # the text stream does read the image
        if exchange:
            assert not np.allclose(run(moved, image), ref, atol=1e-4)
        else:
            np.testing.assert_allclose(run(moved, image), ref, rtol=1e-6, atol=1e-6)


def test_r2d2_scores_hard_negative_pairs_with_both_cross_encoders():
    model = build_model(dict(name="r2d2", fgd=True, **TOWERS))
    r = np.random.default_rng(0)
    text = jnp.asarray(r.integers(5, 40, size=(4, 6)), jnp.int32)
    batch = {"image": jnp.asarray(r.normal(size=(4, 16, 16, 3)), jnp.float32), "text": text,
             "mlm_text": text.at[:, 2].set(4), "text_mask": jnp.ones((4, 6), jnp.int32),
             "itm_neg_image": jnp.array([1, 0, 3, 2]), "itm_neg_text": jnp.array([2, 3, 0, 1])}
    params = jax.jit(lambda b: model.init({"params": jax.random.key(0), "sampling": jax.random.key(1)}, b,
                                          train=True))(batch)
    rngs = {"sampling": jax.random.key(1), "dropout": jax.random.key(2)}
    out = jax.jit(lambda p, b: model.apply(p, b, train=True, rngs=rngs))(params, batch)
    assert out["itm_logits"].shape == out["itm_image_logits"].shape == (12, 2)
    np.testing.assert_array_equal(out["itm_labels"], [1] * 4 + [0] * 8)
    assert {"image_embed", "text_embed", "logit_scale"} <= set(out)
    # feature-guided distillation: the masked caption's embedding, a different vector from the full one's
    assert out["fgd_text_embed"].shape == out["text_embed"].shape == (4, 16)
    assert not np.allclose(out["fgd_text_embed"], out["text_embed"], atol=1e-4)
    pair = {k: batch[k] for k in ("image", "text", "text_mask")}
    names = ("itm_score", "itm_score_text", "itm_score_image")
    scores = jax.jit(lambda p, b: {n: model.apply(p, b, method=lambda m, x, n=n: m.PREDICT[n](m, x)) for n in names})
    score = {k: np.asarray(v) for k, v in scores(params, pair).items()}
    np.testing.assert_allclose(score["itm_score"], (score["itm_score_text"] + score["itm_score_image"]) / 2,
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(score["itm_score_text"], score["itm_score_image"])  # two heads, two encoders


def test_rerank_evaluator_names_the_valid_scores():
    with pytest.raises(ValueError, match="itm_score_text"):
        ItmRerankRetrievalEvaluator({"itm_score": None, "itm_score_text": None}, data={}, score="itm_scor")


def test_r2d2_configs_build_and_the_base_count_is_the_docstrings():
    assert load_config("configs/r2d2_tiny.py").model.name == "r2d2"
    assert load_config("configs/r2d2_tiny.py:plain").losses.multi_positive_contrastive.alpha == 0.0
    with pytest.raises(ValueError, match="plain"):
        load_config("configs/r2d2_tiny.py:tgdd")
    base = build_model(load_config("configs/r2d2_base.py").model)
    batch = {"image": jnp.zeros((1, 224, 224, 3)), "text": jnp.zeros((1, 64), jnp.int32)}
    shapes = jax.eval_shape(lambda: base.init(jax.random.key(0), batch))["params"]
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(flax.linen.unbox(shapes)))
    with open("configs/r2d2_base.py") as f:
        stated = re.search(r"cross encoders, ([\d,]+) parameters", f.read())[1]
    assert count == int(stated.replace(",", "")), count


def test_kd_hidden_reads_the_momentum_model_as_teacher():
    from vlfm.losses.distillation import kd_hidden

    s, t = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]])
    loss, _ = kd_hidden({"fgd_text_embed": s, "momentum": {"text_embed": t}}, {}, teacher="momentum",
                        student_key="fgd_text_embed", teacher_key="text_embed", distance="cosine")
    assert float(loss) == pytest.approx(1.0)  # orthogonal vectors: 1 - cos = 1
    with pytest.raises(KeyError, match="config.momentum.decay"):
        kd_hidden({"fgd_text_embed": s}, {}, teacher="momentum", student_key="fgd_text_embed")


def test_itm_momentum_distillation_hand_computed():
    from vlfm.losses.itm import itm_loss

    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    teacher = jnp.array([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = jnp.array([1, 0, 0])
    out = {"itm_logits": logits, "itm_labels": labels, "momentum": {"itm_logits": teacher}}
    loss, metrics = itm_loss(out, {}, class_weights=(1.0, 2.0), alpha=0.4)
    lp = np.log(np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(-1, keepdims=True))
    soft = np.exp(np.asarray(teacher)) / np.exp(np.asarray(teacher)).sum(-1, keepdims=True)
    target = 0.6 * np.eye(2)[[1, 0, 0]] + 0.4 * soft
    w = np.array([2.0, 1.0, 1.0])
    assert float(loss) == pytest.approx(float((w * -(target * lp).sum(-1)).sum() / w.sum()), rel=1e-6)
    assert float(metrics["teacher_accuracy"]) == pytest.approx(1 / 3)  # the teacher gets only row 3 right
    with pytest.raises(KeyError, match="from_student"):
        itm_loss({"itm_logits": logits, "itm_labels": labels, "momentum": {"itm_logits": teacher[:1]}}, {}, alpha=0.4)


def test_momentum_model_scores_the_pairs_the_student_drew():
    """``config.momentum.from_student``: the momentum model runs after the student on its hard-negative
    draws. With the student's parameters (the first step; dropout off) it scores exactly the student's
    pairs; without the draws it would score each row with itself (8 pairs, not 24)."""
    import optax

    from vlfm.losses import combined_loss
    from vlfm.optim.combine import build_combiner
    from vlfm.train.forward import Forward
    from vlfm.train.momentum import build_momentum
    from vlfm.train.state import TaskInit, init_batch, state_initializer
    from vlfm.train.step import make_train_step
    from vlfm.train.tasks import Task

    no_dropout = dict(TOWERS, text=dict(TOWERS["text"], dropout_rate=0.0, attn_dropout_rate=0.0))
    model = build_model(dict(name="r2d2", **no_dropout))
    r = np.random.default_rng(0)
    batch = {"image": r.normal(size=(8, 16, 16, 3)).astype(np.float32),
             "text": r.integers(5, 40, size=(8, 6)).astype(np.int32), "text_mask": np.ones((8, 6), np.int32)}
    momentum = build_momentum(dict(decay=0.9, from_student=["itm_neg_image", "itm_neg_text"]))
    loss_fn = combined_loss({"itm": dict(alpha=0.5), "itm_image": dict(fn="itm", logits_key="itm_image_logits",
                                                                        alpha=0.5)})
    task = Task("main", None, 8, loss_fn)
    tx = optax.chain(build_combiner(None, {"main": 1.0}), optax.adam(1e-3))
    example = {k: v[0] for k, v in batch.items()}
    init = state_initializer(model, tx, tasks=[TaskInit("main", init_batch(example, 8))], momentum=momentum)
    state = jax.jit(init)(jax.random.key(0))
    # the mechanism: the momentum model (eval mode) on the student's draws gives the student's pair logits
    params = flax.linen.unbox(state["params"])
    rngs = {"sampling": jax.random.key(3), "dropout": jax.random.key(4)}
    student = jax.jit(lambda p, b: model.apply({"params": p}, b, train=True, rngs=rngs))(
        params, batch)
    teacher = jax.jit(lambda p, b, s: momentum.outputs(model, Forward(), "main", p, {}, b, student=s)["momentum"])(
        params, batch, {k: student[k] for k in momentum.from_student})
    assert teacher["itm_logits"].shape == (24, 2)
    for key in ("itm_logits", "itm_image_logits", "itm_labels"):
        np.testing.assert_allclose(teacher[key], student[key], rtol=1e-5, atol=1e-6)
    # and in the step, where it runs after the student inside the loss
    step = jax.jit(make_train_step(model, [task], tx, optax.constant_schedule(1e-3), seed=0, momentum=momentum))
    _, metrics = step(state, {"main": batch}, {})
    for name in ("itm", "itm_image"):
        assert float(metrics[f"main/{name}/teacher_accuracy"]) == float(metrics[f"main/{name}/accuracy"])
    with pytest.raises(ValueError, match="grad_accum_steps"):
        make_train_step(model, [task], tx, optax.constant_schedule(1e-3), seed=0, momentum=momentum, accum_steps=2)
    # the logged FLOPs count the momentum model's pass on the drawn pairs once, not three times
    task.bundle = types.SimpleNamespace(example=lambda normalize=True: example)
    with_momentum = task.step_flops(model, {}, state["params"], momentum=momentum, momentum_state=state["momentum"])
    plain = combined_loss({"itm": {}, "itm_image": dict(fn="itm", logits_key="itm_image_logits")})
    student_only = Task("main", task.bundle, 8, plain).step_flops(model, {}, state["params"])
    assert student_only < with_momentum < 2 * student_only
