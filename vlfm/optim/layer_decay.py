"""Layer-wise learning-rate decay for fine-tuning (BEiT / ELECTRA style), as an optax transform.

Layer ``i`` of an ``L``-layer encoder (0 = lowest) is scaled by ``decay ** (L - i)``; embeddings
(counted as the layer below the stack) by ``decay ** (L + 1)``; heads and norms after the stack by 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from vlfm.optim.param_groups import scale_by_path


def layerwise_lr_decay(decay: float, num_layers: int, *, stacked: str = r"(.*/)?encoder/layers/.*",
                       unstacked: str = r"(.*/)?encoder/layer_(\d+)/.*",
                       embeddings: Sequence[str] = (r".*embed.*", r".*/cls$", r".*ln_pre/.*")) -> optax.GradientTransformation:
    """Scales updates by depth. Scanned stacks (``encoder/layers``, leading layer axis) get a
    per-layer vector along axis 0; unrolled stacks (``encoder/layer_{i}``) a per-tensor factor."""
    stacked_re, unstacked_re = re.compile(stacked), re.compile(unstacked)
    embed_res = [re.compile(p) for p in embeddings]
    per_layer = jnp.asarray([decay ** (num_layers - i) for i in range(num_layers)], jnp.float32)

    def scale_for(path: str, update: jax.Array) -> jax.Array:
        if stacked_re.fullmatch(path):
            if update.shape[0] != num_layers:
                raise ValueError(f"{path}: leading axis {update.shape[0]} is not the {num_layers} layers")
            return (update * per_layer.reshape((-1,) + (1,) * (update.ndim - 1))).astype(update.dtype)
        m = unstacked_re.fullmatch(path)
        if m:
            return update * (decay ** (num_layers - int(m.group(2))))
        if any(r.fullmatch(path) for r in embed_res):
            return update * (decay ** (num_layers + 1))
        return update

    return scale_by_path(scale_for)
