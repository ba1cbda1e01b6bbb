"""CoCa pieces: caption cross-entropy ignores padding."""

import jax.numpy as jnp
import numpy as np
import optax

from vlfm.losses import LOSSES


def test_caption_ce_ignores_padding():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
    labels = jnp.asarray([[3, 4, 0, 0, 0], [1, 2, 5, 6, 0]], jnp.int32)
    loss, metrics = LOSSES.get("caption_ce")({"caption_logits": logits, "caption_labels": labels}, {})
    ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    expected = (ce[0, :2].sum() + ce[1, :4].sum()) / 6
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    # changing the logits at pad positions leaves the loss unchanged
    logits2 = logits.at[0, 3].set(100.0)
    loss2, _ = LOSSES.get("caption_ce")({"caption_logits": logits2, "caption_labels": labels}, {})
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
