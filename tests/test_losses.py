import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vlfm.losses import LOSSES, combined_loss
from vlfm.core.sharding import make_mesh


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _outputs(zi, zt, scale=10.0, bias=-2.0):
    return {"image_embed": zi, "text_embed": zt, "logit_scale": jnp.float32(scale), "logit_bias": jnp.float32(bias)}


def test_softmax_contrastive_hand_computed():
    zi = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    zt = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    s = 2.0
    logits = s * zi @ zt.T  # [[2, 1.2], [0, 1.6]]
    i2t = -np.mean([logits[0, 0] - np.log(np.exp(logits[0]).sum()), logits[1, 1] - np.log(np.exp(logits[1]).sum())])
    t2i = -np.mean([logits[0, 0] - np.log(np.exp(logits[:, 0]).sum()),
                    logits[1, 1] - np.log(np.exp(logits[:, 1]).sum())])
    loss, metrics = LOSSES.get("softmax_contrastive")(_outputs(zi, zt, s), {})
    np.testing.assert_allclose(loss, (i2t + t2i) / 2, rtol=1e-6)
    assert float(metrics["i2t_accuracy"]) == 1.0


def test_sigmoid_contrastive_hand_computed():
    zi = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    zt = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    t, b = 3.0, -1.0
    logits = t * zi @ zt.T + b
    labels = 2 * np.eye(2) - 1
    expected = -np.sum(np.log(1 / (1 + np.exp(-labels * logits)))) / 2
    loss, _ = LOSSES.get("sigmoid_contrastive")(_outputs(zi, zt, t, b), {})
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["softmax_contrastive", "sigmoid_contrastive"])
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_gathered_loss_and_grads_equal_single_device(name, mesh_shape):
    rng = np.random.default_rng(0)
    zi, zt = _unit(rng, 32, 16), _unit(rng, 32, 16)
    fn = LOSSES.get(name)

    def loss(a, b, scale):
        return fn(_outputs(a, b, scale), {})[0]

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
    ref_loss, ref_grads = jax.jit(grad)(zi, zt, jnp.float32(10.0))
    mesh = make_mesh(mesh_shape)
    with jax.set_mesh(mesh):
        sh = NamedSharding(mesh, P(("data", "fsdp"), None))
        got_loss, got_grads = jax.jit(grad)(jax.device_put(zi, sh), jax.device_put(zt, sh), jnp.float32(10.0))
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-5)
    for g, r in zip(got_grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


def test_masked_xent_ignores_unmasked_positions():
    logits = np.log(np.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]], np.float32))
    targets = np.array([[0, -1, 1]])
    loss, m = LOSSES.get("masked_xent")({"mlm_logits": logits}, {"mlm_targets": targets})
    np.testing.assert_allclose(loss, -(np.log(0.7) + np.log(0.3)) / 2, rtol=1e-5)
    assert float(m["accuracy"]) == 0.5 and float(m["num_targets"]) == 2


def test_combined_loss_weights_and_prefixes():
    logits = np.log(np.array([[0.25, 0.75]], np.float32))
    total = combined_loss({"softmax_xent": {"weight": 0.5}})
    loss, m = total({"logits": logits}, {"label": np.array([1])})
    np.testing.assert_allclose(loss, -0.5 * np.log(0.75), rtol=1e-6)
    assert "softmax_xent/accuracy" in m and "softmax_xent/loss" in m
    with pytest.raises(KeyError, match="valid names"):
        combined_loss({"softmax_xnet": {}})
