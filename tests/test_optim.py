import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlfm.optim import build_optimizer, build_schedule, ema_update, path_mask


def test_warmup_then_cosine():
    s = build_schedule(dict(name="cosine", peak=1.0, warmup_steps=10, end=0.1), total_steps=110)
    assert float(s(0)) == 0.0 and np.isclose(float(s(5)), 0.5) and np.isclose(float(s(10)), 1.0)
    assert np.isclose(float(s(60)), 0.55, atol=1e-6)  # halfway down the cosine from 1.0 to 0.1
    assert np.isclose(float(s(110)), 0.1, atol=1e-6)


def test_linear_and_rsqrt_schedules():
    lin = build_schedule(dict(name="linear", peak=2.0, end=0.0), total_steps=4)
    assert [float(lin(i)) for i in range(5)] == [2.0, 1.5, 1.0, 0.5, 0.0]
    rs = build_schedule(dict(name="rsqrt", peak=1.0, timescale=100), total_steps=1000)
    assert np.isclose(float(rs(300)), 0.5)


def test_schedule_and_optimizer_typos_name_valid_keys():
    with pytest.raises(KeyError, match="valid"):
        build_schedule(dict(name="cosin", peak=1.0), 10)
    with pytest.raises(KeyError, match="valid: name, peak"):
        build_schedule(dict(name="cosine", peak=1.0, warmup=3), 10)
    with pytest.raises(KeyError, match="valid: name, lr"):
        build_optimizer(dict(name="adamw", lr=dict(peak=1.0), weight_dacay=0.1), 10)


def test_no_weight_decay_on_norms_biases_and_embeddings():
    params = {"encoder": {"layers": {"attn": {"query": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}},
                                     "ln1": {"scale": jnp.ones(2), "bias": jnp.ones(2)}}},
              "token_embed": {"embedding": jnp.ones((3, 2))}, "logit_scale": jnp.ones(()),
              "head": {"kernel": jnp.ones((2, 2))}}
    tx, _ = build_optimizer(dict(name="adamw", lr=dict(name="constant", peak=1.0), weight_decay=0.5), 10)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    # With zero gradients the only update is decoupled weight decay: -lr * wd * param.
    assert np.allclose(updates["encoder"]["layers"]["attn"]["query"]["kernel"], -0.5)
    assert np.allclose(updates["head"]["kernel"], -0.5)
    for leaf in (updates["encoder"]["layers"]["attn"]["query"]["bias"], updates["encoder"]["layers"]["ln1"]["scale"],
                 updates["token_embed"]["embedding"], updates["logit_scale"]):
        assert np.allclose(leaf, 0.0)


def test_path_mask():
    mask = path_mask({"a": {"bias": 1, "kernel": 2}}, [r".*bias$"], match_value=True)
    assert mask == {"a": {"bias": True, "kernel": False}}


def test_clipping_bounds_the_gradient_norm():
    tx, _ = build_optimizer(dict(name="sgd", lr=dict(name="constant", peak=1.0), momentum=0.0, clip_norm=1.0), 10)
    params = {"w": jnp.zeros(4)}
    updates, _ = tx.update({"w": jnp.full(4, 10.0)}, tx.init(params), params)
    assert np.isclose(float(optax.tree.norm(updates)), 1.0, rtol=1e-5)


def test_ema_update():
    ema = {"w": jnp.array([1.0, 2.0])}
    out = ema_update(ema, {"w": jnp.array([3.0, 6.0])}, decay=0.75)
    np.testing.assert_allclose(out["w"], [1.5, 3.0])


def test_train_step_tracks_ema():
    from vlfm.losses import combined_loss
    from vlfm.models import build_model
    from vlfm.optim.combine import sum_gradients
    from vlfm.train.step import make_train_step
    from vlfm.train.tasks import Task
    model = build_model(dict(name="image_classifier", image=dict(name="vit", image_size=8, patch_size=4, width=8,
                                                                 depth=1, num_heads=2, mlp_dim=16, num_classes=3)))
    batch = {"image": np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32),
             "label": np.array([0, 1, 2, 0])}
    params = model.init(jax.random.key(0), batch)["params"]
    tx, schedule = build_optimizer(dict(name="sgd", lr=dict(name="constant", peak=0.5)), 10)
    tx = optax.chain(sum_gradients(), tx)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "ema_params": jax.tree.map(jnp.copy, params)}
    task = Task("main", None, 4, combined_loss({"softmax_xent": {}}))
    step = jax.jit(make_train_step(model, [task], tx, schedule, seed=0, ema_decay=0.9))
    new, _ = step(state, {"main": batch}, {})
    for p0, p1, e1 in zip(jax.tree.leaves(params), jax.tree.leaves(new["params"]), jax.tree.leaves(new["ema_params"])):
        np.testing.assert_allclose(e1, 0.9 * p0 + 0.1 * p1, rtol=1e-5, atol=1e-7)
