"""CoCa pieces: caption cross-entropy ignores padding."""

import jax.numpy as jnp
import numpy as np
import optax

from vlfm.losses import LOSSES


def test_caption_ce_ignores_padding():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
    labels = jnp.asarray([[3, 4, 0, 0, 0], [1, 2, 5, 6, 0]], jnp.int32)
    loss, metrics = LOSSES.get("caption_ce")({"caption_logits": logits, "caption_labels": labels}, {})
    ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    expected = (ce[0, :2].sum() + ce[1, :4].sum()) / 6
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    # changing the logits at pad positions leaves the loss unchanged
    logits2 = logits.at[0, 3].set(100.0)
    loss2, _ = LOSSES.get("caption_ce")({"caption_logits": logits2, "caption_labels": labels}, {})
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)


def test_attentional_pooler_matches_reference_attention():
    import jax

    from vlfm.models.pooling import AttentionalPooler

    pool = AttentionalPooler(d_model=8, num_heads=2, n_queries=3)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 8)), jnp.float32)
    params = pool.init(jax.random.PRNGKey(0), x)
    out = pool.apply(params, x)
    assert out.shape == (2, 3, 8)
    p = jax.tree_util.tree_map(np.asarray, nn_unbox(params))["params"]

    def ln(t, s, b):
        mu = t.mean(-1, keepdims=True)
        var = ((t - mu) ** 2).mean(-1, keepdims=True)
        return (t - mu) / np.sqrt(var + 1e-5) * s + b

    k_in = ln(np.asarray(x), p["ln_k"]["scale"], p["ln_k"]["bias"])
    q_in = ln(p["query"], p["ln_q"]["scale"], p["ln_q"]["bias"])
    a = p["attn"]
    q = np.einsum("qd,dhk->qhk", q_in, a["query"]["kernel"]) + a["query"]["bias"]
    k = np.einsum("bnd,dhk->bnhk", k_in, a["key"]["kernel"]) + a["key"]["bias"]
    v = np.einsum("bnd,dhk->bnhk", k_in, a["value"]["kernel"]) + a["value"]["bias"]
    s = np.einsum("qhk,bnhk->bhqn", q, k) / np.sqrt(4)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("bhqn,bnhk->bqhk", w, v)
    ref = np.einsum("bqhk,hkd->bqd", o, a["out"]["kernel"]) + a["out"]["bias"]
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5)


def nn_unbox(tree):
    import flax.linen as nn

    return nn.meta.unbox(tree)
