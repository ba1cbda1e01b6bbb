"""Swin / CoSwin towers beyond HF parity (tests/test_swin_parity.py): CoSwin's convolutional embeddings
against torch's convolution and LayerNorm, scanned block pairs against unrolled blocks, the shift mask by
hand, and Florence's METER adapter config building and running."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.convert.hf_swin import stack_pairs
from vlfm.core.tree import strip_boxes
from vlfm.models import build_model, build_tower
from vlfm.models.swin import ConvEmbed, shift_mask, window_geometry
from vlfm.train.config import load_config


def _random_variables(module, *args, seed=0):
    """Variables of ``module`` drawn in numpy from the abstract init: compiling a jitted init (a random draw
    per parameter) costs several times the forward pass on CPU."""
    shapes = strip_boxes(jax.eval_shape(module.init, jax.random.key(0), *args))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def test_shift_mask_and_window_geometry_by_hand():
    """A 4x4 map, window 2, shift 1: after the cyclic shift, window (0,0) holds rows/cols {0,1} of one region;
    the last window (1,1) gathers row/col 3 (wrapped from 0) with 2 from inside, so it mixes 4 regions."""
    m = shift_mask((4, 4), 2, 1)
    assert m.shape == (4, 4, 4)
    assert not m[0].any()  # rows 0-1, cols 0-1: region (0, 0) only
    # window 1 (rows 0-1, cols 2-3): col 2 is region 1, col 3 region 2 -> tokens (r, c) differ by column
    np.testing.assert_array_equal(m[1], np.array([[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]], bool))
    np.testing.assert_array_equal(m[3], ~np.eye(4, dtype=bool))  # four tokens, four regions
    assert window_geometry((8, 8), 4) == (4, 2)
    assert window_geometry((4, 4), 4) == (4, 0)  # no larger than the window: one unshifted window
    assert window_geometry((3, 3), 4) == (3, 0)


@pytest.mark.parity
def test_coswin_conv_embedding_is_torch_conv_then_layernorm():
    """CvT's stem (kernel 7, stride 4, padding 2) and merge (kernel 3, stride 2, padding 1) conventions."""
    torch = pytest.importorskip("torch")
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 16, 16, 5)))
    for kernel, stride, padding in ((7, 4, 2), (3, 2, 1)):
        module = ConvEmbed(6, kernel, stride)
        params = strip_boxes(module.init(jax.random.key(1), x)["params"])
        params["norm"]["scale"] = np.asarray(jax.random.normal(jax.random.key(2), (6,))) + 1.0
        params["conv"]["bias"] = np.asarray(jax.random.normal(jax.random.key(3), (6,)))
        got = module.apply({"params": params}, x)
        w = torch.tensor(np.asarray(params["conv"]["kernel"]).transpose(3, 2, 0, 1))
        ref = torch.nn.functional.conv2d(torch.tensor(x).permute(0, 3, 1, 2), w, torch.tensor(params["conv"]["bias"]),
                                         stride=stride, padding=padding).permute(0, 2, 3, 1)
        ref = torch.nn.functional.layer_norm(ref, (6,), torch.tensor(params["norm"]["scale"]),
                                             torch.tensor(np.asarray(params["norm"]["bias"])), eps=1e-5)
        assert got.shape == (2, 16 // stride, 16 // stride, 6)
        np.testing.assert_allclose(np.asarray(got), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_coswin_scanned_pairs_equal_unrolled_blocks_and_shapes():
    """The scanned stage (a pair of blocks as the repeating unit) computes what the unrolled blocks do, with
    the same weights stacked; CoSwin's grid goes 16 px / 2 -> 8x8 -> 4x4 at widths 8 -> 16."""
    cfg = dict(name="coswin", image_size=16, patch_size=2, embed_dim=8, depths=(4, 2), num_heads=(1, 2), window_size=4)
    images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    unrolled = build_tower(cfg)
    params = _random_variables(unrolled, images)["params"]
    out = jax.jit(unrolled.apply)({"params": params}, images)
    assert params["conv_embed"]["conv"]["kernel"].shape == (7, 7, 3, 8)
    assert params["merge_0"]["conv"]["kernel"].shape == (3, 3, 8, 16)
    assert out["tokens"].shape == (2, 16, 16) and out["grid"] == (4, 4)
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    scanned_params = flax.traverse_util.unflatten_dict(stack_pairs(flat), sep="/")
    assert scanned_params["stage_0"]["pairs"]["block_0"]["attn"]["rel_pos_bias"].shape == (2, 49, 1)
    scanned = build_tower(dict(cfg, scan=True, remat="full", prepend_pooled=True))
    again = jax.jit(scanned.apply)({"params": scanned_params}, images)
    np.testing.assert_allclose(again["tokens"][:, 1:], out["tokens"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(again["tokens"][:, 0], out["pooled"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["pooled"], out["tokens"].mean(1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("override, message", [
    (dict(depths=(3, 2)), "even depth"),
    (dict(window_size=3), "does not split into 3x3 windows"),
    (dict(embedding="conv2"), "unknown embedding"),
    (dict(image_size=32), "image_size=32"),
])
def test_bad_swin_settings_fail_by_name(override, message):
    cfg = dict(name="swin", image_size=16, patch_size=2, embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=4)
    tower = build_tower(dict(cfg, **override))
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda: tower.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))


def test_florence_meter_adapter_config_builds_and_runs():
    """configs/florence_meter_tiny.py: METER co-attention fusion on a CoSwin tower; the image pooler reads
    the prepended pooled token."""
    # the config's model, one block pair per stage and one layer per text/fusion stack (to compile quickly)
    cfg = load_config("configs/florence_meter_tiny.py",
                      ["model.image.depths=(2, 2)", "model.text.depth=1", "model.depth=1"]).model.to_dict()
    model = build_model(cfg)
    batch = {"image": jax.random.normal(jax.random.key(0), (2, 32, 32, 3)),
             "text": jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]], jnp.int32),
             "text_mask": jnp.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]], bool)}
    variables = _random_variables(model, batch)
    assert "conv_embed" in variables["params"]["image_tower"]
    out = jax.jit(model.apply)(variables, batch)
    assert out["image_tokens"].shape == (2, 1 + 4 * 4, cfg["width"])
    assert out["pooled"].shape == (2, 2 * cfg["width"]) and bool(jnp.isfinite(out["pooled"]).all())
