"""VLC: parameters of vlc_base counted by hand, and the MLM pass sees only the kept patches."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_flava import _config
from vlfm.core.tree import strip_boxes
from vlfm.losses import LOSSES
from vlfm.models import build_model

RNGS = {"masking": jax.random.key(1), "sampling": jax.random.key(2), "dropout": jax.random.key(3)}


def test_vlc_base_parameters_by_hand():
    cfg = dict(_config("vlc_base").model)
    model = build_model(cfg)
    batch = dict(image=jnp.zeros((1, 224, 224, 3)), text=jnp.zeros((1, 40), jnp.int32))
    shapes = jax.eval_shape(lambda: model.init(dict(RNGS, params=jax.random.key(0)), batch, train=True))
    flat = flax.traverse_util.flatten_dict(strip_boxes(shapes["params"]), sep="/")
    d, mlp, vocab, n = 768, 3072, 30522, 14 * 14
    layer = lambda w, m: 4 * w * w + 4 * w + 2 * w * m + m + w + 4 * w  # noqa: E731  (attn, MLP, 2 LayerNorms)
    encoder = (vocab + 40 + 2 + 2) * d + (3 * 16 * 16 * d + d) + d + (n + 1) * d + 2 * d + 12 * layer(d, mlp) \
        + 2 * d + d * d + d
    heads = (d * d + d + 2 * d + vocab * d + vocab) + (2 * d + 2)
    dw = 512
    decoder = d * dw + dw + dw + 8 * layer(dw, 2048) + 2 * dw + dw * 768 + 768
    assert sum(flat[k].size for k in flat if not k.startswith("mae_decoder")) == encoder + heads
    assert sum(flat[k].size for k in flat if k.startswith("mae_decoder")) == decoder


@pytest.mark.slow
def test_mlm_pass_sees_only_the_kept_patches():
    cfg = dict(_config("vlc_tiny").model, depth=1, itm="none", scan=False)
    model = build_model(cfg)
    image = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    text = jax.random.randint(jax.random.key(1), (2, 6), 5, 90)
    batch = dict(image=image, text=text, text_mask=jnp.ones((2, 6), bool), mlm_text=text.at[:, 2].set(4),
                 mlm_targets=jnp.full((2, 6), -1).at[:, 2].set(text[:, 2]))
    run = jax.jit(lambda p, b: model.apply({"params": p}, b, train=True, rngs=RNGS))
    shapes = jax.eval_shape(lambda: strip_boxes(model.init(dict(RNGS, params=jax.random.key(0)), batch,
                                                           train=True)["params"]))
    leaves, tree = jax.tree.flatten(shapes)  # random values: traced only, no compiled init
    params = jax.tree.unflatten(tree, [0.3 * jax.random.normal(jax.random.key(i), x.shape)
                                       for i, x in enumerate(leaves)])
    out = run(params, batch)
    mask = np.asarray(out["mae_mask"])
    assert mask.sum(1).tolist() == [10, 10]  # 16 patches, int(16 * 0.4) = 6 kept
    assert out["mae_pred"].shape == out["mae_target"].shape == (2, 16, 8 * 8 * 3)
    loss, metrics = LOSSES.get("mae_pixel")(out, batch)
    assert np.isfinite(float(loss)) and float(metrics["num_masked"]) == 20
    # Repaint one dropped and one kept 8x8 patch of row 0: only the kept one reaches the MLM logits.
    dropped, kept = int(np.flatnonzero(mask[0])[0]), int(np.flatnonzero(~mask[0])[0])

    def repaint(p):
        r, c = divmod(p, 4)
        return dict(batch, image=image.at[0, 8 * r:8 * r + 8, 8 * c:8 * c + 8].add(3.0))

    base = np.asarray(out["mlm_logits"][0])
    np.testing.assert_allclose(np.asarray(run(params, repaint(dropped))["mlm_logits"][0]), base, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(run(params, repaint(kept))["mlm_logits"][0]), base, atol=1e-4)
