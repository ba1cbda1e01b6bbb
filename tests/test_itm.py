"""ITM: random and hard negative sampling (single device and sharded over the data-parallel mesh), the
pairs the fusion models build from them, and the ITM loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlfm.losses import itm
from vlfm.models import build_model
from vlfm.core.sharding import make_mesh


def _streams(seed: int) -> dict:
    """Train-mode keys: dropout, and sampling (the ITM negatives)."""
    return {"dropout": jax.random.key(seed), "sampling": jax.random.key(seed)}


def test_random_negatives_replace_half_of_the_images():
    for seed in range(5):
        image_idx, labels = itm.random_negatives(jax.random.key(seed), 10)
        image_idx, labels = np.asarray(image_idx), np.asarray(labels)
        assert labels.sum() == 5  # B // 2 positives, the rest negatives, as ViLT's compute_itm_wpa
        assert np.all((image_idx == np.arange(10)) == (labels == 1))  # a negative never keeps its own image
    a = itm.random_negatives(jax.random.key(3), 10)
    b = itm.random_negatives(jax.random.key(3), 10)
    np.testing.assert_array_equal(a[0], b[0])


def _embeddings(b=8, d=16, seed=0):
    r = np.random.default_rng(seed)
    z = r.normal(size=(2, b, d)).astype(np.float32)
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    return jnp.asarray(z[0]), jnp.asarray(z[1])


def _argmax_off_diagonal(sim):
    sim = np.where(np.eye(len(sim), dtype=bool), -np.inf, sim)
    return sim.argmax(axis=1)


def test_hard_negatives_follow_the_similarities():
    zi, zt = _embeddings()
    sim = np.asarray(zi @ zt.T)
    # A very low temperature makes the draw the most similar non-matching candidate.
    neg_image, neg_text = itm.hard_negatives(jax.random.key(0), zi, zt, scale=1e4)
    np.testing.assert_array_equal(neg_image, _argmax_off_diagonal(sim.T))  # each text's hardest image
    np.testing.assert_array_equal(neg_text, _argmax_off_diagonal(sim))  # each image's hardest text


def test_hard_negative_frequencies_match_softmax_without_the_positive():
    zi, zt = _embeddings(b=4, d=3, seed=1)
    scale = 3.0
    draws = jax.vmap(lambda k: itm.hard_negatives(k, zi, zt, scale)[1])(jax.random.split(jax.random.key(0), 4000))
    freq = np.stack([np.bincount(np.asarray(draws)[:, i], minlength=4) for i in range(4)]) / 4000
    logits = scale * np.asarray(zi @ zt.T)
    logits[np.eye(4, dtype=bool)] = -np.inf
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(freq, expected, atol=0.03)
    assert np.all(np.diag(freq) == 0)


def test_hard_negatives_gathered_across_data_parallel_shards():
    """Under an 8-way data-parallel mesh each shard draws from the global batch: with a peaked
    distribution the draws equal the single-device ones, and they come from other shards."""
    zi, zt = _embeddings(b=16, d=8, seed=2)
    single = itm.hard_negatives(jax.random.key(0), zi, zt, scale=1e4)
    mesh = make_mesh((-1, 1, 1))
    assert mesh.shape["data"] == 8
    with jax.set_mesh(mesh):
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
        sharded = jax.jit(lambda a, b: itm.hard_negatives(jax.random.key(0), a, b, 1e4))(
            jax.device_put(zi, sharding), jax.device_put(zt, sharding))
    for got, want in zip(sharded, single):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    shard_of = np.arange(16) // 2
    assert np.any(shard_of[np.asarray(sharded[1])] != shard_of)  # candidates outside the own shard


def test_hard_negative_pairs_layout():
    text_idx, image_idx, labels = itm.hard_negative_pairs(jnp.array([2, 0, 1]), jnp.array([1, 2, 0]))
    assert text_idx.tolist() == [0, 1, 2, 0, 1, 2, 1, 2, 0]
    assert image_idx.tolist() == [0, 1, 2, 2, 0, 1, 0, 1, 2]
    assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]


def test_itm_loss_and_class_weights():
    logits = jnp.array([[2.0, -1.0], [0.5, 0.1], [-1.0, 3.0]])
    labels = jnp.array([0, 1, 1])
    loss, metrics = itm.itm_loss({"itm_logits": logits, "itm_labels": labels}, {})
    per = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    assert float(loss) == pytest.approx(float(per.mean()))
    assert float(metrics["accuracy"]) == pytest.approx(2 / 3)
    assert float(metrics["pos_accuracy"]) == pytest.approx(0.5) and float(metrics["neg_accuracy"]) == 1.0
    weighted, _ = itm.itm_loss({"itm_logits": logits, "itm_labels": labels}, {}, class_weights=(1.0, 2.0))
    w = np.array([1.0, 2.0, 2.0])
    assert float(weighted) == pytest.approx(float((w * np.asarray(per)).sum() / w.sum()), rel=1e-6)


TINY_TOWERS = dict(
    image=dict(name="vit", image_size=16, patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64, pre_norm=True,
               patch_bias=False),
    text=dict(name="bert", vocab_size=40, max_len=12, width=32, depth=2, num_heads=2, mlp_dim=64, dropout_rate=0.0,
              attn_dropout_rate=0.0),
    width=32, depth=2, num_heads=2, mlp_dim=64, dropout_rate=0.0, attn_dropout_rate=0.0)


def _pairs_batch(b=4):
    r = np.random.default_rng(0)
    return {"image": jnp.asarray(r.normal(size=(b, 16, 16, 3)), jnp.float32),
            "text": jnp.asarray(r.integers(5, 40, size=(b, 6)), jnp.int32),
            "text_mask": jnp.asarray(np.array([[1] * 6, [1] * 4 + [0] * 2] * (b // 2)), jnp.int32)}


@pytest.mark.parametrize("name", ["bridgetower", "meter"])
def test_model_builds_hard_negative_pairs_from_injected_indices(name):
    """The 3B ITM pairs score exactly as the same (image, text) pairs scored one by one."""
    cfg = dict(name=name, itm="hard", contrastive_dim=8, **TINY_TOWERS)
    model = build_model(cfg)
    batch = _pairs_batch()
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    params = model.init(rngs, batch)["params"]
    neg_image, neg_text = jnp.array([1, 2, 3, 0]), jnp.array([3, 0, 1, 2])
    out = model.apply({"params": params}, dict(batch, itm_neg_image=neg_image, itm_neg_text=neg_text), train=True,
                      rngs={"dropout": jax.random.key(2)})
    assert out["itm_labels"].tolist() == [1] * 4 + [0] * 8
    text_idx, image_idx, _ = itm.hard_negative_pairs(neg_image, neg_text)
    pairs = {"image": batch["image"][image_idx], "text": batch["text"][text_idx],
             "text_mask": batch["text_mask"][text_idx]}
    score = model.apply({"params": params}, pairs, method=lambda m, b: m.itm_score(b))
    logits = out["itm_logits"]
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], score, rtol=1e-5, atol=1e-5)


def test_model_samples_hard_negatives_from_its_own_contrastive_embeddings():
    cfg = dict(name="bridgetower", itm="hard", contrastive_dim=8, **TINY_TOWERS)
    model = build_model(cfg)
    batch = _pairs_batch()
    params = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch)["params"]
    out = model.apply({"params": params}, batch, train=True, rngs=_streams(5))
    want_image, want_text = itm.hard_negatives(jax.random.key(5), out["image_embed"], out["text_embed"],
                                               out["logit_scale"])
    assert out["itm_logits"].shape == (12, 2)
    # The sampling stream draws the negatives, so the draw is reproducible given that key.
    again = model.apply({"params": params}, batch, train=True, rngs=_streams(5))
    np.testing.assert_array_equal(out["itm_logits"], again["itm_logits"])
    assert want_image.shape == want_text.shape == (4,)


def test_random_itm_pairs_in_a_vilt():
    cfg = dict(name="vilt", vocab_size=40, max_text_len=8, image_size=16, patch_size=8, width=32, depth=1,
               num_heads=2, mlp_dim=64, itm="random")
    model = build_model(cfg)
    batch = _pairs_batch()
    params = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch)["params"]
    index = jnp.array([0, 3, 2, 1])
    out = model.apply({"params": params}, dict(batch, itm_image_index=index), train=True,
                      rngs={"dropout": jax.random.key(2)})
    assert out["itm_labels"].tolist() == [1, 0, 1, 0]
    pairs = dict(batch, image=batch["image"][index])
    score = model.apply({"params": params}, pairs, method=lambda m, b: m.itm_score(b))
    np.testing.assert_allclose(out["itm_logits"][:, 1] - out["itm_logits"][:, 0], score, rtol=1e-5, atol=1e-5)
    sampled = model.apply({"params": params}, batch, train=True, rngs=_streams(2))
    assert int(sampled["itm_labels"].sum()) == 2


def test_hard_itm_needs_a_contrastive_head():
    cfg = dict(name="meter", itm="hard", **TINY_TOWERS)
    model = build_model(cfg)
    batch = _pairs_batch()
    params = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch)["params"]
    with pytest.raises(ValueError, match="contrastive_dim"):
        model.apply({"params": params}, batch, train=True, rngs={"dropout": jax.random.key(2)})


def test_hard_negative_itm_runs_data_parallel():
    """The whole hard-negative ITM forward pass under an 8-way data-parallel mesh (as the trainer runs
    it): with injected indices it equals the single-device pass; sampling inside shard_map works."""
    import flax.linen as nn

    from vlfm.core.sharding import DEFAULT_RULES, batch_sharding

    cfg = dict(name="bridgetower", itm="hard", contrastive_dim=8, **TINY_TOWERS)
    model = build_model(cfg)
    batch = _pairs_batch(b=8)
    params = nn.meta.unbox(model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch)["params"])
    injected = dict(batch, itm_neg_image=jnp.roll(jnp.arange(8), 3), itm_neg_text=jnp.roll(jnp.arange(8), 5))
    apply = jax.jit(lambda p, b: model.apply({"params": p}, b, train=True, rngs=_streams(2)))
    single = apply(params, injected)
    mesh = make_mesh((-1, 1, 1))
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        sharded_batch = {k: jax.device_put(v, batch_sharding(mesh, v.ndim)) for k, v in injected.items()}
        sharded = apply(params, sharded_batch)
        sampled = apply(params, {k: jax.device_put(v, batch_sharding(mesh, v.ndim)) for k, v in batch.items()})
    np.testing.assert_allclose(sharded["itm_logits"], single["itm_logits"], rtol=1e-4, atol=1e-5)
    assert sampled["itm_labels"].tolist() == [1] * 8 + [0] * 16
    assert np.all(np.isfinite(np.asarray(sampled["itm_logits"])))
