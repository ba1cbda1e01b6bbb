"""Uni-Perceiver: every task as retrieval against a target set, the loss on a hand-worked case, the base
size, and prompt tuning moving only the prompts."""

import importlib.util
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlfm.losses import LOSSES
from vlfm.models import build_model
from vlfm.models.uniperceiver import FAMILIES, UniPerceiver
from vlfm.optim.freezing import freeze
from vlfm.train.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = dict(class_text=((1, 5, 6, 2), (1, 7, 2, 0), (1, 8, 9, 2)), class_mask=((1, 1, 1, 1), (1, 1, 1, 0), (1, 1, 1, 1)))


def _tiny(**kwargs) -> UniPerceiver:
    return UniPerceiver(**dict(dict(width=16, depth=1, num_heads=2, mlp_dim=32, image_size=8, patch_size=4,
                                    vocab_size=12, max_len=6, embed_dim=8, scan=False, remat="none"), **kwargs))


def _config_module(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _batch() -> dict:
    rng = np.random.default_rng(0)
    text = np.array([[1, 3, 4, 5, 2, 0], [1, 6, 7, 2, 0, 0]], np.int32)
    return dict(image=jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32), text=jnp.asarray(text),
                text_mask=jnp.asarray(text > 0), mlm_targets=jnp.asarray(np.where(text == 4, 4, -1), jnp.int32),
                label=jnp.array([2, 0], jnp.int32))


def test_every_task_scores_its_inputs_against_its_target_set():
    model, batch = _tiny(), _batch()
    params = nn.meta.unbox(jax.jit(lambda k: model.init(k, batch, method="mlm"))(jax.random.key(0)))["params"]
    assert {f"logit_scale_{f}" for f in FAMILIES} <= set(params)
    methods = (("classify", CLASSES), ("mlm", {}), ("caption", {}), ("retrieve", {}))

    @jax.jit
    def run(p, b):  # one compile for every method
        outs = {m: model.apply({"params": p}, b, method=m, **kw) for m, kw in methods}
        return outs, {m: LOSSES.get("similarity_xent")(o, b) for m, o in outs.items() if "query" in o}

    outs, losses = run(params, batch)
    shapes = {m: {k: tuple(v.shape) for k, v in out.items()} for m, out in outs.items()}
    assert shapes["classify"] == dict(query=(2, 8), candidates=(3, 8), logit_scale=(), targets=(2,))
    assert shapes["mlm"] == dict(query=(2, 6, 8), candidates=(12, 8), logit_scale=(), targets=(2, 6))
    assert shapes["caption"] == dict(query=(2, 5, 8), candidates=(12, 8), logit_scale=(), targets=(2, 5))
    assert shapes["retrieve"] == dict(image_embed=(2, 8), text_embed=(2, 8), logit_scale=())
    for out in outs.values():
        for key in ("query", "candidates", "image_embed", "text_embed"):
            if key in out:  # normalised features
                np.testing.assert_allclose(np.linalg.norm(out[key], axis=-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(out["logit_scale"], 1 / 0.07, rtol=1e-5)
    for loss, metrics in losses.values():
        assert np.isfinite(loss) and float(metrics["num_targets"]) > 0
    np.testing.assert_array_equal(outs["classify"]["targets"], [2, 0])
    # captioning: word t retrieves word t + 1 (padding: nothing), and sees no later word
    np.testing.assert_array_equal(outs["caption"]["targets"], [[3, 4, 5, 2, -1], [6, 7, 2, -1, -1]])
    changed, _ = run(params, dict(batch, text=batch["text"].at[0, 3].set(9)))
    np.testing.assert_allclose(changed["caption"]["query"][0, :3], outs["caption"]["query"][0, :3], atol=1e-6)
    assert not np.allclose(changed["caption"]["query"][0, 3], outs["caption"]["query"][0, 3], atol=1e-4)


def test_similarity_xent_on_a_hand_worked_case():
    """Two queries (one ignored) against three unit candidates, scale 2: worked out by hand."""
    s = 1 / math.sqrt(2)
    outputs = dict(query=jnp.array([[1.0, 0.0], [0.0, 1.0], [s, s]]),
                   candidates=jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]),
                   logit_scale=jnp.float32(2.0), targets=jnp.array([0, -1, 1]))
    # query 0: logits (2, 0, -2), target 0; query 2: logits (2s, 2s, -2s), target 1
    l0 = -2 + math.log(math.exp(2) + 1 + math.exp(-2))
    l2 = -2 * s + math.log(2 * math.exp(2 * s) + math.exp(-2 * s))
    loss, metrics = LOSSES.get("similarity_xent")(outputs, {})
    np.testing.assert_allclose(loss, (l0 + l2) / 2, rtol=1e-6)
    assert float(metrics["num_targets"]) == 2 and float(metrics["accuracy"]) == 0.5  # query 2's tie goes to candidate 0
    smoothed, _ = LOSSES.get("similarity_xent")(outputs, {}, label_smoothing=0.3)
    # smoothed target of query 0: (0.8, 0.1, 0.1); its cross-entropy against log-softmax (2, 0, -2)
    z = math.log(math.exp(2) + 1 + math.exp(-2))
    q0 = -(0.8 * (2 - z) + 0.1 * (0 - z) + 0.1 * (-2 - z))
    q2 = -(0.1 * (2 * s - (l2 + 2 * s)) + 0.8 * (2 * s - (l2 + 2 * s)) + 0.1 * (-2 * s - (l2 + 2 * s)))
    np.testing.assert_allclose(smoothed, (q0 + q2) / 2, rtol=1e-5)


def test_base_has_the_stated_parameter_count():
    module = _config_module("uniperceiver_base")
    stated = int(module.__doc__.split(" parameters")[0].split()[-1].replace(",", ""))  # the docstring's count
    config = load_config(os.path.join(REPO, "configs", "uniperceiver_base.py"))
    model = build_model(config.model)
    batch = {"image": jnp.zeros((1, 160, 160, 3)), "text": jnp.zeros((1, 16), jnp.int32)}
    shapes = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), batch))["params"])
    assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(shapes)) == stated == 124_676_356
    assert config.model.depth == 12 and config.model.width == 768 and config.model.layer_scale == 1e-3


def test_prompt_tuning_moves_only_the_prompts():
    config = _config_module("uniperceiver_tiny").get_config("prompt")
    patterns = tuple(config.tasks.size.freeze)
    model, batch = _tiny(num_prompts=2), _batch()
    init = jax.jit(lambda k: model.init(k, batch, method="classify", **CLASSES))
    params = nn.meta.unbox(init(jax.random.key(0)))["params"]
    tx = optax.chain(optax.adamw(1e-2, weight_decay=0.1), freeze(patterns))

    def loss_fn(p):
        return LOSSES.get("similarity_xent")(model.apply({"params": p}, batch, method="classify", **CLASSES), batch)[0]

    grads = jax.jit(jax.grad(loss_fn))(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    moved = {"/".join(str(getattr(k, "key", k)) for k in path)
             for path, (a, b) in jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda *x: x, params, new),
                                                                      is_leaf=lambda x: isinstance(x, tuple))[0]
             if not np.array_equal(a, b)}
    assert moved == {"prompts"}
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads["encoder"]))  # frozen, not gradient-free


def test_zero_shot_evaluator_reads_another_label_key():
    """``clip_zeroshot(label_key="size")`` scores the pairs view by size against the size names: equal to the
    rule computed here (random linear encoders)."""
    from vlfm.data.pipeline import build_dataset, eval_arrays
    from vlfm.data.shapes import SIZES
    from vlfm.evaluators import EVALUATORS

    data = dict(name="shapes", num_examples=40, image_size=8, max_objects=1, max_len=8)
    bundle = build_dataset(dict(data, view="pairs"), "validation")
    tokenizer = bundle.info["tokenizer"]
    rng = np.random.default_rng(0)
    words, w = rng.normal(size=(tokenizer.vocab_size, 4)), rng.normal(size=(8 * 8 * 3, 4))
    fns = {"encode_text": lambda p, b: (words[b["text"]] * b["text_mask"][..., None]).sum(1),
           "encode_image": lambda p, b: np.asarray(b["image"]).reshape(len(b["image"]), -1) @ w}
    got = dict(EVALUATORS.get("clip_zeroshot")(fns, data=data, view="pairs", label_key="size",
                                               class_names=list(SIZES), templates=["{}"]).run(None))
    arrays = eval_arrays(bundle, 40)
    tokens = tokenizer.encode_batch(list(SIZES), 8)
    names = fns["encode_text"](None, {"text": tokens["ids"], "text_mask": tokens["mask"]})
    predicted = np.argmax(fns["encode_image"](None, arrays) @ (names / np.linalg.norm(names, axis=1, keepdims=True)).T, 1)
    assert got["accuracy"] == np.mean(predicted == arrays["size"]) and got["num_classes"] == 2
    assert not np.array_equal(arrays["size"], arrays["label"] % 2)  # a key other than the label
