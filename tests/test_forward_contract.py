"""The forward contract: a task's method, random streams, mutable collections, constants and name reach
the model; parameters are the union of every task's train-mode init; refused step combinations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlfm.losses import combined_loss
from vlfm.optim.combine import sum_gradients
from vlfm.train.forward import FORWARD_KEYS, STREAMS, Forward, parse_forward
from vlfm.core.sharding import make_mesh, rules_from_config
from vlfm.train.state import TaskInit, init_batch, sharded_init, state_initializer
from vlfm.train.step import make_train_step
from vlfm.train.tasks import TASK_KEYS, Task
from vlfm.train.teachers import Teacher, teacher_outputs


class Toy(nn.Module):
    """A shared trunk, a head per task (by name, or by input key), a decoder that exists in training only."""

    @nn.compact
    def __call__(self, batch, *, train=False, task=None, offset=0.0):
        key = "x" if "x" in batch else "y"
        h = nn.Dense(4, name=f"trunk_{key}")(batch[key])
        self.sow("intermediates", "hidden", h)
        out = {"h": h + offset}
        if task is not None:
            out["logits"] = nn.Dense(2, name=f"head_{task}")(h)
        if train:
            out["recon"] = nn.Dense(4, name="train_only_decoder")(h)
            out["masking"] = jax.random.uniform(self.make_rng("masking"), ())
            out["sampling"] = jax.random.uniform(self.make_rng("sampling"), ())
        return out

    def embed(self, batch, *, train=False):
        return {"h": self(batch, train=train)["h"] * 2.0}


X = {"x": np.arange(12, dtype=np.float32).reshape(2, 6) / 10}
Y = {"y": np.ones((2, 3), np.float32)}


def _params(tasks):
    init = state_initializer(Toy(), optax.sgd(0.1), tasks=tasks)
    return nn.meta.unbox(jax.jit(init)(jax.random.key(0))["params"])


def test_forward_config_keys_are_validated():
    assert "forward" in TASK_KEYS
    assert parse_forward(None, "task 'a'") == Forward() and Forward().rngs == STREAMS
    f = parse_forward(dict(method="embed", rngs=["dropout"], mutable=["intermediates"], constants=dict(k=1),
                           pass_task=True), "task 'a'")
    assert (f.method, f.rngs, f.mutable, f.constants, f.pass_task) == ("embed", ("dropout",), ("intermediates",),
                                                                       {"k": 1}, True)
    with pytest.raises(KeyError, match="task 'a': forward has unknown keys \\['rng'\\]; valid keys: " +
                       ", ".join(FORWARD_KEYS)):
        parse_forward(dict(rng=("dropout",)), "task 'a'")
    with pytest.raises(TypeError, match="string"):
        parse_forward(dict(rngs="dropout"), "task 'a'")
    with pytest.raises(ValueError, match="params"):
        Forward(mutable=("params",))
    with pytest.raises(ValueError, match="reserved"):
        Forward(constants={"task": 1})
    with pytest.raises(AttributeError, match="Toy has no such method"):
        Forward(method="encode").check(Toy())


def test_train_only_submodule_gets_parameters():
    params = _params([TaskInit("a", X)])
    assert params["train_only_decoder"]["kernel"].shape == (4, 4)


def test_tasks_with_their_own_heads_and_inputs_each_get_their_branch():
    by_name = Forward(pass_task=True)
    params = _params([TaskInit("a", X, by_name), TaskInit("b", Y, by_name)])
    assert {"trunk_x", "trunk_y", "head_a", "head_b", "train_only_decoder"} <= set(params)
    alone = _params([TaskInit("a", X, by_name)])
    np.testing.assert_array_equal(params["trunk_x"]["kernel"], alone["trunk_x"]["kernel"])  # one params key


def test_a_parameter_with_two_shapes_fails_naming_the_path():
    with pytest.raises(ValueError, match=r"parameter trunk_x/kernel: task 'a' creates float32\[6, 4\], task 'b' "
                                         r"float32\[3, 4\]"):
        _params([TaskInit("a", X), TaskInit("b", {"x": np.ones((2, 3), np.float32)})])


def test_multi_task_init_is_one_traced_function_for_sharded_init():
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    rules = rules_from_config()
    init = state_initializer(Toy(), optax.adam(0.1), ema=True,
                             tasks=[TaskInit("a", init_batch({"x": X["x"][0]}, 1), Forward(pass_task=True)),
                                    TaskInit("b", init_batch({"y": Y["y"][0]}, 1), Forward(pass_task=True))])
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state, _, abstract = sharded_init(init, jax.random.key(0), mesh, rules)
    assert {"head_a", "head_b"} <= set(state["ema_params"]) and "head_b" in abstract["params"]


def _mean_h(outputs, batch):
    del batch
    return jnp.mean(outputs["h"]), {}


def test_step_calls_the_method_with_streams_mutable_constants_and_task():
    model = Toy()

    def loss(outputs, batch):
        hidden = outputs["intermediates"]["hidden"][0]
        metrics = {"hidden": jnp.mean(hidden), "masking": outputs["masking"], "sampling": outputs["sampling"]}
        return jnp.mean(outputs["h"]) + jnp.mean(outputs["logits"]), metrics

    forward = Forward(mutable=("intermediates",), constants={"offset": 5.0}, pass_task=True)
    params = _params([TaskInit("a", X, forward)])
    task = Task("a", None, 2, loss, forward=forward)
    tx = optax.chain(sum_gradients(), optax.sgd(0.0))
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    _, metrics = make_train_step(model, [task], tx, lambda s: 0.0, seed=0)(state, {"a": X}, {})
    out = model.apply({"params": params}, X, train=True, task="a", offset=5.0,
                      rngs={s: jax.random.key(0) for s in STREAMS})
    np.testing.assert_allclose(metrics["a/task_loss"], jnp.mean(out["h"]) + jnp.mean(out["logits"]), rtol=1e-6)
    np.testing.assert_allclose(metrics["a/hidden"], jnp.mean(out["h"]) - 5.0, rtol=1e-5)  # sown, before the offset
    assert float(metrics["a/masking"]) != float(metrics["a/sampling"])  # independent streams

    embed = Task("e", None, 2, _mean_h, forward=Forward(method="embed"))
    _, metrics = make_train_step(model, [embed], tx, lambda s: 0.0, seed=0)(state, {"e": X}, {})
    plain = model.apply({"params": params}, X, method="embed")["h"]
    np.testing.assert_allclose(metrics["e/task_loss"], jnp.mean(plain), rtol=1e-6)


def test_teachers_run_through_their_forward_in_eval_mode():
    model = Toy()
    params = _params([TaskInit("a", X)])
    teacher = Teacher("t", model, params, Forward(mutable=("intermediates",)))
    out = teacher_outputs({"t": teacher}, ("t",), {"t": params}, X)["teacher/t"]
    assert "recon" not in out  # eval mode: no train-only outputs, no random streams needed
    np.testing.assert_allclose(out["intermediates"]["hidden"][0], out["h"])


def test_fusion_itm_draws_from_the_sampling_stream_and_evaluates_without_keys():
    from vlfm.models import build_model

    model = build_model(dict(name="vilt", vocab_size=40, max_text_len=8, image_size=16, patch_size=8, width=32,
                             depth=1, num_heads=2, mlp_dim=64, itm="random"))
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(4, 16, 16, 3)).astype(np.float32),
             "text": rng.integers(5, 40, (4, 8)).astype(np.int32), "text_mask": np.ones((4, 8), np.int32)}
    params = _vilt_params(model, batch)
    assert model.apply({"params": params}, batch)["itm_labels"].tolist() == [1] * 4  # evaluation: no keys
    with pytest.raises(Exception, match="sampling"):
        model.apply({"params": params}, batch, train=True, rngs={"dropout": jax.random.key(0)})
    out = Forward().apply(model, params, batch, task="itm", train=True, rng=jax.random.key(0))
    assert int(out["itm_labels"].sum()) == 2


def _vilt_params(model, batch):
    return nn.meta.unbox(jax.jit(state_initializer(model, optax.sgd(0.1), batch))(jax.random.key(0))["params"])


def _two_tasks(**image_kwargs):
    loss = combined_loss({"softmax_xent": {}})
    return [Task("image", None, 4, loss, **image_kwargs), Task("text", None, 4, combined_loss({"masked_xent": {}}))]


def test_a_task_lr_multiplier_under_accumulate_is_refused():
    tx = optax.chain(sum_gradients(), optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"task 'image' sets lr_multiplier=3.0.*\['text'\].*schedule 'accumulate'"
                                         r".*optimizer.lr_multipliers"):
        make_train_step(Toy(), _two_tasks(lr_multiplier=3.0), tx, lambda s: 0.1, seed=0)
    make_train_step(Toy(), _two_tasks(lr_multiplier=3.0)[:1], tx, lambda s: 0.1, seed=0)  # alone it applies


def test_accumulation_with_pairs_drawn_from_the_batch_is_refused():
    tx = optax.chain(sum_gradients(), optax.sgd(0.1))
    task = Task("main", None, 8, combined_loss({"itm": {}, "softmax_contrastive": {}}))
    with pytest.raises(ValueError, match="task 'main': loss itm reads pairs the model draws from the whole batch.*"
                                         "grad_accum_steps=2"):
        make_train_step(Toy(), [task], tx, lambda s: 0.1, seed=0, accum_steps=2)
    make_train_step(Toy(), [task], tx, lambda s: 0.1, seed=0, accum_steps=1)


CLIP = dict(name="dual_encoder", embed_dim=8,
            image=dict(name="vit", image_size=8, patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32,
                       pre_norm=True),
            text=dict(name="text_transformer", vocab_size=32, max_len=6, width=16, depth=1, num_heads=2, mlp_dim=32,
                      eos_id=3))


def _clip_batch(n=16):
    r = np.random.default_rng(0)
    text = r.integers(5, 32, (n, 6)).astype(np.int32)
    text[:, -1] = 3
    return {"image": r.normal(size=(n, 8, 8, 3)).astype(np.float32), "text": text}


def _clip_step(loss, accum, mesh=None):
    from vlfm.models import build_model

    model = build_model(dict(CLIP, **({"logit_bias_init": -10.0} if loss == "sigmoid_contrastive" else {})))
    batch = _clip_batch()
    tx = optax.chain(sum_gradients(), optax.sgd(1.0))
    mesh = mesh or make_mesh((1, 1, 1), devices=jax.devices()[:1])
    rules = rules_from_config()
    task = Task("main", None, 16, combined_loss({loss: {}}))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        init = state_initializer(model, tx, init_batch({k: v[0] for k, v in batch.items()}, 1))
        state, shardings, _ = sharded_init(init, jax.random.key(0), mesh, rules)
        before = jax.device_get(state["params"])
        step = jax.jit(make_train_step(model, [task], tx, lambda s: 1.0, seed=0, accum_steps=accum,
                                       prefix_metrics=False), in_shardings=(shardings, None, None))
        new, metrics = step(state, {"main": batch}, {})
    grads = jax.tree.map(lambda a, b: a - b, before, jax.device_get(new["params"]))  # SGD at lr 1: the gradient
    return float(metrics["loss"]), grads, metrics


@pytest.mark.parametrize("loss", ["softmax_contrastive", "sigmoid_contrastive"])
def test_accumulating_a_contrastive_loss_equals_the_full_batch(loss):
    """With the feature cache, 4 micro-batches give the full batch's loss and gradient (every micro-batch
    sees all 16 rows as negatives), also under an 8-device mesh (the losses' shard_map path)."""
    full_loss, full_grads, full_metrics = _clip_step(loss, 1)
    for mesh in (None, make_mesh((2, 2, 2))):
        acc_loss, acc_grads, metrics = _clip_step(loss, 4, mesh)
        np.testing.assert_allclose(acc_loss, full_loss, rtol=1e-5)
        np.testing.assert_allclose(metrics[f"{loss}/i2t_accuracy"], full_metrics[f"{loss}/i2t_accuracy"])
        for path, g in jax.tree_util.tree_leaves_with_path(full_grads):
            a = acc_grads
            for key in path:
                a = a[key.key]
            np.testing.assert_allclose(a, g, rtol=2e-4, atol=2e-6, err_msg=jax.tree_util.keystr(path))
