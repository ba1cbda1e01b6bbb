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


# ---------------------------------------------------------------------------------------------------
# Momentum encoders and queues: part of the train state, resumed exactly

B, QUEUE = 16, 32
MODEL = dict(name="dual_encoder", embed_dim=16,
             image=dict(name="vit", image_size=16, patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32),
             text=dict(name="text_transformer", vocab_size=32, max_len=8, width=16, depth=1, num_heads=2, mlp_dim=32,
                       pool="eos", eos_id=3))


def _batch(step):
    """A deterministic batch per step: images, texts, labels mixing classes (0..3) and pairs (-1)."""
    rng = np.random.default_rng(step)
    text = rng.integers(5, 32, (B, 8)).astype(np.int32)
    text[:, -1] = 3
    return {"image": rng.normal(size=(B, 16, 16, 3)).astype(np.float32), "text": text,
            "text_mask": np.ones((B, 8), np.int32), "label": rng.integers(-1, 4, B).astype(np.int32)}


def test_killed_run_resumes_with_the_same_queue_and_losses(tmp_path):
    """Steps 1-4 uninterrupted against steps 1-2, a checkpoint, a fresh process-like restore (new state
    from the abstract layout, new checkpointer) and steps 3-4: the same queue, momentum parameters and
    losses, on 2 data shards (the queue is sharded like batch rows)."""
    import flax.linen as nn
    import optax

    from vlfm.core.checkpoint import Checkpointer
    from vlfm.core.sharding import batch_sharding, rules_from_config
    from vlfm.losses import combined_loss
    from vlfm.models import build_model
    from vlfm.optim.combine import build_combiner
    from vlfm.train.momentum import build_momentum
    from vlfm.train.state import TaskInit, init_batch, sharded_init, state_initializer
    from vlfm.train.step import make_train_step
    from vlfm.train.tasks import Task

    model = build_model(MODEL)
    momentum = build_momentum(dict(decay=0.5, queue_size=QUEUE, queue_keys=["image_embed", "text_embed", "label"]))
    loss_fn = combined_loss({"unicl": dict(fn="multi_positive_contrastive", label_key="label", queue=True, alpha=0.4)})
    task = Task("main", None, B, loss_fn)
    tx = optax.chain(build_combiner(None, {"main": 1.0}), optax.adam(1e-2))
    mesh, rules = make_mesh((2, 1, 1), devices=jax.devices()[:2]), rules_from_config()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        example = {k: v[0] for k, v in _batch(0).items()}
        init = state_initializer(model, tx, tasks=[TaskInit("main", init_batch(example, 2))], momentum=momentum)
        fresh, shardings, abstract = sharded_init(init, jax.random.key(0), mesh, rules)
        assert shardings["momentum"]["queue"]["image_embed"].spec[0] == ("data", "fsdp")
        step = jax.jit(make_train_step(model, [task], tx, optax.constant_schedule(1e-2), seed=0, momentum=momentum),
                       in_shardings=(shardings, None, None), out_shardings=(shardings, None))

        def run(state, first, last):
            losses = []
            for i in range(first, last):
                batch = {k: jax.device_put(v, batch_sharding(mesh, v.ndim)) for k, v in _batch(i).items()}
                state, metrics = step(state, {"main": batch}, {})
                losses.append(float(metrics["loss"]))
            return state, losses

        full, full_losses = run(jax.tree.map(jnp.copy, fresh), 0, 4)
        half, _ = run(fresh, 0, 2)
        ckpt = Checkpointer(tmp_path / "ckpt", save_every=1, async_save=False)
        try:
            ckpt.save(2, half)
        finally:
            ckpt.close()
        del half
        ckpt = Checkpointer(tmp_path / "ckpt", save_every=1, async_save=False)
        try:
            restored, _ = ckpt.restore(abstract)
        finally:
            ckpt.close()
        resumed, resumed_losses = run(restored, 2, 4)
    assert resumed_losses == full_losses[2:]
    a, b = jax.device_get(full["momentum"]), jax.device_get(resumed["momentum"])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    queue = a["queue"]
    assert queue["valid"].all() and int(a["ptr"]) == 4 * B % QUEUE
    np.testing.assert_allclose(np.linalg.norm(queue["text_embed"], axis=-1), 1.0, rtol=1e-5)  # embeddings written
    np.testing.assert_array_equal(queue["label"], np.concatenate([_batch(2)["label"], _batch(3)["label"]]))
    moved = [not np.array_equal(m, p) for m, p in zip(jax.tree.leaves(a["params"]),
                                                      jax.tree.leaves(jax.device_get(full["params"])))]
    assert any(moved)  # the momentum model lags the student


# ---------------------------------------------------------------------------------------------------
# Image-label-text data


def test_label_and_pair_data_mix_in_one_batch_with_one_label_space():
    from vlfm.data import build_dataset, shapes, train_iterator

    small = dict(name="shapes", num_examples=64, image_size=16, max_len=24)
    cfg = dict(name="mixture", sampling="round_robin", datasets=dict(
        labels=dict(name="label_text", source=dict(small, view="image_label")),
        pairs=dict(name="unique_labels", source=dict(small, view="pairs"))))
    bundle = build_dataset(cfg, "train")
    batch = next(train_iterator(bundle, global_batch_size=32, seed=0))
    assert sorted(batch) == ["image", "label", "text", "text_mask"]
    tok = bundle.info["tokenizer"]
    prompts = shapes.class_prompts()
    raw = shapes.load("train", 64, 16, 2)
    captions = set(raw["caption"])
    labelled = batch["label"] >= 0
    assert labelled.sum() == 16 and (batch["label"][~labelled] == -1).all()  # round robin: half each
    words = lambda text: " ".join(tok.split(text))  # noqa: E731
    for ids, label in zip(batch["text"], batch["label"]):
        text = tok.decode(ids)
        if label >= 0:  # a prompt of its own class, as the zero-shot evaluator words it
            assert text in {words(p) for p in prompts[label]}, (text, label)
        else:
            assert text in {words(c) for c in captions}, text
    classed = build_dataset(dict(name="unique_labels", label_key="label", source=dict(small, view="pairs")), "train")
    assert int(classed.example()["label"]) == int(raw["label"][0])
    templates = build_dataset(dict(name="label_text", templates=["{a} {name} at the top"],
                                   source=dict(small, view="image_label")), "train")
    example = templates.example()
    assert tok.decode(example["text"]).endswith(shapes.CLASS_NAMES[example["label"]] + " at the top")


def test_momentum_config_errors_name_the_keys():
    from vlfm.train.momentum import build_momentum

    assert build_momentum(dict(decay=None, queue_size=0, queue_keys=(), tasks=())) is None
    with pytest.raises(KeyError, match="valid keys: decay, queue_size, queue_keys, tasks"):
        build_momentum(dict(decay=0.9, queue_len=8))
    with pytest.raises(ValueError, match="no decay"):
        build_momentum(dict(queue_size=8, queue_keys=["image_embed"]))
    with pytest.raises(ValueError, match="needs queue_keys"):
        build_momentum(dict(decay=0.9, queue_size=8))
    with pytest.raises(ValueError, match="multiple of task 'main'"):
        build_momentum(dict(decay=0.9, queue_size=12, queue_keys=["text_embed"])).check_batch_size("main", 8)
