"""The attention kernels agree with a numpy reference and with each other (values and gradients); the
cuDNN path's pad-and-pass-lengths wrapper is checked through jax's XLA implementation; the default
recomputing kernel leaves no stacked probabilities among a scanned stack's saved residuals."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

from vlfm.models import attention, layers


def _qkv(b=2, t=13, s=13, n=2, h=8, seed=0):
    r = np.random.default_rng(seed)
    return [jnp.asarray(r.normal(size=shape).astype(np.float32)) for shape in ((b, t, n, h), (b, s, n, h), (b, s, n, h))]


def _reference(q, k, v, allowed, bias=None):
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + np.asarray(bias)
    logits = np.where(allowed, logits, -1e30)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", p, v)


def _allowed(t, s, lengths, causal):
    allowed = (np.arange(s)[None, :] < np.asarray(lengths)[:, None])[:, None, None, :]
    if causal:
        allowed = allowed & np.tril(np.ones((t, s), bool))[None, None]
    return np.broadcast_to(allowed, (len(lengths), 1, t, s))


@pytest.mark.parametrize("causal", [False, True])
def test_padded_wrapper_through_xla_matches_unpadded_reference(causal):
    """The cuDNN path's wrapper (pad 13 -> 16, pass the real lengths) run by jax's XLA kernel: the padding
    must not change the output, with key padding, causal order and a bias."""
    q, k, v = _qkv()
    lengths = jnp.array([13, 6])
    bias = jnp.asarray(np.random.default_rng(3).normal(size=(1, 2, 13, 13)).astype(np.float32))
    run = jax.jit(functools.partial(attention.padded_attention, causal=causal, implementation="xla"))
    out = run(q, k, v, kv_lengths=lengths, bias=bias)
    assert out.shape == q.shape
    np.testing.assert_allclose(out, _reference(q, k, v, _allowed(13, 13, lengths, causal), bias), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "recompute", "jax_xla"])
def test_kernels_match_reference_with_mask_and_bias(impl):
    q, k, v = _qkv(t=5, s=9)
    key_mask = jnp.asarray(np.random.default_rng(1).random((2, 9)) > 0.3).at[:, 0].set(True)
    bias = jnp.asarray(np.random.default_rng(2).normal(size=(2, 1, 5, 9)).astype(np.float32))
    out = layers.dot_product_attention(q, k, v, mask=layers.AttentionMask(key_mask=key_mask), bias=bias,
                                       implementation=impl)
    allowed = np.asarray(key_mask)[:, None, None, :]
    np.testing.assert_allclose(out, _reference(q, k, v, allowed, bias), rtol=1e-5, atol=1e-5)


def test_kernels_share_values_and_gradients():
    """The recomputing kernel's gradients (probabilities rebuilt in the backward pass) must equal the
    default kernel's and jax's."""
    q, k, v = _qkv()
    lengths = jnp.array([13, 6])

    def loss(impl, q, k, v):
        out = layers.dot_product_attention(q, k, v, kv_lengths=lengths, causal=True, implementation=impl)
        return jnp.sum(out * jnp.cos(out))

    results = {impl: jax.jit(jax.value_and_grad(functools.partial(loss, impl), argnums=(0, 1, 2)))(q, k, v)
               for impl in ("xla", "recompute", "jax_xla")}
    for impl in ("recompute", "jax_xla"):
        for a, b in zip(jax.tree.leaves(results["xla"]), jax.tree.leaves(results[impl])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_scanned_stack_saves_no_stacked_probabilities():
    """What a scanned encoder without remat keeps for its backward pass (traced abstractly, nothing
    runs): with the recomputing kernel, no ``[depth, B, H, T, T]`` probabilities; the default kernel
    does keep them, which shows the check sees them."""
    depth, b, t, heads = 3, 2, 6, 2
    x = jax.ShapeDtypeStruct((b, t, 16), jnp.float32)
    found = {}
    for impl in ("recompute", "xla"):
        enc = layers.Encoder(depth, dict(num_heads=heads, mlp_dim=32, causal=True, implementation=impl))
        params = nn.meta.unbox(jax.eval_shape(enc.init, jax.random.key(0), x))["params"]
        residuals = saved_residuals(lambda p, x: enc.apply({"params": p}, x), params, x)
        found[impl] = (depth, b, heads, t, t) in {tuple(aval.shape) for aval, _ in residuals}
    assert found == {"recompute": False, "xla": True}


def test_auto_remat_recomputes_only_scanned_stacks_on_cpu():
    from vlfm.models.stack import resolve_remat

    on_cpu = jax.default_backend() == "cpu"
    assert resolve_remat("auto", scan=True) == ("dots_no_batch" if on_cpu else "none")
    assert resolve_remat("auto", scan=False) == "none"
    assert resolve_remat("full", scan=False) == "full"
    with pytest.raises(KeyError, match="auto"):
        resolve_remat("everything", scan=True)
