import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from vlfm.losses import combined_loss
from vlfm.models import build_model
from vlfm.optim import build_optimizer
from vlfm.core.sharding import make_mesh, resolve_mesh_shape, rules_from_config, to_global_batch
from vlfm.train.state import init_batch, sharded_init, state_initializer
from vlfm.optim.combine import sum_gradients
from vlfm.train.step import make_train_step
from vlfm.train.tasks import Task

MODEL = dict(name="dual_encoder", embed_dim=16,
             image=dict(name="vit", image_size=16, patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=64,
                        pre_norm=True),
             text=dict(name="text_transformer", vocab_size=32, max_len=8, width=32, depth=2, num_heads=4, mlp_dim=64,
                       eos_id=3))


CLASSIFIER = dict(name="image_classifier", image=dict(MODEL["image"], num_classes=5))


def _batch(n=16, seed=0):
    r = np.random.default_rng(seed)
    text = r.integers(5, 32, (n, 8)).astype(np.int32)
    text[:, -1] = 3
    return {"image": r.normal(size=(n, 16, 16, 3)).astype(np.float32), "text": text,
            "label": r.integers(0, 5, (n,)).astype(np.int32)}


def _run(mesh, steps=2, accum=1, optimizer="sgd", model_cfg=MODEL, loss="softmax_contrastive"):
    # SGD keeps updates proportional to gradients; Adam would turn float noise on zero-gradient
    # parameters (the key bias) into full-size updates and hide real differences behind that.
    rules = rules_from_config()
    model = build_model(model_cfg)
    tx, schedule = build_optimizer(dict(name=optimizer, lr=dict(name="constant", peak=0.1), weight_decay=0.1,
                                        clip_norm=1.0), 10)
    tx = optax.chain(sum_gradients(), tx)
    task = Task("main", None, 16, combined_loss({loss: {}}))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        init = state_initializer(model, tx, init_batch({k: v[0] for k, v in _batch().items()}, 1))
        state, shardings, _ = sharded_init(init, jax.random.key(0), mesh, rules)
        step = jax.jit(make_train_step(model, [task], tx, schedule, seed=0, accum_steps=accum, prefix_metrics=False),
                       in_shardings=(shardings, None, None), out_shardings=(shardings, None), donate_argnums=0)
        losses = []
        for i in range(steps):
            state, metrics = step(state, {"main": to_global_batch(_batch(seed=i), mesh)}, {})
            losses.append(float(metrics["loss"]))
        return state, losses


@functools.lru_cache(maxsize=None)
def _single_device_reference():
    return _run(make_mesh((1, 1, 1), devices=jax.devices()[:1]))


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 4, 2)])
def test_mesh_gives_single_device_losses_and_updates(shape):
    ref_state, ref_losses = _single_device_reference()
    state, losses = _run(make_mesh(shape))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ref_state["params"]), jax.tree.leaves(state["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)


def test_parameters_and_optimizer_state_are_really_sharded():
    state, _ = _run(make_mesh((2, 2, 2)), steps=1, optimizer="adamw")
    q = state["params"]["image_tower"]["encoder"]["layers"]["attn"]["query"]["kernel"]  # [layers, embed, heads, kv]
    assert q.shape == (2, 32, 4, 8)
    assert q.sharding.spec[1:3] == ("fsdp", "tensor")
    assert {s.data.shape for s in q.addressable_shards} == {(2, 16, 2, 8)}
    mu = state["opt_state"][1][1][0].mu["image_tower"]["encoder"]["layers"]["attn"]["query"]["kernel"]
    assert mu.sharding == q.sharding
    fc1 = state["params"]["text_tower"]["encoder"]["layers"]["mlp"]["fc1"]["kernel"]  # [layers, embed, mlp]
    assert {s.data.shape for s in fc1.addressable_shards} == {(2, 16, 32)}


def test_gradient_accumulation_matches_full_batch():
    # A per-example loss: the mean of micro-batch gradients is the full-batch gradient.
    mesh = make_mesh((2, 2, 2))
    kw = dict(model_cfg=CLASSIFIER, loss="softmax_xent")
    full_state, full_losses = _run(mesh, steps=2, accum=1, **kw)
    acc_state, acc_losses = _run(mesh, steps=2, accum=4, **kw)
    np.testing.assert_allclose(acc_losses, full_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(full_state["params"]), jax.tree.leaves(acc_state["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)


def test_mesh_shape_resolution():
    assert resolve_mesh_shape((-1, 2, 1), 8) == (4, 2, 1)
    with pytest.raises(ValueError, match="divide"):
        resolve_mesh_shape((-1, 3, 1), 8)
    with pytest.raises(ValueError, match="available"):
        resolve_mesh_shape((2, 2, 1), 8)
