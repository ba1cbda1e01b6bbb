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


def test_coca_outputs_decoding_and_cached_generation():
    import jax

    from vlfm.models.decoding import GenerateConfig, generate

    model, batch = _tiny_coca(), _batch()
    params = model.init(jax.random.key(0), batch)["params"]
    out = jax.jit(model.apply)({"params": params}, batch)
    assert out["image_embed"].shape == out["text_embed"].shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(out["text_embed"], axis=-1), 1.0, rtol=1e-5)
    assert out["caption_logits"].shape == (3, 6, 13)
    np.testing.assert_array_equal(out["caption_labels"], TEXT[:, 1:])
    # The generation contract's teacher-forced pass gives the training logits at every scored position.
    context = model.apply({"params": params}, batch, method="generation_context")
    assert context.shape == (3, 4, 16)  # n_queries - 1 captioning tokens
    logits = model.apply({"params": params}, batch["text"][:, :-1], context, method="decode_logits")
    scored = TEXT[:, 1:] != 0
    np.testing.assert_allclose(np.asarray(logits)[scored], np.asarray(out["caption_logits"])[scored], atol=1e-5)
    # Loss: contrastive + caption cross-entropy from the model's outputs.
    from vlfm.losses import LOSSES

    ce, metrics = LOSSES.get("caption_ce")(out, batch)
    assert np.isfinite(float(ce)) and 0.0 <= float(metrics["token_accuracy"]) <= 1.0
    # Cached generation (text tower, decoder and cross-attention caches) equals re-running the prefix.
    config = GenerateConfig(max_length=7, bos_id=2, eos_id=3, pad_id=0)
    cached = generate(model, params, {"image": batch["image"]}, config)
    full = generate(model, params, {"image": batch["image"]}, config, use_cache=False)
    np.testing.assert_array_equal(cached["tokens"], full["tokens"])
    np.testing.assert_allclose(cached["scores"], full["scores"], rtol=1e-4)
    assert model.max_decode_length == 8


def test_coca_paper_pooler_separates_the_contrastive_query():
    import jax

    model, batch = _tiny_coca("parallel"), _batch()
    params = nn_unbox(model.init(jax.random.key(0), batch)["params"])
    assert params["attn_pool_contrastive"]["query"].shape == (1, 16)
    assert params["attn_pool"]["query"].shape == (5, 16)
    assert "ln_post" not in params and "ln_final" in params["image_tower"]
    out = model.apply({"params": params}, batch)
    context = model.apply({"params": params}, batch, method="generation_context")
    assert context.shape == (3, 5, 16)  # every captioning query is a decoder token
    # The contrastive query moves the image embedding only; the captioning pooler moves the captions only.
    query = params["attn_pool_contrastive"]["query"]
    moved_query = query + jnp.asarray(np.random.default_rng(2).normal(size=query.shape), query.dtype)
    moved = dict(params, attn_pool_contrastive=dict(params["attn_pool_contrastive"], query=moved_query))
    out2 = model.apply({"params": moved}, batch)
    assert np.abs(np.asarray(out2["image_embed"] - out["image_embed"])).max() > 1e-3
    np.testing.assert_allclose(out2["caption_logits"], out["caption_logits"], atol=1e-6)


def test_coca_config_errors_name_the_valid_choices():
    import jax

    with pytest.raises(ValueError, match="open_clip, parallel, cascade"):
        _tiny_coca("paper").init(jax.random.key(0), _batch())
    bad_image = dict(name="vit", image_size=16, patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32, pool="cls")
    with pytest.raises(ValueError, match="pool"):
        _tiny_coca(image=bad_image).init(jax.random.key(0), _batch())
    with pytest.raises(KeyError, match="valid keys"):
        _tiny_coca(decoder=dict(name="multimodal_decoder", vocab_size=13, max_len=8, depht=1))
    too_long = dict(_batch(), text=jnp.zeros((3, 9), jnp.int32))
    with pytest.raises(ValueError, match="max_len 8"):
        _tiny_coca().init(jax.random.key(0), too_long)
