"""Linear probe (logistic regression by L-BFGS, L2 strength chosen on a validation split) and big_vision-style
few-shot ridge regression, on synthetic features with known answers."""

import numpy as np
import pytest

from vlfm.data.pipeline import build_dataset, eval_arrays
from vlfm.evaluators import EVALUATORS
from vlfm.evaluators.probe import (fewshot_indices, fit_logistic, linear_probe, ridge_fewshot_accuracy)


def _blobs(rng, per_class, num_classes=3, dim=4, spread=0.3):
    centres = 3.0 * np.eye(num_classes, dim)
    y = np.repeat(np.arange(num_classes), per_class)
    return (centres[y] + spread * rng.normal(size=(len(y), dim))).astype(np.float32), y


def test_logistic_fit_is_the_regularised_optimum():
    """At the returned weights the gradient of sum CE + l2/2 |W|^2 (written here in numpy) vanishes."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=30)
    params = fit_logistic(x, y, 2.0, num_classes=3, tol=1e-6)
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    residual = p - np.eye(3)[y]
    start = np.abs(x.T @ (1 / 3 - np.eye(3)[y])).max()  # the gradient at W = 0, b = 0
    assert start > 1.0
    np.testing.assert_allclose(x.T @ residual + 2.0 * w, 0, atol=1e-3 * start)
    np.testing.assert_allclose(residual.sum(0), 0, atol=1e-3 * start)  # the bias is not penalised


def test_linear_probe_separable_and_l2_chosen_on_validation():
    rng = np.random.default_rng(1)
    train, val, test = _blobs(rng, 10), _blobs(rng, 4), _blobs(rng, 6)
    result = linear_probe(train, val, test, num_classes=3, l2_grid=[1e-2, 1.0, 1e2])
    assert result["accuracy"] == 1.0 and result["val_accuracy"] == 1.0
    assert result["l2"] == 1e2  # every strength separates these blobs: ties keep the strongest

    # One feature; training: 8 of class 0 at +1, 4 of class 1 at -1. The validation split puts class 0 at
    # -1, where a weakly regularised model says class 1: only a strength that flattens W (leaving the
    # bias, which favours the majority class 0) is right on it, so the sweep must pick 1e6.
    x_train = np.array([[1.0]] * 8 + [[-1.0]] * 4, np.float32)
    y_train = np.array([0] * 8 + [1] * 4)
    val = (np.array([[-1.0]] * 3, np.float32), np.array([0, 0, 0]))
    test = (np.array([[1.0], [-1.0]], np.float32), np.array([0, 1]))
    result = linear_probe((x_train, y_train), val, test, num_classes=2, l2_grid=[1e-3, 1e6])
    assert result["l2"] == 1e6 and result["val_accuracy"] == 1.0
    assert result["accuracy"] == 0.5  # everything predicted class 0


def test_ridge_fewshot_is_the_closed_form_ridge_solution():
    """The weights equal an independent least-squares solve of [A; sqrt(l2) I] W = [Y; 0] on the whitened
    features with the constant 100 bias column, in both the shots >= dims and shots < dims forms."""
    rng = np.random.default_rng(2)
    for n, d in ((12, 3), (4, 9)):
        x, y = rng.normal(size=(n, d)), rng.integers(0, 3, size=n)
        x_test, y_test = rng.normal(size=(50, d)), rng.integers(0, 3, size=50)
        l2 = 0.7
        mean, std = x.mean(0), x.std(0) + 1e-5
        a = np.c_[(x - mean) / std, np.full(n, 100.0)]
        targets = 2 * np.eye(3)[y] - 1
        w = np.linalg.lstsq(np.r_[a, np.sqrt(l2) * np.eye(d + 1)], np.r_[targets, np.zeros((d + 1, 3))],
                            rcond=None)[0]
        want = np.mean(np.argmax(np.c_[(x_test - mean) / std, np.full(50, 100.0)] @ w, 1) == y_test)
        assert ridge_fewshot_accuracy(x, y, x_test, y_test, 3, l2) == pytest.approx(want)
    x, y = _blobs(rng, 5)
    x_test, y_test = _blobs(rng, 20)
    assert ridge_fewshot_accuracy(x, y, x_test, y_test, 3, 2.0 ** 10) == 1.0


def test_fewshot_draws_per_class():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    idx = fewshot_indices(labels, 3, shots=5, seed=0)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 5] and len(set(idx)) == len(idx)
    assert not np.array_equal(np.sort(idx), np.sort(fewshot_indices(labels, 3, shots=5, seed=1)))
    np.testing.assert_array_equal(idx, fewshot_indices(labels, 3, shots=5, seed=0))


def test_evaluators_on_builtin_data():
    """Both evaluators read the frozen features of the built-in splits and report what the functions above
    give on the same features."""
    data = dict(name="shapes", num_examples=60, image_size=8)
    w = np.random.default_rng(3).normal(size=(8 * 8 * 3, 6)).astype(np.float32)
    encode_image = lambda p, b: b["image"].reshape(len(b["image"]), -1) @ w  # noqa: E731
    fns = {"encode_image": encode_image}

    def features(split, n):
        arrays = eval_arrays(build_dataset(dict(data, view="image_label"), split), n)
        return encode_image(None, arrays), arrays["label"]

    (x, y), (x_test, y_test) = features("train", 60), features("validation", 30)
    probe = dict(EVALUATORS.get("linear_probe")(fns, data=data, num_test=30, l2_grid=[1.0, 1e2], batch_size=32,
                                                max_iter=30).run(None))
    order = np.random.default_rng(0).permutation(60)
    val, train = order[:12], order[12:]
    want = linear_probe((x[train], y[train]), (x[val], y[val]), (x_test, y_test), 56, [1.0, 1e2], max_iter=30)
    assert probe["accuracy"] == pytest.approx(want["accuracy"]) and probe["chance"] == pytest.approx(1 / 56)
    assert probe["log10_l2"] == pytest.approx(np.log10(want["l2"]))

    few = dict(EVALUATORS.get("fewshot")(fns, data=data, num_test=30, shots=(1, 5), num_seeds=2,
                                         batch_size=32).run(None))
    for shots in (1, 5):
        accs = [ridge_fewshot_accuracy(x[i], y[i], x_test, y_test, 56, 2.0 ** 10)
                for i in (fewshot_indices(y, 56, shots, s) for s in range(2))]
        assert few[f"{shots}shot"] == pytest.approx(np.mean(accs))
        assert few[f"{shots}shot_seed1"] == pytest.approx(accs[1])
    with pytest.raises(ValueError, match="unknown feature 'pooled'"):
        EVALUATORS.get("fewshot")(fns, data=data, feature="pooled")


def test_image_classifier_offers_its_pre_logit_features_to_the_probes():
    """An image classifier's ``encode_image`` is its head's input (the pooled vector), not its logits, and
    the few-shot evaluator reads it by default."""
    import jax

    from vlfm.models import build_model

    cfg = dict(name="image_classifier", image=dict(name="vit", image_size=8, patch_size=4, width=16, depth=1,
                                                   num_heads=2, mlp_dim=32, num_classes=56))
    model = build_model(cfg)
    data = dict(name="shapes", num_examples=60, image_size=8)
    batch = eval_arrays(build_dataset(dict(data, view="image_label"), "validation"), 4)
    import flax.linen as nn

    params = nn.meta.unbox(model.init(jax.random.key(0), {"image": batch["image"]})["params"])
    head = params["image_tower"]["head"]  # zero at init: random, so that logits and features differ
    head["kernel"] = np.random.default_rng(0).normal(size=head["kernel"].shape).astype(np.float32)
    out = model.apply({"params": params}, {"image": batch["image"]})
    fns = {name: jax.jit(lambda p, b, fn=fn: model.apply({"params": p}, b, method=lambda m, b: fn(m, b)))
           for name, fn in type(model).PREDICT.items()}
    features = fns["encode_image"](params, {"image": batch["image"]})
    assert features.shape == (4, 16) and out["logits"].shape == (4, 56)
    np.testing.assert_allclose(features, out["pooled"], rtol=1e-6)
    np.testing.assert_allclose(features @ head["kernel"] + head["bias"], out["logits"], rtol=1e-4, atol=1e-5)
    few = dict(EVALUATORS.get("fewshot")(fns, data=data, num_test=30, shots=(1,), num_seeds=1,
                                         batch_size=32).run(params))
    assert 0.0 <= few["1shot"] <= 1.0
