"""Word-patch alignment: IPOT against a NumPy transcription of ViLT's algorithm, the plan's properties,
and the loss (no gradient through the plan, pulls matched pairs together)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.losses import wpa


def numpy_ipot(cost, x_valid, y_valid, beta=0.5, iterations=50, k=1):
    """ViLT's ipot(), example by example and restricted to the valid rows/columns (no padding tricks)."""
    plans = []
    for c, xv, yv in zip(cost, x_valid, y_valid):
        c = c[np.ix_(xv, yv)].astype(np.float64)
        m, n = c.shape
        sigma = np.full((m, 1), 1.0 / m)
        t = np.ones((n, m))
        a = np.exp(-c.T / beta)
        for _ in range(iterations):
            q = a * t
            for _ in range(k):
                delta = 1.0 / (n * (q @ sigma))  # [n, 1]
                sigma = 1.0 / (m * (delta.T @ q)).T  # [m, 1]
            t = delta * q * sigma.T
        full = np.zeros((len(yv), len(xv)))
        full[np.ix_(yv, xv)] = t
        plans.append(full)
    return np.stack(plans)


def _case(seed=0):
    r = np.random.default_rng(seed)
    text = r.normal(size=(3, 6, 8)).astype(np.float32)
    image = r.normal(size=(3, 5, 8)).astype(np.float32)
    text_valid = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0]], bool)
    image_valid = np.array([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1], [1, 1, 0, 1, 1]], bool)
    return text, image, text_valid, image_valid


def test_ipot_matches_numpy_reference():
    text, image, tv, iv = _case()
    cost = np.asarray(wpa.cosine_cost(jnp.asarray(text), jnp.asarray(image)))
    # The cost is 1 - cosine similarity.
    tn = text / np.linalg.norm(text, axis=-1, keepdims=True)
    im = image / np.linalg.norm(image, axis=-1, keepdims=True)
    np.testing.assert_allclose(cost, 1 - np.einsum("bmd,bnd->bmn", tn, im), rtol=1e-5, atol=1e-6)
    plan = np.asarray(wpa.ipot(jnp.asarray(cost), jnp.asarray(tv), jnp.asarray(iv)))
    np.testing.assert_allclose(plan, numpy_ipot(cost, tv, iv), rtol=1e-4, atol=1e-6)


def test_plan_has_uniform_marginals_and_no_mass_on_padding():
    text, image, tv, iv = _case(1)
    cost = wpa.cosine_cost(jnp.asarray(text), jnp.asarray(image))
    plan = np.asarray(wpa.ipot(cost, jnp.asarray(tv), jnp.asarray(iv), iterations=200))
    for b in range(3):
        assert np.all(plan[b][~iv[b]] == 0) and np.all(plan[b][:, ~tv[b]] == 0)
        np.testing.assert_allclose(plan[b].sum(0)[tv[b]], 1.0 / tv[b].sum(), rtol=1e-3)  # text marginal
        np.testing.assert_allclose(plan[b].sum(1)[iv[b]], 1.0 / iv[b].sum(), rtol=1e-3)  # image marginal


def test_distance_on_a_hand_computed_case():
    """Two words, two patches, each word identical to one patch: the plan puts 1/2 on each match and
    the distance is ~0; swapping which patch is which does not change that (OT finds the matching)."""
    e = np.eye(4, dtype=np.float32)
    text = e[None, :2] * 5
    image = e[None, [1, 0]] * 3
    valid = np.ones((1, 2), bool)
    d = float(wpa.wpa_distance(jnp.asarray(text), jnp.asarray(image), jnp.asarray(valid), jnp.asarray(valid),
                               iterations=200)[0])
    plan = np.asarray(wpa.ipot(wpa.cosine_cost(jnp.asarray(text), jnp.asarray(image)), valid, valid,
                               iterations=200))[0]
    np.testing.assert_allclose(plan, [[0, 0.5], [0.5, 0]], atol=0.02)  # plan[patch, word]
    # Orthogonal mismatches cost 1 each: the reference beta smooths the plan a little, so d is small, not 0.
    assert d < 0.05
    # Anti-aligned patches: the matches cost 2, the cross pairs 1, and OT moves the mass to the cheaper pairs.
    far = float(wpa.wpa_distance(jnp.asarray(text), jnp.asarray(-image), jnp.asarray(valid), jnp.asarray(valid),
                                 iterations=200)[0])
    assert far == pytest.approx(1.0, abs=0.05)


def test_alignment_masks_drop_cls_end_token_and_image_cls():
    text_mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    text_valid, image_valid = wpa.alignment_masks(text_mask, jnp.ones((2, 4), bool))
    assert text_valid.tolist() == [[False, True, True, False, False], [False, True, True, True, False]]
    assert image_valid.tolist() == [[False, True, True, True]] * 2


def test_loss_sign_and_no_gradient_through_the_plan():
    text, image, tv, iv = _case(2)
    tv[:, 0] = True  # the masks below drop position 0 and the last real token themselves
    outputs = dict(itm_text_tokens=jnp.asarray(text), itm_image_tokens=jnp.asarray(image),
                   itm_text_mask=jnp.asarray(tv), itm_image_mask=jnp.ones((3, 5), bool),
                   itm_labels=jnp.array([1, 0, 1]))
    loss, metrics = wpa.wpa_loss(outputs, {})
    tvalid, ivalid = wpa.alignment_masks(outputs["itm_text_mask"], outputs["itm_image_mask"])
    d = np.asarray(wpa.wpa_distance(outputs["itm_text_tokens"], outputs["itm_image_tokens"], tvalid, ivalid))
    np.testing.assert_allclose(float(loss), (d[0] + d[2] - d[1]) / 3, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["neg_distance"]), d[1], rtol=1e-5)

    # The gradient is that of <C, T> with T held fixed.
    def with_plan_fixed(t):
        cost = wpa.cosine_cost(t, outputs["itm_image_tokens"])
        cost = jnp.where(tvalid[:, :, None] & ivalid[:, None, :], cost, 0.0)
        plan = jax.lax.stop_gradient(wpa.ipot(cost, tvalid, ivalid))
        return jnp.sum(jnp.einsum("bmn,bnm->b", cost, plan) * jnp.array([1.0, -1.0, 1.0])) / 3

    g_loss = jax.grad(lambda t: wpa.wpa_loss(dict(outputs, itm_text_tokens=t), {})[0])(outputs["itm_text_tokens"])
    g_ref = jax.grad(with_plan_fixed)(outputs["itm_text_tokens"])
    np.testing.assert_allclose(g_loss, g_ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("iterations", [1, 5])
def test_ipot_iteration_count_is_respected(iterations):
    text, image, tv, iv = _case(3)
    cost = np.asarray(wpa.cosine_cost(jnp.asarray(text), jnp.asarray(image)))
    plan = np.asarray(wpa.ipot(jnp.asarray(cost), tv, iv, iterations=iterations))
    np.testing.assert_allclose(plan, numpy_ipot(cost, tv, iv, iterations=iterations), rtol=1e-4, atol=1e-6)
