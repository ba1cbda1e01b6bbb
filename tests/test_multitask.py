"""Gradient combiners, freezing, layer-wise decay, schedules and distillation losses on small cases."""

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlfm.losses import LOSSES
from vlfm.optim.combine import gradient_masking, sum_gradients
from vlfm.optim.freezing import apply_stateless, freeze
from vlfm.optim.layer_decay import layerwise_lr_decay
from vlfm.train.tasks import TaskSchedule


def _params():
    return {"encoder": {"w": jnp.arange(1.0, 9.0).reshape(2, 4), "b": jnp.zeros(4)},
            "image_head": {"w": jnp.ones((4, 2))}, "text_head": {"w": jnp.ones((4, 3))}}


def _grads(params, image_value, text_value):
    """The image loss touches the encoder and its head; the text loss the encoder and its head."""
    g_img = jax.tree.map(lambda p: jnp.full(p.shape, image_value), params)
    g_img["text_head"]["w"] = jnp.zeros((4, 3))
    g_txt = jax.tree.map(lambda p: jnp.full(p.shape, text_value), params)
    g_txt["image_head"]["w"] = jnp.zeros((4, 2))
    return {"image": g_img, "text": g_txt}


def test_sum_gradients_weights():
    p = _params()
    out, _ = sum_gradients({"image": 2.0}).update(_grads(p, 1.0, 10.0), optax.EmptyState())
    np.testing.assert_allclose(out["encoder"]["w"], 12.0)
    np.testing.assert_allclose(out["image_head"]["w"], 2.0)
    np.testing.assert_allclose(out["text_head"]["w"], 10.0)


@pytest.mark.parametrize("strategy", ["random", "magnitude", "grad_magnitude"])
def test_masks_are_complementary_on_shared_and_sum_elsewhere(strategy):
    p = _params()
    tx = gradient_masking("text", "image", shared=(r"encoder/.*",), strategy=strategy, ratio=0.5, seed=3)
    state = tx.init(p)
    out, state = tx.update(_grads(p, 1.0, 10.0), state, p)
    enc = np.asarray(out["encoder"]["w"])
    mask = np.asarray(state.mask["encoder"]["w"])
    # every shared element takes exactly one task's gradient: text (10) where the mask is set, image (1) elsewhere
    np.testing.assert_array_equal(enc, np.where(mask, 10.0, 1.0))
    np.testing.assert_allclose(out["image_head"]["w"], 1.0)  # modality-specific: only its own gradient
    np.testing.assert_allclose(out["text_head"]["w"], 10.0)


def test_magnitude_mask_takes_largest_weights_and_refreshes_on_schedule():
    p = _params()
    tx = gradient_masking("text", "image", strategy="magnitude", ratio=0.25, refresh_every=2)
    state = tx.init(p)
    assert np.asarray(state.mask["encoder"]["w"]).sum() == 2  # top 25% of 8 weights: 7 and 8
    assert np.asarray(state.mask["encoder"]["w"])[1, 2:].all()
    flipped = jax.tree.map(lambda x: -x, p)
    flipped["encoder"]["w"] = jnp.arange(8.0, 0.0, -1.0).reshape(2, 4)  # now the first row is largest
    _, state = tx.update(_grads(p, 1.0, 2.0), state, flipped)  # count 0: no refresh
    assert np.asarray(state.mask["encoder"]["w"])[1, 2:].all()
    _, state = tx.update(_grads(p, 1.0, 2.0), state, flipped)  # count 1: no refresh
    _, state = tx.update(_grads(p, 1.0, 2.0), state, flipped)  # count 2: refresh from current weights
    assert np.asarray(state.mask["encoder"]["w"])[0, :2].all() and np.asarray(state.mask["encoder"]["w"]).sum() == 2


def test_grad_magnitude_mask_follows_relative_gradient_size():
    p = {"encoder": {"w": jnp.zeros(4)}}
    tx = gradient_masking("text", "image", strategy="grad_magnitude")
    grads = {"text": {"encoder": {"w": jnp.array([1.0, 1.0, 4.0, 2.0])}},
             "image": {"encoder": {"w": jnp.array([10.0, 30.0, 10.0, 30.0])}}}
    out, state = tx.update(grads, tx.init(p), p)
    # relative sizes: text [0.5, 0.5, 2, 1] vs image [0.5, 1.5, 0.5, 1.5]
    np.testing.assert_array_equal(np.asarray(state.mask["encoder"]["w"]), [True, False, True, False])
    np.testing.assert_allclose(out["encoder"]["w"], [1.0, 30.0, 4.0, 30.0])


def test_random_mask_ratio_and_seed():
    p = {"encoder": {"w": jnp.zeros((100, 100))}}
    m1 = gradient_masking("a", "b", ratio=0.3, seed=1).init(p).mask["encoder"]["w"]
    m2 = gradient_masking("a", "b", ratio=0.3, seed=1).init(p).mask["encoder"]["w"]
    m3 = gradient_masking("a", "b", ratio=0.3, seed=2).init(p).mask["encoder"]["w"]
    assert abs(float(np.mean(m1)) - 0.3) < 0.02
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(m1, m3)


def test_masking_chains_with_an_optimizer_and_rejects_wrong_tasks():
    p = _params()
    tx = optax.chain(gradient_masking("text", "image"), optax.sgd(0.1))
    state = tx.init(p)
    updates, _ = tx.update(_grads(p, 1.0, 10.0), state, p)
    np.testing.assert_allclose(updates["text_head"]["w"], -1.0)
    with pytest.raises(KeyError, match="combines tasks"):
        tx.update({"text": _grads(p, 1.0, 1.0)["text"]}, state, p)
    with pytest.raises(ValueError, match="valid"):
        gradient_masking("a", "b", strategy="lottery")


def test_freeze_zeroes_matching_updates_only():
    p = _params()
    out = apply_stateless(freeze([r"encoder/.*"]), jax.tree.map(jnp.ones_like, p))
    np.testing.assert_allclose(out["encoder"]["w"], 0.0)
    np.testing.assert_allclose(out["image_head"]["w"], 1.0)


def test_frozen_parameters_never_change_under_adamw_with_weight_decay():
    p = _params()
    tx = optax.chain(optax.adamw(0.1, weight_decay=0.5), freeze([r"encoder/w"]))
    state = tx.init(p)
    params = p
    for _ in range(3):
        updates, state = tx.update(jax.tree.map(jnp.ones_like, p), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(params["encoder"]["w"], p["encoder"]["w"])
    assert not np.allclose(params["encoder"]["b"], p["encoder"]["b"])


def test_layerwise_decay_scales_stacked_and_unrolled_layers():
    updates = {"encoder": {"layers": {"w": jnp.ones((3, 2))}, "layer_1": {"w": jnp.ones(2)}},
               "token_embed": {"embedding": jnp.ones(2)}, "head": {"kernel": jnp.ones(2)}}
    out = apply_stateless(layerwise_lr_decay(0.5, 3), updates)
    np.testing.assert_allclose(out["encoder"]["layers"]["w"][:, 0], [0.125, 0.25, 0.5])
    np.testing.assert_allclose(out["encoder"]["layer_1"]["w"], 0.25)
    np.testing.assert_allclose(out["token_embed"]["embedding"], 0.0625)
    np.testing.assert_allclose(out["head"]["kernel"], 1.0)


def test_optimizer_config_layer_decay_scales_sgd_updates_exactly():
    """``optimizer.layer_decay`` chains the decay after the optimizer: plain SGD (lr 0.1) moves layer
    ``i`` of 3 by ``0.1 * 0.5 ** (3 - i)`` and the head by 0.1; a missing key is named."""
    from vlfm.optim.optimizers import build_optimizer

    params = {"encoder": {"layers": {"w": jnp.zeros((3, 2))}}, "head": {"kernel": jnp.zeros(2)}}
    tx, _ = build_optimizer(dict(name="sgd", momentum=0.0, lr=dict(name="constant", peak=0.1),
                                 layer_decay=dict(decay=0.5, num_layers=3)), total_steps=10)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    np.testing.assert_allclose(updates["encoder"]["layers"]["w"][:, 0], [-0.0125, -0.025, -0.05], rtol=1e-6)
    np.testing.assert_allclose(updates["head"]["kernel"], -0.1, rtol=1e-6)
    with pytest.raises(KeyError, match="num_layers"):
        build_optimizer(dict(name="sgd", lr=dict(name="constant", peak=0.1), layer_decay=dict(decay=0.5)), 10)


class _T:
    def __init__(self, name, steps=0):
        self.name, self.steps = name, steps


def test_schedules():
    tasks = [_T("a", 3), _T("b", 1)]
    assert [TaskSchedule("round_robin", tasks).tasks_at(s) for s in range(3)] == [("a",), ("b",), ("a",)]
    assert TaskSchedule("accumulate", tasks).tasks_at(5) == ("a", "b")
    assert [TaskSchedule("stages", tasks).tasks_at(s)[0] for s in range(6)] == ["a", "a", "a", "b", "b", "b"]
    weighted = TaskSchedule("weighted", [_T("a", 300), _T("b", 100)], seed=1)
    picks = [weighted.tasks_at(s)[0] for s in range(400)]
    assert picks.count("a") == 300 and picks != sorted(picks)  # exact proportions, shuffled
    uniform = TaskSchedule("uniform", tasks, seed=0)
    picks = [uniform.tasks_at(s)[0] for s in range(2000)]
    assert 0.45 < picks.count("a") / 2000 < 0.55
    assert picks == [TaskSchedule("uniform", tasks, seed=0).tasks_at(s)[0] for s in range(2000)]
    with pytest.raises(KeyError, match="valid"):
        TaskSchedule("random", tasks)
    with pytest.raises(ValueError, match="steps"):
        TaskSchedule("weighted", [_T("a"), _T("b")])


def test_kd_logits_hand_computed():
    s = np.array([[1.0, 0.0]], np.float32)
    t = np.array([[0.0, 2.0]], np.float32)
    tau = 2.0
    pt = np.exp(t / tau) / np.exp(t / tau).sum()
    ps = np.exp(s / tau) / np.exp(s / tau).sum()
    expected = tau ** 2 * np.sum(pt * (np.log(pt) - np.log(ps)))
    loss, m = LOSSES.get("kd_logits")({"logits": s, "teacher/vit": {"logits": t}}, {}, teacher="vit",
                                       temperature=tau)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert float(m["teacher_agreement"]) == 0.0


def test_kd_logits_masked_positions_and_no_teacher_gradient():
    s = jnp.zeros((1, 3, 4))
    t = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 4)), jnp.float32)
    batch = {"mlm_targets": np.array([[-1, 2, -1]])}

    def f(s, t):
        return LOSSES.get("kd_logits")({"mlm_logits": s, "teacher/bert": {"mlm_logits": t}}, batch, teacher="bert",
                                       student_key="mlm_logits", mask_key="mlm_targets")[0]

    gs, gt = jax.grad(f, argnums=(0, 1))(s, t)
    assert np.allclose(gs[0, 0], 0) and np.allclose(gs[0, 2], 0) and not np.allclose(gs[0, 1], 0)
    np.testing.assert_allclose(gt, 0.0)
    with pytest.raises(KeyError, match="teachers"):
        LOSSES.get("kd_logits")({"logits": s}, {}, teacher="vit")


def test_kd_hidden_and_attention():
    s = jnp.array([[[1.0, 0.0]]])
    t = jnp.array([[[0.0, 1.0]]])
    out = {"tokens": s, "teacher/x": {"tokens": t}}
    np.testing.assert_allclose(LOSSES.get("kd_hidden")(out, {}, teacher="x")[0], 1.0)
    np.testing.assert_allclose(LOSSES.get("kd_hidden")(out, {}, teacher="x", distance="cosine")[0], 1.0)
    ps, pt = np.array([[0.5, 0.5]]), np.array([[0.9, 0.1]])
    loss, _ = LOSSES.get("kd_attention")({"attention": ps, "teacher/x": {"attention": pt}}, {}, teacher="x")
    np.testing.assert_allclose(loss, np.sum(pt * np.log(pt / ps)), rtol=1e-5)


def test_gradient_mask_survives_checkpoint_and_resume(tmp_path):
    import flax.linen as nn

    from vlfm.core.checkpoint import Checkpointer
    from vlfm.core.sharding import make_mesh, rules_from_config
    from vlfm.train.state import sharded_init

    tx = optax.chain(gradient_masking("text", "image", strategy="random", ratio=0.5, refresh_every=3, seed=7),
                     optax.adam(1e-3))

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            k = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(), ("embed", "mlp")), (8, 16))
            return x @ k

    def init(rng):
        params = {"encoder": Model().init(rng, jnp.ones((1, 8)))["params"]}
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    mesh = make_mesh((2, 2, 2))
    rules = rules_from_config()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state, _, abstract = sharded_init(init, jax.random.key(0), mesh, rules)
        grads = {"text": jax.tree.map(jnp.ones_like, state["params"]),
                 "image": jax.tree.map(jnp.zeros_like, state["params"])}
        opt_state = state["opt_state"]
        for _ in range(4):  # crosses a refresh (count 3)
            _, opt_state = tx.update(grads, opt_state, state["params"])
        state = dict(state, opt_state=opt_state)
        ckpt = Checkpointer(str(tmp_path), save_every=1, async_save=False, handle_sigterm=False)
        ckpt.save(4, state)
        ckpt.wait()
        restored, _ = ckpt.restore(abstract)
        ckpt.close()
    before, after = state["opt_state"][0], restored["opt_state"][0]
    assert type(after).__name__ == "MaskState" and int(after.count) == 4
    np.testing.assert_array_equal(np.asarray(before.mask["encoder"]["kernel"]), np.asarray(after.mask["encoder"]["kernel"]))
    # the restored optimizer continues exactly: same next mask refresh and same combined gradient
    out_a, _ = tx.update(grads, state["opt_state"], state["params"])
    out_b, _ = tx.update(grads, restored["opt_state"], restored["params"])
    np.testing.assert_array_equal(np.asarray(out_a["encoder"]["kernel"]), np.asarray(out_b["encoder"]["kernel"]))


def _two_task_setup(**task_kwargs):
    from vlfm.losses import combined_loss
    from vlfm.models import build_model
    from vlfm.train.tasks import Task

    model = build_model(dict(name="ufo", width=16, depth=1, num_heads=2, mlp_dim=32, image_size=8, patch_size=4,
                             num_classes=3, vocab_size=11, max_len=6))
    rng = np.random.default_rng(0)
    image = {"image": rng.normal(size=(4, 8, 8, 3)).astype(np.float32), "label": np.array([0, 1, 2, 0])}
    text = {"text": rng.integers(5, 11, (4, 6)).astype(np.int32), "text_mask": np.ones((4, 6), np.int32),
            "mlm_targets": np.where(rng.random((4, 6)) < 0.5, rng.integers(5, 11, (4, 6)), -1).astype(np.int32)}
    params = flax.linen.meta.unbox(model.init(jax.random.key(0), {**image, **text})["params"])
    tasks = {"image": Task("image", None, 4, combined_loss({"softmax_xent": {}}), **task_kwargs.get("image", {})),
             "text": Task("text", None, 4, combined_loss({"masked_xent": {}}), **task_kwargs.get("text", {}))}
    return model, params, tasks, {"image": image, "text": text}


def _state(params, tx):
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def test_switching_tasks_does_not_recompile():
    from vlfm.train.step import make_train_step

    model, params, tasks, batches = _two_task_setup()
    tx = optax.chain(sum_gradients(), optax.sgd(0.1))
    fns = {n: jax.jit(make_train_step(model, [t], tx, lambda s: 0.1, seed=0)) for n, t in tasks.items()}
    state = _state(params, tx)
    for step in range(6):
        name = ("image", "text")[step % 2]
        state, metrics = fns[name](state, {name: batches[name]}, {})
        assert f"{name}/task_loss" in metrics
    assert fns["image"]._cache_size() == 1 and fns["text"]._cache_size() == 1


def test_task_freezing_and_lr_multiplier_in_the_step():
    from vlfm.train.step import make_train_step

    model, params, tasks, batches = _two_task_setup(image={"freeze": (r"encoder/.*",), "lr_multiplier": 3.0})
    tx = optax.chain(sum_gradients(), optax.sgd(0.1))
    step = jax.jit(make_train_step(model, [tasks["image"]], tx, lambda s: 0.1, seed=0))
    new, metrics = step(_state(params, tx), {"image": batches["image"]}, {})
    for a, b in zip(jax.tree.leaves(params["encoder"]), jax.tree.leaves(new["params"]["encoder"])):
        np.testing.assert_array_equal(a, b)  # frozen
    plain_task = type(tasks["image"])("image", None, 4, tasks["image"].loss_fn)
    plain = jax.jit(make_train_step(model, [plain_task], tx, lambda s: 0.1, seed=0))
    ref, _ = plain(_state(params, tx), {"image": batches["image"]}, {})
    delta = new["params"]["image_head"]["kernel"] - params["image_head"]["kernel"]
    ref_delta = ref["params"]["image_head"]["kernel"] - params["image_head"]["kernel"]
    np.testing.assert_allclose(delta, 3.0 * ref_delta, rtol=1e-5, atol=1e-8)
    assert float(metrics["learning_rate"]) == pytest.approx(0.3)


def test_accumulate_step_equals_sum_of_task_gradients():
    from vlfm.train.step import make_train_step

    model, params, tasks, batches = _two_task_setup()
    tx = optax.chain(sum_gradients(), optax.sgd(1.0))
    both = jax.jit(make_train_step(model, [tasks["image"], tasks["text"]], tx, lambda s: 1.0, seed=0))
    new, metrics = both(_state(params, tx), batches, {})
    expected = jax.tree.map(jnp.zeros_like, params)
    for name in ("image", "text"):
        def loss(p, name=name):
            out = model.apply({"params": p}, batches[name], train=True, rngs={"dropout": jax.random.key(0)})
            return tasks[name].loss_fn(out, batches[name])[0]
        expected = jax.tree.map(jnp.add, expected, jax.grad(loss)(params))
    for p0, p1, g in zip(jax.tree.leaves(params), jax.tree.leaves(new["params"]), jax.tree.leaves(expected)):
        np.testing.assert_allclose(p0 - p1, g, rtol=1e-4, atol=1e-6)
    assert {"image/task_loss", "text/task_loss", "loss"} <= set(metrics)
