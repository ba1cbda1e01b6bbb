"""UniCL's multi-positive contrast, momentum encoders with queues, and image-label-text data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vlfm.core.sharding import make_mesh
from vlfm.losses import LOSSES

multi_positive = LOSSES.get("multi_positive_contrastive")


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _outputs(zi, zt, scale=10.0, **extra):
    return dict(image_embed=zi, text_embed=zt, logit_scale=jnp.float32(scale), **extra)


def _reference(zi, zt, labels, scale, qi=None, qt=None, qlabels=None, alpha=0.0, mzi=None, mzt=None, mscale=None):
    """UniCL's formula written out row by row: -1/|P(i)| sum_{k in P(i)} log softmax_k, both directions."""
    qi = np.zeros((0, zi.shape[1])) if qi is None else qi
    qt = np.zeros((0, zi.shape[1])) if qt is None else qt
    qlabels = np.zeros((0,), int) if qlabels is None else qlabels
    all_labels = np.concatenate([labels, qlabels])
    total = 0.0
    for rows, cols, mrows, mcols_batch, mcols_queue in ((zi, np.concatenate([zt, qt]), mzi, mzt, qt),
                                                        (zt, np.concatenate([zi, qi]), mzt, mzi, qi)):
        per_row = []
        for i in range(len(rows)):
            logits = scale * cols @ rows[i]
            logp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
            pos = [k for k in range(len(cols)) if k == i or (labels[i] >= 0 and all_labels[k] == labels[i])]
            target = np.zeros(len(cols))
            target[pos] = 1.0 / len(pos)
            if alpha:
                t = mscale * np.concatenate([mcols_batch, mcols_queue]) @ mrows[i]
                t = np.exp(t - t.max())
                target = (1 - alpha) * target + alpha * t / t.sum()
            per_row.append(-(target * logp).sum())
        total += np.mean(per_row)
    return total / 2


def test_unique_labels_equal_softmax_contrastive_exactly():
    rng = np.random.default_rng(0)
    zi, zt = _unit(rng, 12, 8), _unit(rng, 12, 8)
    clip = LOSSES.get("softmax_contrastive")

    def both(a, b, s):
        out = _outputs(a, b, s)
        return (clip(out, {})[0], multi_positive(out, {"label": jnp.arange(12) + 5}, label_key="label")[0],
                multi_positive(out, {})[0])

    ref, labelled, unlabelled = jax.jit(both)(zi, zt, jnp.float32(7.0))
    assert float(labelled) == float(ref) and float(unlabelled) == float(ref)
    g_ref = jax.grad(lambda a: clip(_outputs(a, zt), {})[0])(zi)
    g = jax.grad(lambda a: multi_positive(_outputs(a, zt), {"label": jnp.arange(12)}, label_key="label")[0])(zi)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-7)


def test_multi_positive_hand_computed():
    zi = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)
    zt = np.array([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]], np.float32)
    labels = np.array([4, 4, -1])  # rows 0 and 1 share a class; row 2 is a pair (its own label)
    s = 2.0
    L = s * zi @ zt.T
    lsm_r = L - np.log(np.exp(L).sum(1, keepdims=True))   # image -> text, by row
    lsm_c = L - np.log(np.exp(L).sum(0, keepdims=True))   # text -> image, by column
    i2t = -np.mean([(lsm_r[0, 0] + lsm_r[0, 1]) / 2, (lsm_r[1, 0] + lsm_r[1, 1]) / 2, lsm_r[2, 2]])
    t2i = -np.mean([(lsm_c[0, 0] + lsm_c[1, 0]) / 2, (lsm_c[0, 1] + lsm_c[1, 1]) / 2, lsm_c[2, 2]])
    loss, metrics = multi_positive(_outputs(zi, zt, s), {"label": labels}, label_key="label")
    np.testing.assert_allclose(loss, (i2t + t2i) / 2, rtol=1e-6)
    np.testing.assert_allclose(loss, _reference(zi, zt, labels, s), rtol=1e-6)
    assert float(metrics["positives_per_row"]) == pytest.approx(5 / 3)


def test_queue_and_distillation_match_the_formula_and_the_sharded_loss():
    rng = np.random.default_rng(1)
    n, q, d = 16, 8, 8
    zi, zt, mzi, mzt, qi, qt = (_unit(rng, k, d) for k in (n, n, n, n, q, q))
    labels = rng.integers(-1, 3, n)
    qlabels = rng.integers(-1, 3, q)
    valid = np.arange(q) < 6  # two slots never filled: they must not count
    queue = {"image_embed": qi, "text_embed": qt, "label": qlabels, "valid": valid}
    momentum = _outputs(mzi, mzt, 5.0)
    kwargs = dict(label_key="label", queue=True, alpha=0.4)

    def loss(a, b):
        return multi_positive(_outputs(a, b, 10.0, momentum=momentum, queue=queue), {"label": labels}, **kwargs)[0]

    expected = _reference(zi, zt, labels, 10.0, qi[valid], qt[valid], qlabels[valid], 0.4, mzi, mzt, 5.0)
    ref, ref_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(zi, zt)
    np.testing.assert_allclose(ref, expected, rtol=1e-5)
    mesh = make_mesh((4, 2, 1))
    with jax.set_mesh(mesh):
        sh = NamedSharding(mesh, P(("data", "fsdp"), None))
        got, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(jax.device_put(zi, sh), jax.device_put(zt, sh))
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
