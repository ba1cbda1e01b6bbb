"""CoCa: caption cross-entropy ignores padding, the attentional pooler, the model (open_clip's and the paper's
poolers, the generation contract, cached generation), B/32's parameter count, config errors."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

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


# ----------------------------------------------------------------------------------------------------
# The CoCa model


def _tiny_coca(pooler: str = "open_clip", **overrides):
    from vlfm.models import build_model

    cfg = dict(name="coca", embed_dim=16, pooler=pooler, n_queries=5, pooler_heads=2,
               image=dict(name="vit", image_size=16, patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32,
                          pre_norm=True, patch_bias=False, ln_eps=1e-5),
               text=dict(name="coca_text", vocab_size=13, max_len=8, width=16, depth=1, num_heads=2, mlp_dim=32),
               decoder=dict(name="multimodal_decoder", vocab_size=13, max_len=8, depth=1, num_heads=2, mlp_dim=32))
    cfg.update(overrides)
    return build_model(cfg)


TEXT = np.asarray([[2, 5, 6, 7, 3, 0, 0], [2, 8, 3, 0, 0, 0, 0], [2, 9, 10, 11, 12, 6, 3]], np.int32)


def _batch():
    images = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype(np.float32)
    return {"image": jnp.asarray(images), "text": jnp.asarray(TEXT)}


def test_coca_b32_has_open_clips_parameter_count():
    import jax

    from vlfm.models import build_model
    from vlfm.train.config import load_config

    cfg = load_config("configs/coca_b32.py")
    model = build_model(cfg.model)
    batch = {"image": jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32),
             "text": jax.ShapeDtypeStruct((1, 76), jnp.int32)}
    shapes = jax.eval_shape(lambda b: model.init(jax.random.key(0), b), batch)["params"]
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == 253_560_065  # open_clip coca_ViT-B-32


def test_coca_outputs_and_the_generation_contract():
    """Generated tokens are checked against open_clip's generate in tests/test_coca_parity.py (and the cached
    path runs in the captioning evaluator of tests/test_coca_learning.py)."""
    import jax

    from vlfm.losses import LOSSES

    model, batch = _tiny_coca(), _batch()

    @jax.jit  # one compilation for everything
    def run(batch):
        variables = model.init(jax.random.key(0), batch)
        context = model.apply(variables, batch, method="generation_context")
        logits = model.apply(variables, batch["text"][:, :-1], context, method="decode_logits")
        return model.apply(variables, batch), context, logits

    out, context, logits = run(batch)
    assert out["image_embed"].shape == out["text_embed"].shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(out["text_embed"], axis=-1), 1.0, rtol=1e-5)
    assert out["caption_logits"].shape == (3, 6, 13)
    np.testing.assert_array_equal(out["caption_labels"], TEXT[:, 1:])
    # The contract's teacher-forced pass gives the training logits at every scored position.
    assert context.shape == (3, 4, 16)  # n_queries - 1 captioning tokens
    scored = TEXT[:, 1:] != 0
    np.testing.assert_allclose(np.asarray(logits)[scored], np.asarray(out["caption_logits"])[scored], atol=1e-5)
    assert model.max_decode_length == 8
    ce, metrics = LOSSES.get("caption_ce")(out, batch)
    assert np.isfinite(float(ce)) and 0.0 <= float(metrics["token_accuracy"]) <= 1.0


def test_coca_paper_poolers_layout():
    """Their numbers are checked against open_clip's ``attentional_pool="parallel"`` in the parity tests."""
    import jax

    model, batch = _tiny_coca("parallel"), _batch()
    params = nn_unbox(jax.eval_shape(lambda b: model.init(jax.random.key(0), b), batch)["params"])
    assert params["attn_pool_contrastive"]["query"].shape == (1, 16)
    assert params["attn_pool"]["query"].shape == (5, 16)
    assert "ln_post" not in params and "ln_final" in params["image_tower"]
    context = jax.eval_shape(lambda p, b: model.apply({"params": p}, b, method="generation_context"), params, batch)
    assert context.shape == (3, 5, 16)  # every captioning query is a decoder token


def test_coca_config_errors_name_the_valid_choices():
    import jax

    def init(model, batch):  # shapes only: the errors come before any computation
        return jax.eval_shape(lambda b: model.init(jax.random.key(0), b), batch)

    with pytest.raises(ValueError, match="open_clip, parallel, cascade"):
        init(_tiny_coca("paper"), _batch())
    bad_image = dict(name="vit", image_size=16, patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32, pool="cls")
    with pytest.raises(ValueError, match="pool"):
        init(_tiny_coca(image=bad_image), _batch())
    with pytest.raises(KeyError, match="valid keys"):
        _tiny_coca(decoder=dict(name="multimodal_decoder", vocab_size=13, max_len=8, depht=1))
    with pytest.raises(ValueError, match="max_len 8"):
        init(_tiny_coca(), dict(_batch(), text=jnp.zeros((3, 9), jnp.int32)))
