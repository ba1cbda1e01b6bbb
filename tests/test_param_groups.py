"""Per-group learning-rate multipliers: exact scaling by path regex, first match wins, and the
``optimizer.lr_multipliers`` config key of build_optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlfm.optim import build_optimizer
from vlfm.optim.param_groups import lr_multipliers, multiplier_for

PARAMS = {"image_tower": {"encoder": {"w": jnp.ones((2, 3))}},
          "fusion_layers": {"text_layer_0": {"attn": {"kernel": jnp.ones((3,))}}},
          "itm_head": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones((2,))},
          "vqa_head": {"fc1": {"kernel": jnp.ones((2,))}}}
PATTERNS = (("fusion_layers/.*", 5.0), ("vqa_head/.*", 50.0), (".*_head/.*", 5.0))


def test_multipliers_scale_updates_by_path():
    tx = lr_multipliers(PATTERNS)
    grads = jax.tree.map(lambda x: 0.1 * x, PARAMS)
    updates, state = tx.update(grads, tx.init(PARAMS), PARAMS)
    assert isinstance(state, optax.EmptyState)
    np.testing.assert_allclose(updates["image_tower"]["encoder"]["w"], 0.1)  # unmatched: unchanged
    np.testing.assert_allclose(updates["fusion_layers"]["text_layer_0"]["attn"]["kernel"], 0.5)
    np.testing.assert_allclose(updates["itm_head"]["bias"], 0.5)
    np.testing.assert_allclose(updates["vqa_head"]["fc1"]["kernel"], 5.0)  # the first match wins (x50, not x5)


def test_first_matching_pattern_and_mapping_form():
    assert multiplier_for("vqa_head/fc1/kernel", PATTERNS) == 50.0
    assert multiplier_for("vqa_head/fc1/kernel", dict(PATTERNS[::-1])) == 5.0
    assert multiplier_for("text_tower/encoder/layers/attn/query/kernel", PATTERNS) == 1.0
    assert multiplier_for("xfusion_layers/a", PATTERNS) == 1.0  # full matches only


def test_build_optimizer_applies_multipliers_to_the_learning_rate():
    """With SGD (no momentum, no decay) an update is exactly -lr * multiplier * grad."""
    cfg = dict(name="sgd", lr=dict(name="constant", peak=0.1), momentum=0.0, lr_multipliers=PATTERNS)
    tx, _ = build_optimizer(cfg, total_steps=10)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates["image_tower"]["encoder"]["w"], -0.1, rtol=1e-6)
    np.testing.assert_allclose(updates["itm_head"]["kernel"], -0.5, rtol=1e-6)
    np.testing.assert_allclose(updates["vqa_head"]["fc1"]["kernel"], -5.0, rtol=1e-6)
    plain, _ = build_optimizer(dict(cfg, lr_multipliers=()), total_steps=10)
    same, _ = plain.update(grads, plain.init(PARAMS), PARAMS)
    np.testing.assert_allclose(same["itm_head"]["kernel"], -0.1, rtol=1e-6)


def test_adamw_group_learning_rate_is_multiplied():
    """AdamW's normalised step has magnitude ~lr on the first update; a x5 group moves 5x as far."""
    cfg = dict(name="adamw", lr=dict(name="constant", peak=1e-3), weight_decay=0.0, lr_multipliers=PATTERNS)
    tx, _ = build_optimizer(cfg, total_steps=10)
    grads = jax.tree.map(lambda x: 0.3 * x, PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates["image_tower"]["encoder"]["w"], -1e-3, rtol=1e-4)
    np.testing.assert_allclose(updates["fusion_layers"]["text_layer_0"]["attn"]["kernel"], -5e-3, rtol=1e-4)


def test_unknown_optimizer_key_still_fails():
    with pytest.raises(KeyError, match="lr_multipliers"):
        build_optimizer(dict(name="sgd", lr=dict(name="constant", peak=0.1), lr_multiplier=2.0), total_steps=10)
