"""Frozen-feature transfer: a linear probe (CLIP's protocol) and few-shot ridge regression (big_vision's).

Both read features of a frozen model through a predict function (``encode_image`` by default) on a
training split and a test split, then fit a linear classifier on the host (features of every host are
gathered, so all hosts fit the same classifier).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vlfm.data.pipeline import build_dataset, eval_examples
from vlfm.evaluators.predict import predict_split
from vlfm.evaluators.registry import EVALUATORS

# big_vision's constant bias feature: large, so the bias is almost unregularised.
BIAS_FEATURE = 100.0


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _objective(flat: jax.Array, x: jax.Array, y: jax.Array, l2: jax.Array, num_classes: int):
    """``sum_i CE(x_i W + b, y_i) + l2 / 2 |W|^2`` and its gradient, for parameters flattened as [W; b]."""
    dim = x.shape[1]

    def value(flat):
        w = flat[: dim * num_classes].reshape(dim, num_classes)
        b = flat[dim * num_classes:]
        logits = x @ w + b
        ce = -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
        return ce + 0.5 * l2 * jnp.sum(w ** 2)

    return jax.value_and_grad(value)(flat)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, *, num_classes: int, max_iter: int = 1000,
                 tol: float = 1e-4) -> dict[str, np.ndarray]:
    """Multinomial logistic regression: minimises ``sum_i CE(x_i W + b, y_i) + l2 / 2 |W|^2`` (the bias is
    not penalised) with scipy's L-BFGS-B, as scikit-learn's ``LogisticRegression(C=1 / l2)`` that CLIP's
    linear probes used (at most ``max_iter`` iterations; ``tol`` on the projected gradient). The
    objective and gradient run jitted (float32); one compile per feature shape, whatever ``l2``."""
    from scipy.optimize import minimize  # scipy comes with jax

    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    dim = x.shape[1]

    def fun(flat: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = _objective(jnp.asarray(flat, jnp.float32), x, y, jnp.float32(l2), num_classes)
        return float(value), np.asarray(grad, np.float64)

    start = np.zeros(dim * num_classes + num_classes)
    result = minimize(fun, start, jac=True, method="L-BFGS-B", options=dict(maxiter=max_iter, gtol=tol))
    return {"w": result.x[: dim * num_classes].reshape(dim, num_classes).astype(np.float32),
            "b": result.x[dim * num_classes:].astype(np.float32)}


def linear_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                 test: tuple[np.ndarray, np.ndarray], num_classes: int, l2_grid: Sequence[float],
                 max_iter: int = 1000) -> dict[str, float]:
    """Fits ``fit_logistic`` on ``train`` for every L2 strength of ``l2_grid``, keeps the one with the best
    ``val`` accuracy (the strongest regularisation among ties) and reports its ``test`` accuracy."""
    best = None
    for l2 in sorted(float(v) for v in l2_grid)[::-1]:  # strongest first: ties keep it
        params = fit_logistic(train[0], train[1], l2, num_classes=num_classes, max_iter=max_iter)
        val_acc = _accuracy(params, *val)
        if best is None or val_acc > best[0]:
            best = (val_acc, l2, params)
    val_acc, l2, params = best
    return {"accuracy": _accuracy(params, *test), "val_accuracy": val_acc, "l2": l2}


def _accuracy(params: Mapping[str, jax.Array], x: np.ndarray, y: np.ndarray) -> float:
    logits = np.asarray(x, np.float32) @ np.asarray(params["w"]) + np.asarray(params["b"])
    return float(np.mean(np.argmax(logits, -1) == y))


def ridge_fewshot_accuracy(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                           num_classes: int, l2: float) -> float:
    """big_vision's few-shot classifier: features whitened with the training shots' mean and std (+1e-5),
    a constant feature ``BIAS_FEATURE`` appended for the bias, targets one-hot in {-1, 1}, and the
    closed-form ridge regression ``W = (X^T X + l2 I)^-1 X^T Y`` (or ``X^T (X X^T + l2 I)^-1 Y`` when there
    are fewer shots than dimensions); the test accuracy of ``argmax(x_test W)``."""
    x = np.asarray(x, np.float64)
    mean, std = x.mean(0, keepdims=True), x.std(0, keepdims=True) + 1e-5

    def design(v):
        v = (np.asarray(v, np.float64) - mean) / std
        return np.concatenate([v, np.full((len(v), 1), BIAS_FEATURE)], axis=1)

    a = design(x)
    targets = 2.0 * np.eye(num_classes)[y] - 1.0
    n, d = a.shape
    if n >= d:
        w = np.linalg.solve(a.T @ a + l2 * np.eye(d), a.T @ targets)
    else:
        w = a.T @ np.linalg.solve(a @ a.T + l2 * np.eye(n), targets)
    return float(np.mean(np.argmax(design(x_test) @ w, -1) == y_test))


def fewshot_indices(labels: np.ndarray, num_classes: int, shots: int, seed: int) -> np.ndarray:
    """big_vision's draw: each class's examples in a random order (``default_rng(seed)``), the first
    ``shots`` of each (fewer where a class has fewer)."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    return np.concatenate([idx[:shots] for idx in per_class])


class _Features:
    """Shared set-up: reading a predict function's features and labels of a split."""

    def __init__(self, predict_fns: Mapping[str, Callable], data: Mapping[str, Any], feature: str,
                 inputs: Sequence[str], view: str | None):
        if feature not in predict_fns:
            raise ValueError(f"unknown feature {feature!r}: the model offers {', '.join(predict_fns)}")
        self.feature_fn, self.inputs = predict_fns[feature], tuple(inputs)
        self.data = dict(data) if view is None else dict(data, view=view)

    def bundle(self, split: str):
        return build_dataset(self.data, split)

    def read(self, params: Any, bundle, num_examples: int | None, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        out = predict_split({"z": lambda p, b: self.feature_fn(p, {k: b[k] for k in self.inputs}),
                             "label": lambda p, b: b["label"]}, params,
                            eval_examples(bundle, num_examples), batch_size)
        z = np.asarray(out["z"], np.float32)
        return z.reshape(len(z), -1), np.asarray(out["label"])


def _num_classes(bundle, labels: np.ndarray) -> int:
    return int(bundle.info.get("num_classes") or labels.max() + 1)


@EVALUATORS.register("linear_probe")
class LinearProbeEvaluator:
    """Linear probe on frozen features (CLIP, Radford et al. 2021, appendix A.3): multinomial logistic
    regression (``fit_logistic``: L-BFGS-B, at most ``max_iter`` iterations, the sum of cross-entropies plus
    ``l2 / 2 |W|^2``) on the features of ``num_train`` examples of ``train_split``; the L2 strength is
    chosen from ``l2_grid`` (default 10^-6 .. 10^6, one per decade; CLIP swept the same range) by accuracy
    on ``val_split`` or, without one, on a held-out ``val_fraction`` of the training examples (seeded);
    the chosen model (fitted on the training part only) is scored on ``num_test`` examples of
    ``test_split``.

    ``feature``: the predict function giving the representation (``encode_image``; any other the model
    offers), fed the batch keys ``inputs``. ``view``: the data view (shapes ``image_label``; None for
    datasets without views). Metrics: ``accuracy`` (test top-1), ``val_accuracy``, ``log10_l2`` (the
    chosen strength), ``chance``.
    """

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], train_split: str = "train",
                 test_split: str = "validation", val_split: str | None = None, val_fraction: float = 0.2,
                 num_train: int | None = None, num_test: int | None = None, num_val: int | None = None,
                 l2_grid: Sequence[float] = tuple(10.0 ** np.arange(-6, 7)), max_iter: int = 1000,
                 feature: str = "encode_image", inputs: Sequence[str] = ("image",), view: str | None = "image_label",
                 batch_size: int = 256, seed: int = 0):
        if val_split is None and not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if not len(l2_grid):
            raise ValueError("l2_grid needs at least one value")
        self.features = _Features(predict_fns, data, feature, inputs, view)
        self.splits = {"train": (self.features.bundle(train_split), num_train),
                       "test": (self.features.bundle(test_split), num_test)}
        if val_split is not None:
            self.splits["val"] = (self.features.bundle(val_split), num_val)
        self.val_fraction, self.l2_grid, self.max_iter = val_fraction, tuple(l2_grid), max_iter
        self.batch_size, self.seed = batch_size, seed

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        read = {name: self.features.read(params, bundle, n, self.batch_size)
                for name, (bundle, n) in self.splits.items()}
        train = read["train"]
        if "val" in read:
            val = read["val"]
        else:
            order = np.random.default_rng(self.seed).permutation(len(train[1]))
            n_val = max(1, int(round(self.val_fraction * len(order))))
            val = (train[0][order[:n_val]], train[1][order[:n_val]])
            train = (train[0][order[n_val:]], train[1][order[n_val:]])
        num_classes = _num_classes(self.splits["train"][0], read["train"][1])
        result = linear_probe(train, val, read["test"], num_classes, self.l2_grid, self.max_iter)
        yield "accuracy", result["accuracy"]
        yield "val_accuracy", result["val_accuracy"]
        yield "log10_l2", float(np.log10(result["l2"]))
        yield "chance", 1.0 / num_classes


@EVALUATORS.register("fewshot")
class FewShotEvaluator:
    """Few-shot linear classification on frozen features, as big_vision's ``fewshot_lsr`` evaluator:
    for each of ``shots`` (1, 5, 10, 25 per class) and each of ``num_seeds`` draws (``fewshot_indices``)
    from the features of ``num_train`` examples of ``train_split``, a closed-form ridge regression
    (``ridge_fewshot_accuracy``, ``l2`` = 2^10 as big_vision's configs) scored on ``num_test`` examples of
    ``test_split``.

    Metrics: ``{k}shot`` (test accuracy, mean over the seeds) and ``{k}shot_seed{s}`` per draw, ``chance``.
    ``feature``, ``inputs``, ``view`` as for ``linear_probe``.
    """

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], train_split: str = "train",
                 test_split: str = "validation", num_train: int | None = None, num_test: int | None = None,
                 shots: Sequence[int] = (1, 5, 10, 25), l2: float = 2.0 ** 10, num_seeds: int = 3,
                 feature: str = "encode_image", inputs: Sequence[str] = ("image",), view: str | None = "image_label",
                 batch_size: int = 256):
        if not shots or min(shots) < 1:
            raise ValueError(f"shots must be positive counts per class, got {shots}")
        self.features = _Features(predict_fns, data, feature, inputs, view)
        self.train = (self.features.bundle(train_split), num_train)
        self.test = (self.features.bundle(test_split), num_test)
        self.shots, self.l2, self.num_seeds, self.batch_size = tuple(shots), float(l2), num_seeds, batch_size

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        x, y = self.features.read(params, *self.train, self.batch_size)
        x_test, y_test = self.features.read(params, *self.test, self.batch_size)
        num_classes = _num_classes(self.train[0], y)
        for shots in self.shots:
            accs = []
            for seed in range(self.num_seeds):
                idx = fewshot_indices(y, num_classes, shots, seed)
                accs.append(ridge_fewshot_accuracy(x[idx], y[idx], x_test, y_test, num_classes, self.l2))
                yield f"{shots}shot_seed{seed}", accs[-1]
            yield f"{shots}shot", float(np.mean(accs))
        yield "chance", 1.0 / num_classes
