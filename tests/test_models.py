import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.models import build_model
from vlfm.train.config import load_config


def _param_count(cfg, batch):
    model = build_model(cfg)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))["params"]
    return boxed, sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nn.meta.unbox(boxed)))


IMAGE = {"image": jnp.zeros((1, 224, 224, 3))}
TEXT = {"text": jnp.zeros((1, 16), jnp.int32)}


def test_clip_b16_matches_open_clip_parameter_count():
    _, n = _param_count(load_config("configs/clip_b16.py").model, {**IMAGE, **TEXT})
    assert n == 149_620_737


def test_vit_b16_backbone_matches_hf_vit_model():
    boxed, n = _param_count(load_config("configs/vit_b16.py").model, IMAGE)
    head = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nn.meta.unbox(boxed["image_tower"]["head"])))
    assert n - head == 86_389_248 and head == 768 * 56 + 56


def test_bert_base_matches_hf_bert_model():
    boxed, n = _param_count(load_config("configs/bert_base.py").model, TEXT)
    tower = nn.meta.unbox(boxed["text_tower"])
    head = sum(int(np.prod(leaf.shape)) for k, v in tower.items() if k.startswith("mlm") for leaf in jax.tree.leaves(v))
    assert n - head == 109_482_240


@pytest.mark.parametrize("config", ["clip_b16", "vit_b16", "bert_base", "clip_tiny"])
def test_every_parameter_is_named_with_logical_axes(config):
    boxed, _ = _param_count(load_config(f"configs/{config}.py").model, {**IMAGE, **TEXT})
    leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    unnamed = [v for v in leaves if not isinstance(v, nn.LogicallyPartitioned)]
    # The learnable temperature / bias scalars are the only unnamed (rank-0, replicated) leaves.
    assert all(np.ndim(v) == 0 for v in unnamed)
    assert sum(isinstance(v, nn.LogicallyPartitioned) for v in leaves) > 10


@pytest.mark.parametrize("variant", ["Ti/16", "S/32", "B/16", "L/14"])
def test_vit_variants(variant):
    from vlfm.models.vit import variant as vit_variant
    fields = vit_variant(variant)
    assert fields["patch_size"] == int(variant.split("/")[1])
    with pytest.raises(KeyError, match="valid sizes"):
        vit_variant("XL/16")


def test_pools_and_heads_produce_expected_shapes():
    images = jnp.ones((2, 32, 32, 3))
    for pool in ("cls", "gap", "map"):
        cfg = dict(name="image_classifier", image=dict(name="vit", image_size=32, patch_size=8, width=32, depth=1,
                                                       num_heads=2, mlp_dim=64, pool=pool, num_classes=5,
                                                       pos_embedding="sincos2d" if pool == "gap" else "learned"))
        model = build_model(cfg)
        out = model.apply(model.init(jax.random.key(0), {"image": images}), {"image": images})
        assert out["logits"].shape == (2, 5) and out["pooled"].shape == (2, 32)
        np.testing.assert_allclose(out["logits"], 0.0)  # zero-initialised head


def test_text_pooling_modes():
    from vlfm.models.text import pool_tokens
    tokens = jnp.arange(2 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 1)
    ids = jnp.array([[2, 7, 3, 0], [2, 3, 0, 0]])
    mask = (ids > 0).astype(jnp.int32)
    assert pool_tokens(tokens, ids, mask, "eos", 3)[:, 0].tolist() == [2.0, 5.0]
    assert pool_tokens(tokens, ids, mask, "argmax", None)[:, 0].tolist() == [1.0, 5.0]
    assert pool_tokens(tokens, ids, mask, "last", None)[:, 0].tolist() == [2.0, 5.0]
    assert pool_tokens(tokens, ids, mask, "mean", None)[:, 0].tolist() == [1.0, 4.5]


def test_bert_mlm_head_tied_and_untied():
    batch = {"text": jnp.array([[5, 6, 7, 0]]), "text_mask": jnp.array([[1, 1, 1, 0]])}
    for tie in (True, False):
        cfg = dict(name="text_encoder", text=dict(name="bert", vocab_size=11, max_len=8, width=16, depth=1,
                                                  num_heads=2, mlp_dim=32, mlm_head=True, tie_mlm_decoder=tie))
        model = build_model(cfg)
        params = model.init(jax.random.key(0), batch)
        out = model.apply(params, batch)
        assert out["mlm_logits"].shape == (1, 4, 11)
        assert ("mlm_decoder" in params["params"]["text_tower"]) == (not tie)
