import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.models import layers


def _qkv(b=2, t=7, s=7, n=2, h=8, seed=0):
    r = np.random.default_rng(seed)
    return [jnp.asarray(r.normal(size=shape).astype(np.float32)) for shape in ((b, t, n, h), (b, s, n, h), (b, s, n, h))]


def _reference(q, k, v, allowed):
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(allowed, logits, -1e30)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", p, v)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_padding_and_causal_match_reference(causal):
    q, k, v = _qkv()
    lengths = jnp.array([7, 4])
    allowed = (np.arange(7)[None, :] < np.asarray(lengths)[:, None])[:, None, None, :]
    if causal:
        allowed = allowed & np.tril(np.ones((7, 7), bool))[None, None]
    out = layers.dot_product_attention(q, k, v, kv_lengths=lengths, causal=causal)
    np.testing.assert_allclose(out, _reference(q, k, v, allowed), rtol=1e-5, atol=1e-6)


def test_attention_dropout_path_equals_fused_path_without_dropout():
    q, k, v = _qkv()
    lengths = jnp.array([7, 3])
    fused = layers.dot_product_attention(q, k, v, kv_lengths=lengths, causal=True)
    explicit, _ = layers._einsum_attention(q, k, v, layers.AttentionMask(lengths=lengths, causal=True),
                                           dropout_rate=0.0, dropout_rng=jax.random.key(0))
    np.testing.assert_allclose(fused, explicit, rtol=1e-5, atol=1e-6)


def test_unknown_attention_implementation_is_rejected():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="valid"):
        layers.dot_product_attention(q, k, v, implementation="flash")


def test_auto_attention_uses_xla_on_cpu():
    assert layers._resolve_implementation("auto", jnp.bfloat16) == ("cudnn" if jax.default_backend() == "gpu" else "xla")


def test_activations():
    x = jnp.linspace(-3, 3, 7)
    np.testing.assert_allclose(layers.activation("quick_gelu")(x), x * jax.nn.sigmoid(1.702 * x), rtol=1e-6)
    np.testing.assert_allclose(layers.activation("gelu")(x), jax.nn.gelu(x, approximate=False), rtol=1e-6)
    with pytest.raises(KeyError, match="valid"):
        layers.activation("gleu")


def test_sincos_2d_shape_and_values():
    pe = layers.sincos_2d(4, 4, 16)
    assert pe.shape == (16, 16)
    assert np.allclose(pe[0, :4], 0.0) and np.allclose(pe[0, 4:8], 1.0)  # sin(0), cos(0) of x at the origin
    assert len({tuple(r) for r in pe.round(5)}) == 16  # every position distinct


def _encoder(**kw):
    block = dict(num_heads=2, mlp_dim=32, norm=kw.pop("norm", "pre"), ln_eps=1e-6, dtype=jnp.float32,
                 param_dtype=jnp.float32)
    return layers.Encoder(depth=3, block=block, **kw)


def _unstack(params, depth):
    stacked = params["layers"]
    return {f"layer_{i}": jax.tree.map(lambda x: x[i], stacked) for i in range(depth)}


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_scan_and_unrolled_encoders_agree(norm):
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    lengths = jnp.array([5, 3])
    scanned = _encoder(norm=norm, scan=True)
    params = nn.meta.unbox(scanned.init(jax.random.key(0), x, kv_lengths=lengths))["params"]
    unrolled = _encoder(norm=norm, scan=False, remat="full")
    y1 = scanned.apply({"params": params}, x, kv_lengths=lengths)
    y2 = unrolled.apply({"params": _unstack(params, 3)}, x, kv_lengths=lengths)
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["full", "dots", "save_proj"])
def test_remat_keeps_values_and_gradients(policy):
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    plain, remat = _encoder(scan=True), _encoder(scan=True, remat=policy)
    params = plain.init(jax.random.key(0), x)["params"]
    loss = lambda m: lambda p: jnp.sum(m.apply({"params": p}, x) ** 2)  # noqa: E731
    g1 = jax.grad(loss(plain))(params)
    g2 = jax.grad(loss(remat))(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_collect_hidden_returns_every_layer():
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    enc = _encoder(scan=True, collect_hidden=True)
    params = enc.init(jax.random.key(0), x)
    out, hidden = enc.apply(params, x)
    assert hidden.shape == (3, 2, 5, 16)
    np.testing.assert_allclose(hidden[-1], out)


def test_drop_path_is_identity_in_eval_and_random_in_training():
    x = jax.random.normal(jax.random.key(1), (64, 5, 16))
    enc = layers.Encoder(depth=2, block=dict(num_heads=2, mlp_dim=32), drop_path_rate=0.5, scan=True)
    params = enc.init(jax.random.key(0), x)
    a = enc.apply(params, x)
    b = enc.apply(params, x, train=True, rngs={"dropout": jax.random.key(3)})
    c = enc.apply(params, x, train=True, rngs={"dropout": jax.random.key(4)})
    assert not np.allclose(a, b) and not np.allclose(b, c)
    np.testing.assert_allclose(a, enc.apply(params, x), rtol=0)


def test_every_parameter_has_logical_axes():
    x = jnp.zeros((2, 5, 16))
    boxed = jax.eval_shape(_encoder(scan=True).init, jax.random.key(0), x)["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(v, nn.LogicallyPartitioned) for v in leaves)
    assert all(v.names[0] == "layers" for v in leaves)


def test_bf16_compute_keeps_fp32_params():
    x = jnp.ones((2, 5, 16))
    block = dict(num_heads=2, mlp_dim=32, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    enc = layers.Encoder(depth=2, block=block)
    params = enc.init(jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nn.meta.unbox(params)))
    assert enc.apply(params, x).dtype == jnp.bfloat16
