"""VLMo: the model's three passes on one parameter set (dual encoder, VL-expert contrast, fused
heads), the prefixed contrastive loss, and VLMo-Base's parameter count (eval_shape, nothing allocated)."""

import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.losses import LOSSES
from vlfm.models import build_model
from vlfm.train.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(name="vlmo", width=16, depth=3, num_heads=2, mlp_dim=32, vl_depth=1, vocab_size=30, max_text_len=6,
            image_size=16, patch_size=8, contrastive_dim=8, vl_contrastive=True, mlm=True, itm="hard")


def _count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_vlmo_base_parameter_count():
    cfg = load_config(os.path.join(REPO, "configs", "vlmo_base.py"))
    model = build_model(cfg.model.to_dict())
    batch = {"image": jnp.zeros((2, 224, 224, 3)), "text": jnp.zeros((2, 40), jnp.int32),
             "text_mask": jnp.ones((2, 40), bool)}
    boxed = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1),
                                               "sampling": jax.random.key(2)}, batch, train=True))
    params = nn.meta.unbox(boxed["params"])
    backbone = {k: params[k] for k in ("text_embeddings", "image_embeddings", "modality_embed", "transformer")}
    assert _count(backbone) == 175_430_496  # the paper's 175M
    assert _count(params["transformer"]) == 151_362_912
    # the public table: image entries, 2 cross-modal, 2 x 196 text rows, one column per layer and head
    assert params["transformer"]["rel_pos"]["table"].shape == ((2 * 14 - 1) ** 2 + 3 + 2 + 2 * 196, 12 * 12)
    assert _count(params) == 202_445_470
    layer = params["transformer"]["vl_layers"]
    assert set(layer) >= {"ffn_image", "ffn_text", "ffn_vl"} and "ffn_vl" not in params["transformer"]["layers"]
    assert layer["ffn_vl"]["mlp"]["fc1"]["kernel"].shape == (2, 768, 3072)
    # logical axes: the scanned layers carry a leading "layers" axis
    axes = jax.tree.map(lambda p: p.names, boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert axes["transformer"]["layers"]["ffn_text"]["mlp"]["fc1"]["kernel"] == ("layers", "embed", "mlp")


def test_vlmo_passes_share_parameters():
    model = build_model(TINY)
    r = np.random.default_rng(0)
    batch = {"image": jnp.asarray(r.normal(size=(4, 16, 16, 3)), jnp.float32),
             "text": jnp.asarray(r.integers(1, 30, size=(4, 6)), jnp.int32),
             "text_mask": jnp.asarray([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0], [1] * 6], bool),
             "itm_neg_image": jnp.asarray([1, 0, 3, 2]), "itm_neg_text": jnp.asarray([2, 3, 0, 1])}
    batch["mlm_text"] = batch["text"].at[:, 2].set(0)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1), "sampling": jax.random.key(2)}
    # one compiled training-mode forward that also creates the parameters (every pass of the model)
    out, variables = jax.jit(lambda r, b: model.init_with_output(r, b, train=True))(rngs, batch)
    predict = type(model).PREDICT

    @jax.jit
    def dual(p, b):
        image = model.apply({"params": p}, b, method=lambda m, b: predict["encode_image"](m, b))
        text = model.apply({"params": p}, b, method=lambda m, b: predict["encode_text"](m, b))
        return image, text

    image, text = dual(variables["params"], batch)
    for key in ("image_embed", "text_embed", "vl_image_embed", "vl_text_embed"):
        np.testing.assert_allclose(np.linalg.norm(out[key], axis=-1), 1.0, rtol=1e-5)
    # the dual encoder (retrieval) is the same image-only / text-only pass as the contrastive head
    np.testing.assert_allclose(image, out["image_embed"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(text, out["text_embed"], rtol=1e-5, atol=1e-6)
    # the VL-expert contrast differs from the plain one (other experts and projections in the top layer)
    assert not np.allclose(out["vl_image_embed"], out["image_embed"], atol=1e-3)
    assert out["mlm_logits"].shape == (4, 6, 30)
    # hard ITM: the batch's pairs, then each text with its negative image, each image with its negative text
    assert out["itm_logits"].shape == (12, 2) and out["itm_labels"].tolist() == [1] * 4 + [0] * 8
    # a padded text token changes nothing in the text-only embedding
    changed = dict(batch, text=batch["text"].at[1, 5].set(7))
    np.testing.assert_allclose(dual(variables["params"], changed)[1][1], text[1], rtol=1e-5, atol=1e-6)


def test_softmax_contrastive_reads_prefixed_outputs():
    r = np.random.default_rng(0)
    zi, zt = (r.normal(size=(4, 8)).astype(np.float32) for _ in range(2))
    zi /= np.linalg.norm(zi, axis=-1, keepdims=True)
    zt /= np.linalg.norm(zt, axis=-1, keepdims=True)
    loss = LOSSES.get("softmax_contrastive")
    plain, _ = loss({"image_embed": zi, "text_embed": zt, "logit_scale": 5.0}, {})
    swapped, _ = loss({"image_embed": zt, "text_embed": zi, "logit_scale": 1.0,
                       "vl_image_embed": zi, "vl_text_embed": zt, "vl_logit_scale": 5.0}, {}, prefix="vl_")
    np.testing.assert_allclose(swapped, plain, rtol=1e-6)
    with pytest.raises(KeyError, match="vl_image_embed"):
        loss({"image_embed": zi, "text_embed": zt, "logit_scale": 5.0}, {}, prefix="vl_")


def test_vlmo_param_names_follow_the_experts():
    names = set(flax.traverse_util.flatten_dict(nn.meta.unbox(jax.eval_shape(
        lambda: build_model(dict(TINY, multiway_attention=True)).init(
            {"params": jax.random.key(0), "dropout": jax.random.key(1), "sampling": jax.random.key(2)},
            {"image": jnp.zeros((2, 16, 16, 3)), "text": jnp.zeros((2, 6), jnp.int32)}, train=True))["params"]),
        sep="/"))
    assert {"transformer/layers/qkv_text/query/kernel", "transformer/layers/qkv_image/query/kernel",
            "transformer/layers/ln1_text/scale", "transformer/vl_layers/attn_out_image/kernel"} <= names
    assert not any("/qkv/" in n for n in names)
    assert "transformer/layers/qkv_text/key/bias" not in names  # q and v bias, no k bias
