"""The composable layer stack: attention masks, modality experts, segments, attention probabilities,
KV-cache decoding, the co-attention stack (scan / unrolled / remat / drop-path) and activation axes."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vlfm.models import build_model, layers
from vlfm.models.masks import AttentionMask

BLOCK = dict(num_heads=2, mlp_dim=32, ln_eps=1e-6, dtype=jnp.float32, param_dtype=jnp.float32)


def _x(b=2, t=6, d=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, t, d)), jnp.float32)


# ----------------------------------------------------------------------------------------------------
# AttentionMask


def test_mask_parts_match_hand_built_masks():
    t = 5
    tril = np.tril(np.ones((t, t), bool))
    lengths = jnp.array([5, 3])
    pad = np.arange(t)[None, :] < np.array([5, 3])[:, None]
    got = AttentionMask(lengths=lengths, causal=True).dense(t, t)
    np.testing.assert_array_equal(got, pad[:, None, None, :] & tril[None, None])
    # Prefix-LM: the first p keys are visible to every query, the rest causally.
    prefix = AttentionMask(prefix_lengths=jnp.array([2, 0])).dense(t, t)
    want = np.stack([tril | (np.arange(t)[None, :] < 2), tril])[:, None]
    np.testing.assert_array_equal(prefix, want)
    # Segments: same segment only; then an explicit table (text 1 sees image 0, image sees only image).
    seg = jnp.array([[0, 0, 1, 1, 1]])
    same = AttentionMask(segment_ids=seg).dense(t, t)
    ids = np.array([0, 0, 1, 1, 1])
    np.testing.assert_array_equal(same[0, 0], ids[:, None] == ids[None, :])
    table = ((True, False), (True, True))
    pairs = AttentionMask(segment_ids=seg, segment_pairs=table).dense(t, t)
    np.testing.assert_array_equal(pairs[0, 0], np.array(table)[ids[:, None], ids[None, :]])
    # Everything ANDed, with a key mask.
    key_mask = jnp.array([[1, 1, 1, 0, 1]], bool)
    both = AttentionMask(key_mask=key_mask, segment_ids=seg, causal=True).dense(t, t)
    np.testing.assert_array_equal(both[0, 0], (ids[:, None] == ids[None, :]) & tril & np.array([1, 1, 1, 0, 1], bool))
    assert AttentionMask().dense(t, t) is None
    assert AttentionMask(lengths=lengths, causal=True).fast_path
    assert not AttentionMask(prefix_lengths=lengths).fast_path and not AttentionMask(segment_ids=seg).fast_path


def test_attention_with_a_mask_object_matches_reference():
    r = np.random.default_rng(0)
    q, k, v = (jnp.asarray(r.normal(size=(2, 6, 2, 8)), jnp.float32) for _ in range(3))
    mask = AttentionMask(lengths=jnp.array([6, 4]), prefix_lengths=jnp.array([3, 2]),
                         segment_ids=jnp.array([[0, 0, 0, 1, 1, 1]] * 2), segment_pairs=((True, False), (True, True)))
    allowed = np.asarray(mask.dense(6, 6, 2))
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(8)
    p = np.exp(np.where(allowed, logits, -1e30) - np.where(allowed, logits, -1e30).max(-1, keepdims=True))
    p = p * allowed
    p /= p.sum(-1, keepdims=True)
    want = np.einsum("bnts,bsnh->btnh", p, v)
    np.testing.assert_allclose(layers.dot_product_attention(q, k, v, mask=mask), want, rtol=1e-5, atol=1e-6)
    out, probs = layers.dot_product_attention(q, k, v, mask=mask, return_probs=True)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs, p, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Modality experts


def test_tokens_of_modality_k_use_expert_k():
    experts = layers.ModalityExperts(("image", "text", "vl"), 32, expert_of=(0, 1, 2, 2))
    x = _x()
    ids = jnp.array([[0, 0, 1, 1, 2, 3], [1, 0, 3, 2, 0, 1]])
    params = experts.init(jax.random.key(0), x, ids)["params"]
    assert set(params) == {"image", "text", "vl"}
    out = experts.apply({"params": params}, x, ids)
    mlp = layers.Mlp(32)
    per_expert = {name: mlp.apply({"params": params[name]}, x) for name in params}
    which = np.array(["image", "text", "vl", "vl"])[np.asarray(ids)]
    for b in range(2):
        for t in range(6):
            np.testing.assert_array_equal(out[b, t], per_expert[which[b, t]][b, t])
    with pytest.raises(ValueError, match="modality_ids"):
        experts.apply({"params": params}, x, None)


# ----------------------------------------------------------------------------------------------------
# Segments


def _unstack(stacked, depth, name="layer"):
    return {f"{name}_{i}": jax.tree.map(lambda a: a[i], stacked) for i in range(depth)}


def test_segments_with_different_blocks_scan_and_unrolled_agree():
    """VLMo-like: two layers with image/text experts, then one with a VL expert added."""
    segments = (layers.Segment(2, dict(BLOCK, experts=("image", "text"), expert_of=(0, 1, 0, 1))),
                layers.Segment(1, dict(BLOCK, experts=("image", "text", "vl"), expert_of=(0, 1, 2, 2)),
                               name="vl_layer"))
    x = _x()
    ids = jnp.array([[2, 2, 2, 3, 3, 3], [0, 0, 0, 0, 0, 0]])
    broadcast = dict(modality_ids=ids, mask=AttentionMask(lengths=jnp.array([6, 4])))
    scanned = layers.Stack(segments, scan=True)
    params = nn.meta.unbox(scanned.init(jax.random.key(0), x, None, broadcast))["params"]
    assert set(params) == {"layers", "vl_layers"}
    assert set(params["vl_layers"]["experts"]) == {"image", "text", "vl"}
    assert params["layers"]["experts"]["text"]["fc1"]["kernel"].shape == (2, 16, 32)
    unrolled = {**_unstack(params["layers"], 2), **_unstack(params["vl_layers"], 1, "vl_layer")}
    a = scanned.apply({"params": params}, x, None, broadcast)
    b = layers.Stack(segments, scan=False, remat="full").apply({"params": unrolled}, x, None, broadcast)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_drop_path_rises_linearly_over_the_whole_stack():
    seen = []

    class Probe(nn.Module):
        deterministic: bool = True

        @nn.compact
        def __call__(self, carry, rate, xs, broadcast):
            seen.append(rate)
            return carry, {}

    layers.Stack((layers.Segment(2, {}, Probe), layers.Segment(3, {}, Probe, name="top")), drop_path_rate=0.4,
                 scan=False).init(jax.random.key(0), jnp.zeros((1,)))
    np.testing.assert_allclose(seen, [0.0, 0.1, 0.2, 0.3, 0.4], rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Attention probabilities


def _layer_norm(x, p, eps=1e-6):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


@pytest.mark.parametrize("scan", [True, False])
def test_sown_attention_probabilities_are_softmax_qk_of_the_chosen_layers(scan):
    x = _x()
    lengths = jnp.array([6, 4])
    enc = layers.Encoder(3, BLOCK, scan=scan, collect_hidden=True, attention_layers=(1,))
    params = nn.meta.unbox(enc.init(jax.random.key(0), x, kv_lengths=lengths))["params"]
    (_, hidden), state = enc.apply({"params": params}, x, kv_lengths=lengths, mutable=["attention"])
    (probs,) = state["attention"]["probs"]
    assert probs.shape == (1, 2, 2, 6, 6)  # only layer 1
    p = jax.tree.map(lambda a: np.asarray(a[1]), params["layers"]) if scan else params["layer_1"]
    h = _layer_norm(np.asarray(hidden[0]), p["ln1"])
    q = np.einsum("btd,dnh->btnh", h, p["attn"]["query"]["kernel"]) + p["attn"]["query"]["bias"]
    k = np.einsum("btd,dnh->btnh", h, p["attn"]["key"]["kernel"]) + p["attn"]["key"]["bias"]
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(8)
    real = (np.arange(6)[None, :] < np.asarray(lengths)[:, None])[:, None, None, :]
    e = np.exp(logits - np.where(real, logits, -np.inf).max(-1, keepdims=True)) * real
    np.testing.assert_allclose(probs[0], e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(probs[0]).sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.asarray(probs[0])[~np.broadcast_to(real, probs[0].shape)] == 0.0)
    _, nothing = layers.Encoder(3, BLOCK, scan=scan).apply({"params": params}, x, mutable=["attention"])
    assert not nothing.get("attention")


def test_a_tower_sows_the_attention_of_its_chosen_layers():
    from vlfm.models import build_tower

    tower = build_tower(dict(name="vit", image_size=16, patch_size=8, width=16, depth=2, num_heads=2, mlp_dim=32,
                             attention_layers=(0,)))
    images = jnp.zeros((1, 16, 16, 3))
    params = tower.init(jax.random.key(0), images)["params"]
    _, state = tower.apply({"params": params}, images, mutable=["attention"])
    (probs,) = state["attention"]["encoder"]["probs"]
    assert probs.shape[:3] == (1, 1, 2) and probs.shape[-1] == probs.shape[-2]
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# KV-cache decoding


@pytest.mark.parametrize("scan", [True, False])
def test_incremental_decoding_equals_the_full_causal_forward(scan):
    block = dict(BLOCK, causal=True, cross_attention=True)
    x, ctx = _x(t=7), _x(t=4, seed=1)
    decoder = layers.Encoder(2, dict(block, decode=True), scan=scan)
    variables = decoder.init(jax.random.key(0), x, context=ctx)
    params, cache = variables["params"], variables["cache"]
    names = jax.tree_util.tree_leaves_with_path(cache, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    boxed = [v for _, v in names if isinstance(v, nn.LogicallyPartitioned)]
    assert boxed and all(v.names[-4:] == layers.CACHE_AXES for v in boxed)
    full = layers.Encoder(2, block, scan=scan).apply({"params": params}, x, context=ctx)
    step = jax.jit(lambda c, t: decoder.apply({"params": params, "cache": c}, t, context=ctx, mutable=["cache"]))
    out, state = step(cache, x[:, :3])  # prefill
    outs = [out]
    for i in range(3, 7):
        out, state = step(state["cache"], x[:, i:i + 1])
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Co-attention on the stack

FUSION = dict(
    image=dict(name="vit", image_size=16, patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64, pre_norm=True,
               patch_bias=False, scan=False),
    text=dict(name="bert", vocab_size=40, max_len=12, width=32, depth=2, num_heads=2, mlp_dim=64, scan=False,
              dropout_rate=0.0, attn_dropout_rate=0.0),
    width=32, depth=2, num_heads=2, mlp_dim=64, dropout_rate=0.0, attn_dropout_rate=0.0)


def _fuse(cfg, params, batch, train=False, mutable=False):
    model = build_model(cfg)
    return model.apply({"params": params}, batch, rngs={"dropout": jax.random.key(0)}, mutable=mutable,
                       method=lambda m, b: m.fuse(m.encode_text(b["text"], b["text_mask"], train),
                                                  m.encode_image(b["image"], train), 1, train))


def test_co_attention_scan_unrolled_and_remat_agree():
    from vlfm.convert.hf import _stack_layers

    r = np.random.default_rng(0)
    batch = {"image": jnp.asarray(r.normal(size=(2, 16, 16, 3)), jnp.float32),
             "text": jnp.asarray(r.integers(5, 40, size=(2, 6)), jnp.int32),
             "text_mask": jnp.array([[1] * 6, [1] * 4 + [0] * 2], jnp.int32)}
    cfg = dict(FUSION, name="bridgetower", bridge="interpolate", scan=False)
    model = build_model(cfg)
    params = nn.meta.unbox(model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch)["params"])
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    assert "fusion_layers/encoder/layer_1/image_layer/cross_attn/query/kernel" in flat
    fusion = {k: v for k, v in flat.items() if k.startswith("fusion_layers/")}  # the towers stay unrolled
    stacked = flax.traverse_util.unflatten_dict({**{k: v for k, v in flat.items() if k not in fusion},
                                                 **_stack_layers(fusion)}, sep="/")
    assert stacked["fusion_layers"]["encoder"]["layers"]["text_layer"]["mlp"]["fc1"]["kernel"].shape == (2, 32, 64)
    want = _fuse(cfg, params, batch)
    for variant in (dict(scan=True), dict(scan=True, remat="full", attention_layers=(1,))):
        got, state = _fuse(dict(cfg, **variant), stacked, batch, mutable=["attention"])
        probs = state.get("attention", {}).get("fusion_layers", {}).get("encoder", {})
        if variant.get("attention_layers"):
            assert probs["text_probs"][0].shape == (1, 2, 2, 6, 6) and probs["image_probs"][0].shape == (1, 2, 2, 5, 5)
        else:
            assert not probs
        for key in ("text_tokens", "image_tokens", "pooled"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=f"{variant} {key}")
    # drop_path_rate reaches the fusion layers (training only; every dropout rate here is 0).
    dropped = _fuse(dict(cfg, scan=True, drop_path_rate=0.5), stacked, batch, train=True)["pooled"]
    assert not np.allclose(dropped, want["pooled"], atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# Activation axes


def test_an_activation_rule_changes_activations_and_not_parameters():
    from vlfm.core.sharding import DEFAULT_RULES, make_mesh

    mesh = make_mesh((2, 2, 2))
    enc = layers.Encoder(2, BLOCK)
    x = jnp.ones((4, 6, 16))
    changed = tuple((k, "tensor") if k == "activation_embed" else (k, v) for k, v in DEFAULT_RULES)

    def shardings(rules):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            abstract = jax.eval_shape(enc.init, jax.random.key(0), x)
            param_sh = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
            params = jax.jit(lambda k: nn.meta.unbox(enc.init(k, x)))(jax.random.key(0))
            out = jax.jit(lambda p: enc.apply(p, x))(params)
        spec = tuple(out.sharding.spec)
        return jax.tree.map(lambda s: s.spec, param_sh), spec + (None,) * (3 - len(spec))

    params_a, act_a = shardings(DEFAULT_RULES)
    params_b, act_b = shardings(changed)
    assert params_a == params_b
    assert params_a["params"]["layers"]["mlp"]["fc1"]["kernel"] == P(None, "fsdp", "tensor")
    assert act_a == (("data", "fsdp"), None, None) and act_b == (("data", "fsdp"), None, "tensor")
