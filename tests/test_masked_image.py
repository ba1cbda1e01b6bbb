"""Masked image modelling parts: MAE random masking and its restore order, BEiT-style mask tokens,
patchify, the MAE pixel loss and masked feature regression, checked on small hand-computed cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.losses import LOSSES
from vlfm.models.masked_image import (MaeDecoder, MaskedPredictionHead, keep_tokens, patchify, random_masking,
                                      replace_masked, restore)


def test_random_masking_keeps_the_lowest_noise_and_restores_the_order():
    rng = jax.random.key(3)
    ids_keep, mask, ids_restore = random_masking(rng, 10, 4, 0.6)
    noise = np.asarray(jax.random.uniform(rng, (4, 10)))  # the draw random_masking makes from this key
    assert ids_keep.shape == (4, 4) and mask.shape == (4, 10)
    for row in range(4):
        lowest = set(np.argsort(noise[row])[:4])
        assert set(np.asarray(ids_keep[row])) == lowest
        assert set(np.flatnonzero(~np.asarray(mask[row]))) == lowest  # mask True exactly on the dropped patches
    x = jnp.arange(4 * 10 * 2, dtype=jnp.float32).reshape(4, 10, 2)
    kept = keep_tokens(x, ids_keep)
    back = restore(kept, jnp.full((2,), -1.0), ids_restore)
    expected = np.where(np.asarray(mask)[..., None], -1.0, np.asarray(x))
    np.testing.assert_array_equal(np.asarray(back), expected)


def test_random_masking_ratio_bounds():
    _, mask, _ = random_masking(jax.random.key(0), 196, 2, 0.75)
    assert np.asarray(mask).sum(1).tolist() == [147, 147]  # int(196 * 0.25) = 49 kept
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(jax.random.key(0), 4, 1, 1.0)


def test_replace_masked_and_patchify():
    x = jnp.array([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    out = replace_masked(x, jnp.array([[False, True, False]]), jnp.array([9.0, 8.0]))
    np.testing.assert_array_equal(np.asarray(out), [[[1, 2], [9, 8], [5, 6]]])
    image = jnp.arange(4 * 4 * 1, dtype=jnp.float32).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(np.asarray(patchify(image, 2))[0],
                                  [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]])


def test_mae_pixel_loss_by_hand():
    target = jnp.array([[[1.0, 3.0], [2.0, 2.0]]])  # patch 0: mean 2, var 1; patch 1: constant
    pred = jnp.array([[[0.0, 0.0], [5.0, 5.0]]])
    mask = jnp.array([[True, False]])  # only patch 0 counts
    loss, metrics = LOSSES.get("mae_pixel")({"mae_pred": pred, "mae_target": target, "mae_mask": mask}, {})
    norm = 1.0 / np.sqrt(1.0 + 1e-6)  # (x - mean) / sqrt(var + eps) = -+norm
    np.testing.assert_allclose(float(loss), norm ** 2, rtol=1e-6)  # mean of (0 - (-norm))^2, (0 - norm)^2
    np.testing.assert_allclose(float(metrics["mean_baseline"]), norm ** 2, rtol=1e-6)
    raw, _ = LOSSES.get("mae_pixel")({"mae_pred": pred, "mae_target": target, "mae_mask": mask}, {}, norm_pix=False)
    np.testing.assert_allclose(float(raw), (1.0 + 9.0) / 2, rtol=1e-6)


def test_masked_feature_regression_by_hand():
    pred = jnp.array([[[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]])
    target = jnp.array([[[0.0, 1.0], [0.0, 1.0], [0.0, 0.0]]])
    mask = jnp.array([[True, True, False]])
    outputs = {"mfr_pred": pred, "mfr_target": target, "mfr_mask": mask}
    l2, _ = LOSSES.get("masked_feature_regression")(outputs, {})
    np.testing.assert_allclose(float(l2), ((1 + 1) / 2 + (0 + 1) / 2) / 2, rtol=1e-6)
    cos, _ = LOSSES.get("masked_feature_regression")(outputs, {}, distance="cosine")
    np.testing.assert_allclose(float(cos), ((1 - 0) + (1 - 1)) / 2, rtol=1e-6)
    grad = jax.grad(lambda t: LOSSES.get("masked_feature_regression")(dict(outputs, mfr_target=t), {})[0])(target)
    assert not np.asarray(grad).any()  # targets are constants


def test_heads_and_decoder_shapes_and_restore():
    head = MaskedPredictionHead(11)
    dec = MaeDecoder(grid=(2, 2), out_dim=12, width=16, depth=1, num_heads=2, mlp_dim=32, scan=False)
    _, mask, ids_restore = random_masking(jax.random.key(1), 4, 2, 0.5)
    tokens = jnp.ones((2, 1 + 2, 8))  # [CLS] + 2 kept patches

    @jax.jit
    def run():
        h = jnp.ones((2, 5, 8))
        head_params = head.init(jax.random.key(0), h)
        dec_params = dec.init(jax.random.key(0), tokens, ids_restore)
        return head_params, head.apply(head_params, h), dec.apply(dec_params, tokens, ids_restore)

    params, logits, out = run()
    assert logits.shape == (2, 5, 11)
    assert set(params["params"]) == {"transform", "ln", "decoder"}
    assert out.shape == (2, 4, 12)
    # All kept tokens are equal and all mask tokens are equal, so outputs differ only by position:
    # a kept and a dropped slot at the same position in two rows must differ (the restore order matters).
    m = np.asarray(mask)
    rows_differ = m[0] != m[1]
    if rows_differ.any():
        p = int(np.flatnonzero(rows_differ)[0])
        assert not np.allclose(np.asarray(out[0, p]), np.asarray(out[1, p]))
