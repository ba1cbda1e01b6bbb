"""DiDE: the cross-modal attention distillation loss against a hand-written NumPy reference, the layer
stack's chosen-layer attention under scan (carried, not stacked over every layer), the interaction
head, and the student model end to end with a fusion teacher's sown attention."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.losses import LOSSES
from vlfm.models import build_model, layers
from vlfm.models.heads import InteractionHead


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_cmad(qi, ki, qt, kt, teacher_logits, text_mask):
    """Loops over examples, heads and query tokens, as the spec writes the loss."""
    b, li, h, d = qi.shape
    lt = qt.shape[1]
    i2t, t2i, n_i2t, n_t2i = 0.0, 0.0, 0, 0
    for e in range(b):
        valid = np.flatnonzero(text_mask[e])
        for head in range(h):
            for i in range(li):  # image query over the real text tokens
                s = np_softmax(np.array([qi[e, i, head] @ kt[e, j, head] for j in valid]) / np.sqrt(d))
                t = np_softmax(teacher_logits[e, head, lt + i, valid])
                i2t += np.sum(t * np.log(t / s))
                n_i2t += 1
            for j in valid:  # real text query over the image tokens
                s = np_softmax(np.array([qt[e, j, head] @ ki[e, i, head] for i in range(li)]) / np.sqrt(d))
                t = np_softmax(teacher_logits[e, head, j, lt:])
                t2i += np.sum(t * np.log(t / s))
                n_t2i += 1
    return i2t / n_i2t + t2i / n_t2i


def _outputs(qi, ki, qt, kt, teacher):
    sown = lambda q, k: {"encoder": {"queries": (jnp.asarray(q)[None],), "keys": (jnp.asarray(k)[None],)}}  # noqa: E731
    return {"attention": {"image_tower": sown(qi, ki), "text_tower": sown(qt, kt)},
            "teacher/t": {"attention": {"encoder": teacher}}}


def test_cross_attention_loss_matches_numpy():
    rng = np.random.default_rng(0)
    b, lt, li, h, d = 2, 3, 4, 2, 5
    qi, ki = rng.normal(size=(b, li, h, d)), rng.normal(size=(b, li, h, d))
    qt, kt = rng.normal(size=(b, lt, h, d)), rng.normal(size=(b, lt, h, d))
    text_mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
    logits = 2.0 * rng.normal(size=(b, h, lt + li, lt + li))
    keys = np.concatenate([text_mask, np.ones((b, li), bool)], 1)[:, None, None, :]
    logits = np.where(keys, logits, np.finfo(np.float32).min)  # the model's masked scores
    probs = np_softmax(np.where(keys, logits, -np.inf))
    want = np_cmad(qi, ki, qt, kt, logits, text_mask)
    batch = {"text": np.zeros((b, lt), np.int32), "text_mask": text_mask}
    loss = LOSSES.get("kd_cross_attention")
    got, metrics = loss(_outputs(qi, ki, qt, kt, {"logits": (jnp.asarray(logits)[None],)}), batch, teacher="t")
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl_i2t"] + metrics["kl_t2i"], want, rtol=1e-5)
    # Re-normalising the cut probabilities gives the same loss as the softmax of the cut scores.
    via_probs, _ = loss(_outputs(qi, ki, qt, kt, {"probs": (jnp.asarray(probs)[None],)}), batch, teacher="t",
                        teacher_part="probs")
    np.testing.assert_allclose(via_probs, want, rtol=1e-5)
    # The teacher's own cut attention as the student's: zero loss, and gradients are finite with padding.
    grads = jax.grad(lambda q: loss(_outputs(q, ki, qt, kt, {"logits": (jnp.asarray(logits)[None],)}), batch,
                                    teacher="t")[0])(jnp.asarray(qi, jnp.float32))
    assert np.isfinite(np.asarray(grads)).all() and np.abs(np.asarray(grads)).max() > 0


def test_kd_logits_soft_labels_match_numpy():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    tau = 2.0
    pt, ps = np_softmax(t / tau), np_softmax(s / tau)
    want = tau ** 2 * np.mean(np.sum(pt * np.log(pt / ps), -1))
    got, _ = LOSSES.get("kd_logits")({"logits": jnp.asarray(s), "teacher/t": {"logits": jnp.asarray(t)}}, {},
                                     teacher="t", temperature=tau)
    np.testing.assert_allclose(got, want, rtol=1e-5)


BLOCK = dict(num_heads=2, mlp_dim=16, attention_outputs=("probs", "queries"))


def test_scan_carries_only_the_chosen_layer():
    """Under scan, the chosen layer's parts equal the unrolled stack's, and the scan outputs no
    ``[depth, ...]`` stack of attention maps (only the one buffer row rides in the carry)."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    lengths = jnp.array([5, 3])
    depth = 3
    scanned = layers.Encoder(depth, BLOCK, scan=True, attention_layers=(1,))
    unrolled = layers.Encoder(depth, BLOCK, scan=False, attention_layers=(1,))

    def run(p):
        return scanned.apply({"params": p}, x, kv_lengths=lengths, mutable=["attention"])

    @jax.jit
    def both(key):  # one compilation
        params = scanned.init(key, x, kv_lengths=lengths)["params"]
        per_layer = {f"layer_{i}": jax.tree.map(lambda a: a[i], params["layers"]) for i in range(depth)}
        return params, run(params), unrolled.apply({"params": per_layer}, x, kv_lengths=lengths, mutable=["attention"])

    params, (out, state), (out_u, state_u) = both(jax.random.key(1))
    np.testing.assert_allclose(out, out_u, rtol=1e-5, atol=1e-6)
    for part in ("probs", "queries"):
        (got,), (want,) = state["attention"][part], state_u["attention"][part]
        assert got.shape[0] == 1
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    scans = [e for e in jax.make_jaxpr(run)(params).jaxpr.eqns if e.primitive.name == "scan"]
    assert scans
    for eqn in scans:
        for var in eqn.outvars:
            assert var.aval.shape[:1] != (depth,) or var.aval.ndim < 4, f"scan stacks per-layer maps: {var.aval}"


def test_interaction_head_features():
    u, v = jnp.array([[1.0, -2.0]]), jnp.array([[3.0, 0.5]])
    head = InteractionHead(4, 3)
    params = head.init(jax.random.key(0), [(u, v)])["params"]
    fc1 = params["classifier"]["fc1"]
    # Its first layer sees [u; v; |u - v|; u * v].
    feats = np.array([[1.0, -2.0, 3.0, 0.5, 2.0, 2.5, 3.0, -1.0]])
    h = feats @ np.asarray(nn.meta.unbox(fc1["kernel"])) + np.asarray(nn.meta.unbox(fc1["bias"]))
    hidden = jax.lax.stop_gradient(head.apply({"params": params}, [(u, v)],
                                              capture_intermediates=lambda m, _: m.name == "fc1")[1])
    np.testing.assert_allclose(hidden["intermediates"]["classifier"]["fc1"]["__call__"][0], h, rtol=1e-5)
    with pytest.raises(ValueError, match="one width"):
        head.apply({"params": params}, [(u, jnp.ones((1, 3)))])


TEACHER = dict(name="vilt", vocab_size=32, max_text_len=6, image_size=16, patch_size=8, width=16, depth=1,
               num_heads=2, mlp_dim=32, num_classes=3, attention_layers=(0,), attention_outputs=("logits",),
               scan=False)
TOWER = dict(width=16, depth=1, num_heads=2, mlp_dim=32, scan=False)
STUDENT = dict(name="dide", num_classes=3, embed_dim=8,
               image=dict(name="vit", image_size=16, patch_size=8, **TOWER),
               text=dict(name="text_transformer", vocab_size=32, max_len=6, causal=False, pool="first", **TOWER))


def test_student_distils_from_a_vilt_teacher():
    """End to end: the teacher's sown scores and the student's sown queries/keys feed the loss; the
    loss's gradient reaches the student's last-layer query and key projections."""
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32),
             "text": jnp.asarray(rng.integers(1, 32, (2, 6)), jnp.int32),
             "text_mask": jnp.asarray([[1] * 6, [1] * 4 + [0] * 2], bool), "label": jnp.array([0, 2])}
    teacher, student = build_model(TEACHER), build_model(STUDENT)

    def loss(p, tp):
        t_out, t_state = teacher.apply({"params": tp}, batch, mutable=["attention"])
        s_out, s_state = student.apply({"params": p}, batch, mutable=["attention"])
        outputs = dict(s_out, attention=s_state["attention"], **{"teacher/vilt": dict(t_out, **t_state)})
        cmad, _ = LOSSES.get("kd_cross_attention")(outputs, batch, teacher="vilt")
        kd, _ = LOSSES.get("kd_logits")(outputs, batch, teacher="vilt")
        return cmad + kd, s_out

    @jax.jit
    def run(key):  # one compilation: both inits, the forward passes and the gradient
        tp = teacher.init(key, batch)["params"]
        sp = student.init(key, batch)["params"]
        return jax.value_and_grad(loss, has_aux=True)(sp, tp)

    (value, s_out), grads = run(jax.random.key(0))
    assert s_out["logits"].shape == (2, 3) and s_out["image_embed"].shape == (2, 8)
    assert np.isfinite(float(value)) and float(value) > 0
    for tower in ("image_tower", "text_tower"):
        for proj in ("query", "key"):
            g = grads[tower]["encoder"]["layer_0"]["attn"][proj]["kernel"]
            assert np.abs(np.asarray(nn.meta.unbox(g))).max() > 0, (tower, proj)
