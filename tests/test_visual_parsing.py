"""Visual Parsing: grouped masking masks near-identical tokens together (random masking splits them),
and the model's MFR pass regresses the backbone features of the masked tokens only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.evaluators import EVALUATORS, feature_regression
from vlfm.losses import LOSSES
from vlfm.models import build_model
from vlfm.models.grouped_masking import centred_cosine, grouped_mask, similarity_groups

RNGS = {"masking": jax.random.key(1), "sampling": jax.random.key(2), "dropout": jax.random.key(3)}


def _features() -> np.ndarray:
    """8 tokens in 4 pairs of near-identical features (pair p along direction p, a little noise each),
    and token 6 of a third near-identical copy (tokens 5, 6, 7 near-identical): pairs (0, 1), (2, 3),
    triple (5, 6, 7) and token 4 alone."""
    rng = np.random.default_rng(0)
    base = np.eye(8)[:4] * 3.0
    which = [0, 0, 1, 1, 2, 3, 3, 3]
    return (base[which] + 0.01 * rng.normal(size=(8, 8)))[None].astype(np.float32)


@jax.jit
def _masks(features, top_k_groups, keys):
    del features
    return jax.vmap(lambda k: grouped_mask(k, top_k_groups, 0.5)[0])(keys)


def test_grouped_masking_masks_near_identical_tokens_together():
    feats = jnp.asarray(_features())
    sim = centred_cosine(feats)
    keys = jax.random.split(jax.random.key(0), 200)
    grouped = np.asarray(_masks(feats, similarity_groups(sim, top_k=1, threshold=0.9), keys))
    together = [(0, 1), (2, 3), (5, 6), (6, 7)]
    assert all((grouped[:, a] == grouped[:, b]).all() for a, b in together)
    assert (grouped.sum(1) <= 4).all() and (grouped.sum(1) >= 1).all()
    assert grouped.any(0).all()  # every token gets masked in some draw
    # the same loop with single-token groups is random masking: exactly the budget, pairs split
    plain = np.asarray(_masks(feats, similarity_groups(sim, top_k=0), keys))
    assert (plain.sum(1) == 4).all()
    assert any((plain[:, a] != plain[:, b]).any() for a, b in together)
    # top_k=1 without the threshold cuts the triple (5, 6, 7) apart: its groups are pairs
    pairs = similarity_groups(sim, top_k=1)
    assert int(np.asarray(pairs)[0, 5].sum()) == 2


def _model(**overrides):
    cfg = dict(name="visual_parsing", image=dict(name="vit", image_size=16, patch_size=4, width=16, depth=1,
                                                 num_heads=2, mlp_dim=32, scan=False),
               vocab_size=20, max_text_len=6, width=16, depth=2, num_heads=2, mlp_dim=32, norm="pre",
               init_std=None, scan=False, mlm=True, itm="random", mfr=True, mfr_ratio=0.25, mfr_top_k=1,
               mfr_threshold=0.9)
    return build_model(dict(cfg, **overrides))


def test_mfr_pass_regresses_features_of_masked_tokens_only():
    model = _model(mlm=False, itm="none")  # the MFR pass alone
    rng = np.random.default_rng(0)
    text = rng.integers(5, 20, (3, 6)).astype(np.int32)
    batch = dict(image=jnp.asarray(rng.normal(size=(3, 16, 16, 3)), jnp.float32), text=text,
                 text_mask=np.arange(6)[None] < np.array([[6], [4], [5]]), mlm_text=text)
    # one compile: initialise and run the training forward together
    out, _ = jax.jit(lambda: model.init_with_output(dict(RNGS, params=jax.random.key(0)), batch, train=True))()
    mask = np.asarray(out["mfr_mask"])
    assert mask.shape == (3, 16) and ((mask.sum(1) >= 1) & (mask.sum(1) <= 4)).all()
    assert out["mfr_pred"].shape == out["mfr_target"].shape == (3, 16, 16)
    # the loss averages the masked positions only
    value, metrics = LOSSES.get("masked_feature_regression")(out, batch)
    per = np.mean(np.square(np.asarray(out["mfr_pred"]) - np.asarray(out["mfr_target"])), -1)
    np.testing.assert_allclose(float(value), per[mask].mean(), rtol=1e-5)
    # copying the most similar visible token: never a masked one
    copy = np.asarray(out["mfr_copy"])
    target = np.asarray(out["mfr_target"])
    for b, i in zip(*np.nonzero(mask)):
        source = np.flatnonzero(np.all(np.isclose(target[b], copy[b, i]), axis=-1))
        assert len(source) and not mask[b, source].all()
    assert float(metrics["copy_baseline"]) > 0 and float(metrics["mean_baseline"]) > 0


def test_mfr_evaluator_streams_the_errors_and_baselines(monkeypatch):
    """Over 5 examples in padded batches of 2, the streamed sums equal the whole split's errors at once."""
    rng = np.random.default_rng(1)
    target, pred, copy = (rng.normal(size=(5, 4, 3)) for _ in range(3))
    mask = rng.random((5, 4)) < 0.5
    mask[:, 0] = True

    def mfr(params, batch):  # row i of the split is the example whose first text token is i
        i = batch["text"][:, 0]
        return {"mfr_pred": pred[i], "mfr_target": target[i], "mfr_mask": mask[i], "mfr_copy": copy[i]}

    rows = [(i, {"image": np.zeros((2, 2, 3)), "text": np.array([i, 0]), "text_mask": np.ones(2, bool)})
            for i in range(5)]
    monkeypatch.setattr(feature_regression, "eval_examples", lambda bundle, n: iter(rows))
    data = dict(name="shapes_vl", num_examples=64, image_size=16, max_objects=1, max_len=8)
    got = dict(EVALUATORS.get("masked_feature_regression")({"mfr": mfr}, data=data, num_examples=5,
                                                           batch_size=2).run(None))
    err = lambda p: np.mean(np.square(p - target), -1)[mask].mean()  # noqa: E731
    assert got["loss"] == pytest.approx(err(pred)) and got["copy_baseline"] == pytest.approx(err(copy))
    assert got["mean_baseline"] == pytest.approx(err(target[mask].mean(0)))
    visible = np.stack([target[b][~mask[b]].mean(0) if (~mask[b]).any() else np.zeros(3) for b in range(5)])
    assert got["visible_mean_baseline"] == pytest.approx(err(visible[:, None]))
    assert got["masked_fraction"] == pytest.approx(mask.mean())
