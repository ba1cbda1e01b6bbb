"""The mixture-of-modality-experts transformer (VLMo, BEiT-3 multiway) against a hand-written NumPy
reference: one layer (routing by position, per-expert LayerNorms, layer scale, q/v bias without k bias,
relative position bias, padding), the relative-position index layout, and the scanned transformer in
its three modes on one parameter set."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from vlfm.models.attention import dot_product_attention
from vlfm.models.masks import AttentionMask
from vlfm.models.mome import (MomeLayer, MomeTransformer, image_relative_index, num_relative_entries,
                              relative_position_index)

RTOL, ATOL = 1e-4, 1e-5
D, H, MLP = 8, 2, 16


def _perturb(params, seed=0, scale=0.3):
    """Every leaf moved off its initial value (biases, layer scales and LayerNorms included)."""
    leaves, tree = jax.tree.flatten(flax.linen.unbox(params))
    r = np.random.default_rng(seed)
    return jax.tree.unflatten(tree, [np.asarray(a) + scale * r.normal(size=a.shape).astype(np.float32)
                                     for a in leaves])


# ----------------------------------------------------------------------------------------------------
# NumPy reference, written position by position


def _ln(x, p, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _ffn(p, x):
    h = _ln(x, p["ln"])
    h = h @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    return h @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]


def _proj(p, x, name):
    y = np.einsum("...d,dhk->...hk", x, p[name]["kernel"])
    return y + p[name]["bias"] if "bias" in p[name] else y


def ref_layer(p, x, *, modality, vl_expert, bias=None, key_mask=None, multiway=False):
    """One MoME layer. ``modality[t]`` is 'text' or 'image'; ``vl_expert``: every position uses ffn_vl."""
    b, t, _ = x.shape
    sfx = lambda m: f"_{m}" if multiway else ""  # noqa: E731
    q = np.zeros((b, t, H, D // H))
    k, v = q.copy(), q.copy()
    for i in range(t):
        m = modality[i]
        h = _ln(x[:, i], p[f"ln1{sfx(m)}"])
        qkv = p[f"qkv{sfx(m)}"]
        q[:, i], k[:, i], v[:, i] = (_proj(qkv, h, n) for n in ("query", "key", "value"))
    logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(D // H)
    if bias is not None:
        logits = logits + bias[None]
    if key_mask is not None:
        logits = np.where(key_mask[:, None, None, :], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    att = np.einsum("bhts,bshk->bthk", probs, v)
    y = x.copy()
    for i in range(t):
        out = p[f"attn_out{sfx(modality[i])}"]
        y[:, i] += p["ls1"] * (np.einsum("bhk,hkd->bd", att[:, i], out["kernel"]) + out["bias"])
    z = y.copy()
    for i in range(t):
        z[:, i] += p["ls2"] * _ffn(p["ffn_vl" if vl_expert else f"ffn_{modality[i]}"], y[:, i])
    return z


# ----------------------------------------------------------------------------------------------------
# One layer


@pytest.mark.parametrize("multiway", [False, True], ids=["vlmo", "multiway"])
def test_layer_matches_numpy_reference_in_every_mode(multiway):
    r = np.random.default_rng(1)
    text_len, t = 3, 7
    x = r.normal(size=(2, t, D)).astype(np.float32)
    bias = r.normal(size=(H, t, t)).astype(np.float32)
    key_mask = np.ones((2, t), bool)
    key_mask[1, 2] = False  # a padded text token
    fields = dict(num_heads=H, mlp_dim=MLP, multiway_attention=multiway, layer_scale=0.1, qkv_bias="qv")
    layer = MomeLayer(mode="vl", text_len=text_len, vl_ffn=True, **fields)
    broadcast = {"mask": AttentionMask(key_mask=jnp.asarray(key_mask))}
    params = _perturb(jax.jit(layer.init)(jax.random.key(0), x, 0.0, bias, broadcast)["params"])
    assert "bias" not in params["qkv_text" if multiway else "qkv"]["key"]  # q and v bias, no k bias
    assert set(params) >= {"ffn_text", "ffn_image", "ffn_vl", "ls1", "ls2"}
    cases = {  # (mode, vl expert, modality of each position)
        "vl_bottom": ("vl", False, ["text"] * text_len + ["image"] * (t - text_len)),
        "vl_top": ("vl", True, ["text"] * text_len + ["image"] * (t - text_len)),
        "image": ("image", True, ["image"] * t),
        "text": ("text", True, ["text"] * t),
    }

    @jax.jit
    def run(p, x):
        return {name: MomeLayer(mode=mode, text_len=text_len, vl_ffn=vl_ffn, **fields).apply(
            {"params": p}, x, 0.0, jnp.asarray(bias), broadcast)[0] for name, (mode, vl_ffn, _) in cases.items()}

    got = run(params, x)
    for name, (mode, vl_ffn, modality) in cases.items():
        want = ref_layer(params, x.astype(np.float64), modality=modality, vl_expert=(mode == "vl" and vl_ffn),
                         bias=bias, key_mask=key_mask, multiway=multiway)
        np.testing.assert_allclose(np.asarray(got[name]), want, rtol=RTOL, atol=ATOL, err_msg=name)


def test_attention_bias_is_the_same_on_every_path():
    r = np.random.default_rng(2)
    q, k, v = (jnp.asarray(r.normal(size=(2, 5, 2, 4)), jnp.float32) for _ in range(3))
    bias = jnp.asarray(r.normal(size=(1, 2, 5, 5)), jnp.float32)
    mask = AttentionMask(lengths=jnp.array([5, 3]))
    xla = dot_product_attention(q, k, v, mask=mask, bias=bias)
    einsum, probs = dot_product_attention(q, k, v, mask=mask, bias=bias, return_probs=True)
    logits = np.einsum("btnh,bsnh->bnts", q, k) / 2.0 + np.asarray(bias)
    logits = np.where(np.arange(5)[None, None, None, :] < np.array([5, 3])[:, None, None, None], logits, -np.inf)
    want = np.exp(logits - logits.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, want, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(xla, einsum, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="attention bias"):
        dot_product_attention(q, k, v, bias=bias[0])


# ----------------------------------------------------------------------------------------------------
# Relative position index


def test_relative_position_index_layout():
    grid, max_text = (2, 3), 6
    n_img = (2 * 2 - 1) * (2 * 3 - 1) + 3
    total = num_relative_entries(grid, max_text)
    assert total == n_img + 2 + 2 * max_text
    img = image_relative_index(grid)
    coords = [(i, j) for i in range(2) for j in range(3)]
    # patches: one entry per 2-D offset, equal offsets share it, distinct offsets do not
    for a, (ya, xa) in enumerate(coords):
        for b, (yb, xb) in enumerate(coords):
            for c, (yc, xc) in enumerate(coords):
                for d, (yd, xd) in enumerate(coords):
                    same = (ya - yb, xa - xb) == (yc - yd, xc - xd)
                    assert (img[1 + a, 1 + b] == img[1 + c, 1 + d]) == same
    assert len(np.unique(img[1:, 1:])) == 3 * 5 and img[1:, 1:].max() < n_img - 3
    assert img[0, 1:].tolist() == [n_img - 3] * 6 and img[1:, 0].tolist() == [n_img - 2] * 6 and img[0, 0] == n_img - 1
    text_len = 4
    vl = relative_position_index("vl", text_len + 7, grid, max_text, text_len)
    txt = vl[:text_len, :text_len]
    np.testing.assert_array_equal(txt, relative_position_index("text", text_len, grid, max_text))
    for i in range(1, text_len):
        for j in range(1, text_len):  # 1-D offsets of the tokens after [CLS]
            assert txt[i, j] == txt[1, 1] + (j - i)
    assert txt[0, 0] == total - 1 and set(txt[0, 1:]) == {total - 3} and set(txt[1:, 0]) == {total - 2}
    assert set(vl[:text_len, text_len:].ravel()) == {n_img} and set(vl[text_len:, :text_len].ravel()) == {n_img + 1}
    np.testing.assert_array_equal(vl[text_len:, text_len:], img)
    # the full text range fits between the cross-modal entries and the [CLS] entries, without overlap
    longest = relative_position_index("text", max_text, grid, max_text)
    assert longest[1:, 1:].min() == n_img + 2 and longest[1:, 1:].max() == total - 4
    with pytest.raises(ValueError, match="covers"):
        relative_position_index("text", max_text + 1, grid, max_text)
    with pytest.raises(ValueError, match="image tokens"):
        relative_position_index("image", 6, grid, max_text)


def test_text_index_of_a_table_longer_than_the_text():
    # VLMo's public checkpoints keep 196 text positions and fine-tune on 40: the public construction,
    # written out (min distance 2 - 196, shifted past the image entries and the two cross-modal ones)
    grid, table_len, text_len = (14, 14), 196, 40
    image_entries = (2 * 14 - 1) ** 2 + 3
    every = image_entries + 2 * table_len + 2
    pos = np.arange(text_len - 1)
    want = np.zeros((text_len, text_len), np.int64)
    want[1:, 1:] = (pos[None, :] - pos[:, None]) - (2 - table_len) + image_entries + 2
    want[0, :], want[:, 0], want[0, 0] = every - 3, every - 2, every - 1
    assert num_relative_entries(grid, table_len) == every
    np.testing.assert_array_equal(relative_position_index("text", text_len, grid, table_len), want)


# ----------------------------------------------------------------------------------------------------
# The transformer: three modes, one parameter set, scanned


def test_transformer_modes_share_parameters_and_match_reference():
    grid, max_text, depth, vl_depth = (2, 2), 6, 3, 1
    model = MomeTransformer(depth=depth, num_heads=H, mlp_dim=MLP, vl_depth=vl_depth, layer_scale=0.1,
                            relative_position=True, image_grid=grid, max_text_len=max_text, scan=True)
    r = np.random.default_rng(3)
    text_len, image_len = 4, 5
    x = r.normal(size=(2, text_len + image_len, D)).astype(np.float32)
    key_mask = np.ones((2, text_len + image_len), bool)
    key_mask[0, 3] = False
    inputs = {"vl": (x, text_len, key_mask), "image": (x[:, text_len:], 0, None),
              "text": (x[:, :text_len], 0, key_mask[:, :text_len])}
    init = jax.jit(lambda key, x: model.init(key, x, mode="vl", text_len=text_len))
    params = _perturb(init(jax.random.key(0), x)["params"], seed=4)
    for mode in ("image", "text"):  # one parameter set, whichever mode initialises
        shapes = jax.eval_shape(lambda m=mode: model.init(jax.random.key(0), inputs[m][0], mode=m))["params"]
        assert jax.tree.map(np.shape, flax.linen.unbox(shapes)) == jax.tree.map(np.shape, params), mode
    assert params["layers"]["ffn_text"]["mlp"]["fc1"]["kernel"].shape == (depth - vl_depth, D, MLP)
    assert "ffn_vl" not in params["layers"] and "ffn_vl" in params["vl_layers"]

    @jax.jit
    def run_all(p):
        out = {}
        for mode, (xm, tl, km) in inputs.items():
            out[mode] = model.apply({"params": p}, xm, mode=mode, text_len=tl,
                                    key_mask=None if km is None else jnp.asarray(km))
        # VLMo's image-text contrast through the VL expert: the image's bottom layers once, the top in vl mode
        bottom = model.apply({"params": p}, inputs["image"][0], mode="image", part="bottom")
        out["image_bottom_then_vl_top"] = model.apply({"params": p}, bottom, mode="vl", part="top")
        out["image_bottom_then_image_top"] = model.apply({"params": p}, bottom, mode="image", part="top")
        return out

    got = jax.tree.map(np.asarray, run_all(params))
    layer_params = [jax.tree.map(lambda a, i=i: a[i], params["layers"]) for i in range(depth - vl_depth)]
    layer_params += [jax.tree.map(lambda a, i=i: a[i], params["vl_layers"]) for i in range(vl_depth)]
    table = params["rel_pos"]["table"]

    def reference(xm, modality, mode_index, vl_top, key_mask=None, layers=range(depth), final=True):
        h = xm.astype(np.float64)
        for i in layers:
            bias = table[mode_index][..., i * H:(i + 1) * H].transpose(2, 0, 1)
            h = ref_layer(layer_params[i], h, modality=modality, vl_expert=vl_top and i >= depth - vl_depth,
                          bias=bias, key_mask=key_mask)
        return _ln(h, params["ln_final"]) if final else h

    idx = {m: relative_position_index(m, inputs[m][0].shape[1], grid, max_text, inputs[m][1]) for m in inputs}
    want = {
        "vl": reference(x, ["text"] * text_len + ["image"] * image_len, idx["vl"], True, key_mask),
        "image": reference(x[:, text_len:], ["image"] * image_len, idx["image"], False),
        "text": reference(x[:, :text_len], ["text"] * text_len, idx["text"], False, key_mask[:, :text_len]),
    }
    bottom = reference(x[:, text_len:], ["image"] * image_len, idx["image"], False, layers=range(2), final=False)
    want["image_bottom_then_vl_top"] = reference(bottom, ["image"] * image_len, idx["image"], True, layers=[2])
    want["image_bottom_then_image_top"] = want["image"]
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)
