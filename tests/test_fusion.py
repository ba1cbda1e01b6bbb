"""Fusion models (ViLT, METER, BridgeTower): the shared-layer generalisations they need, outputs and
heads, paper-size parameter counts (eval_shape, nothing allocated) and logical axes."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.models import build_model, layers
from vlfm.train.config import load_config

BLOCK = dict(num_heads=2, mlp_dim=32, dtype=jnp.float32, param_dtype=jnp.float32)


def _x(b=2, t=6, d=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, t, d)), jnp.float32)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_block_key_mask_equals_kv_lengths_for_right_padding(norm):
    block = layers.TransformerBlock(norm=norm, **BLOCK)
    x = _x()
    params = block.init(jax.random.key(0), x)
    lengths = jnp.array([6, 3])
    mask = jnp.arange(6)[None, :] < lengths[:, None]
    np.testing.assert_allclose(block.apply(params, x, key_mask=mask), block.apply(params, x, kv_lengths=lengths),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scan", [True, False])
def test_encoder_key_mask_hides_masked_tokens_anywhere(scan):
    """Masked keys (here in the middle, as ViLT's text padding before the image) change nothing else."""
    enc = layers.Encoder(2, dict(BLOCK, norm="pre"), scan=scan)
    x = _x(t=8)
    mask = jnp.array([[1, 1, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]], bool)
    params = enc.init(jax.random.key(0), x, key_mask=mask)
    out = enc.apply(params, x, key_mask=mask)
    changed = x.at[0, 2:4].set(100.0)
    again = enc.apply(params, changed, key_mask=mask)
    keep = np.asarray(mask[0])
    np.testing.assert_allclose(out[0][keep], again[0][keep], rtol=1e-5, atol=1e-5)
    assert not np.allclose(enc.apply(params, changed)[0][keep], out[0][keep], atol=1e-3)  # without the mask


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_cross_attention_sublayer_reads_the_context(norm):
    block = layers.TransformerBlock(norm=norm, cross_attention=True, **BLOCK)
    x, ctx = _x(), _x(t=5, seed=1)
    params = block.init(jax.random.key(0), x, context=ctx)
    assert {"attn", "cross_attn", "ln1", "ln_cross", "ln2", "mlp"} <= set(params["params"])
    out = block.apply(params, x, context=ctx)
    assert not np.allclose(out, block.apply(params, x, context=ctx * 2.0), atol=1e-4)
    # A masked context token has no influence.
    cmask = jnp.array([[1, 1, 1, 1, 0]] * 2, bool)
    a = block.apply(params, x, context=ctx, context_mask=cmask)
    b = block.apply(params, x, context=ctx.at[:, 4].set(50.0), context_mask=cmask)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="context"):
        block.apply(params, x)
    with pytest.raises(ValueError, match="context"):
        layers.TransformerBlock(norm=norm, **BLOCK).init(jax.random.key(0), x, context=ctx)


# ----------------------------------------------------------------------------------------------------
# Models

TOWERS = dict(
    image=dict(name="vit", image_size=16, patch_size=8, width=32, depth=3, num_heads=2, mlp_dim=64, pre_norm=True,
               patch_bias=False),
    text=dict(name="bert", vocab_size=40, max_len=12, width=32, depth=3, num_heads=2, mlp_dim=64),
    width=32, depth=2, num_heads=2, mlp_dim=64)
VILT = dict(name="vilt", vocab_size=40, max_text_len=8, image_size=16, patch_size=8, width=32, depth=2, num_heads=2,
            mlp_dim=64)


def _batch(b=4, image_size=16):
    r = np.random.default_rng(0)
    image = jnp.asarray(r.normal(size=(b, image_size, image_size, 3)), jnp.float32)
    return {"image": image, "image2": image[::-1], "text": jnp.asarray(r.integers(5, 40, size=(b, 6)), jnp.int32),
            "text_mask": jnp.ones((b, 6), jnp.int32), "mlm_text": jnp.full((b, 6), 4, jnp.int32)}


def _init(cfg, batch):
    model = build_model(cfg)
    return model, model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch)["params"]


@pytest.mark.parametrize("cfg", [
    dict(VILT, num_types=3),
    dict(name="meter", fusion="merged", num_types=3, **TOWERS),
    dict(name="bridgetower", bridge="interpolate", num_types=3, contrastive_dim=8, **TOWERS),
], ids=["vilt", "meter_merged", "bridgetower"])
def test_every_head_and_objective(cfg):
    cfg = dict(cfg, mlm=True, itm="random", vqa_answers=7, pair_classes=2)
    batch = _batch()
    model = build_model(cfg)
    boxed = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch)["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    assert all(isinstance(v, nn.LogicallyPartitioned) for v in leaves)  # logical axes on every parameter
    params = nn.meta.unbox(boxed)
    out = model.apply({"params": params}, batch)
    pooled = 32 if cfg["name"] == "vilt" else 64
    assert out["mlm_logits"].shape == (4, 6, 40) and out["vqa_logits"].shape == (4, 7)
    assert out["logits"].shape == (4, 2) and out["itm_logits"].shape == (4, 2) and out["pooled"].shape == (4, pooled)
    assert out["itm_labels"].tolist() == [1, 1, 1, 1]  # evaluation scores the batch's own pairs
    train = model.apply({"params": params}, batch, train=True,
                        rngs={"dropout": jax.random.key(3), "sampling": jax.random.key(3)})
    assert int(train["itm_labels"].sum()) == 2 and "pooled" not in train
    if cfg.get("contrastive_dim"):
        np.testing.assert_allclose(np.linalg.norm(out["image_embed"], axis=-1), 1.0, rtol=1e-5)
        predict = type(model).PREDICT
        image = model.apply({"params": params}, batch, method=lambda m, b: predict["encode_image"](m, b))
        text = model.apply({"params": params}, batch, method=lambda m, b: predict["encode_text"](m, b))
        np.testing.assert_allclose(image, out["image_embed"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(text, out["text_embed"], rtol=1e-5, atol=1e-6)


def test_nlvr2_needs_a_third_type_row():
    model = build_model(dict(VILT, pair_classes=2))
    with pytest.raises(ValueError, match="num_types=3"):
        jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, _batch()))


def _param_names(cfg) -> set[str]:
    model = build_model(cfg)
    boxed = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, _batch()))
    return set(flax.traverse_util.flatten_dict(nn.meta.unbox(boxed["params"]), sep="/"))


def test_bridgetower_has_bridges_and_meter_does_not():
    bridgetower = _param_names(dict(name="bridgetower", **TOWERS))
    meter = _param_names(dict(name="meter", **TOWERS))
    bridges = {k for k in bridgetower
               if "_link_" in k or k.startswith(("fusion_layers/text_ln", "fusion_layers/image_ln"))}
    assert {k.split("/")[1] for k in bridges} == {"text_link_1", "image_link_1", "text_ln", "image_ln"}
    assert meter == bridgetower - bridges


@pytest.mark.parametrize("kind", ["add", "scaled_add", "interpolate"])
def test_link_tower_formulas(kind):
    """LN(x + h), LN(s*x + h), LN((1-b)*x + b*h) with x the uni-modal input, h the previous layer."""
    from vlfm.models.fusion import LinkTower

    tower = LinkTower(kind)
    x, h = jnp.full((1, 2, 4), 2.0).at[0, 0, 0].set(0.0), jnp.ones((1, 2, 4))
    params = nn.meta.unbox(tower.init(jax.random.key(0), x, h))["params"]
    assert float(params.get("scale", params.get("beta", 0.0))) in (0.0, 1.0, 0.5)
    if kind == "scaled_add":
        params["scale"] = jnp.float32(1.7)
    if kind == "interpolate":
        params["beta"] = jnp.float32(0.3)
    pre = {"add": x + h, "scaled_add": 1.7 * x + h, "interpolate": 0.7 * x + 0.3 * h}[kind]
    want = (pre - pre.mean(-1, keepdims=True)) / jnp.sqrt(pre.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(tower.apply({"params": params}, x, h), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Paper-size configs: parameter counts without allocating anything


def _counts(config: str, image_size: int) -> tuple[int, int]:
    model = build_model(load_config(config).model)
    batch = {"image": jnp.zeros((1, image_size, image_size, 3)), "text": jnp.zeros((1, 8), jnp.int32)}
    boxed = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch))
    flat = flax.traverse_util.flatten_dict(nn.meta.unbox(boxed["params"]), sep="/")
    total = sum(int(np.prod(v.shape)) for v in flat.values())
    heads = sum(int(np.prod(v.shape)) for k, v in flat.items() if k.split("/")[0].endswith("_head"))
    leaves = jax.tree.leaves(boxed["params"], is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    assert all(isinstance(v, nn.LogicallyPartitioned) for v in leaves)
    return total - heads, heads


def test_vilt_b32_matches_hf_vilt_model():
    base, heads = _counts("configs/vilt_b32.py", 384)
    assert base == 111_595_008  # HF ViltModel(ViltConfig())
    assert heads == (768 * 768 + 768) + 2 * 768 + (768 * 30522 + 30522) + (768 * 2 + 2)  # MLM + ITM


def test_bridgetower_base_matches_hf_bridgetower_model():
    base, heads = _counts("configs/bridgetower_base.py", 288)
    assert base == 326_347_008  # HF BridgeTowerModel(BridgeTowerConfig())
    assert heads == (768 * 768 + 768) + 2 * 768 + (768 * 50265 + 50265) + (1536 * 2 + 2)


def test_meter_clip16_roberta_is_bridgetower_without_bridges():
    base, _ = _counts("configs/meter_clip16_roberta.py", 288)
    bridges = 2 * 5 * 2 * 768 + 2 * 2 * 768  # 5 link LayerNorms and 1 input LayerNorm per modality
    assert base == 326_347_008 - bridges == 326_328_576


def test_flop_counts():
    """Each fusion model counts its own FLOPs (the trainer asks the model class)."""
    from vlfm.models.meter import BridgeTower
    from vlfm.models.vilt import Vilt

    vilt = load_config("configs/vilt_b32.py").model
    one_pass = Vilt.flops_per_example(dict(vilt, mlm=False, itm="random"), text_len=40)
    assert Vilt.flops_per_example(vilt, text_len=40) == pytest.approx(2 * one_pass)
    tokens = 40 + 145
    assert one_pass > 12 * 2 * tokens * (4 * 768 ** 2 + 2 * 768 * 3072)
    bt = load_config("configs/bridgetower_base.py").model
    assert BridgeTower.flops_per_example(bt, text_len=50) > BridgeTower.flops_per_example(dict(bt, mlm=False),
                                                                                          text_len=50)
