"""Image-text contrastive losses that scale with the data-parallel mesh.

Each data-parallel shard scores its own rows against the columns gathered from every shard (the
"local loss with gathered features" of open_clip), inside ``shard_map``; the gather is
differentiable, so loss and gradients equal the single-device computation on the global batch
while no device materialises more than a ``[B/n, B]`` logit block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from vlfm.core.sharding import BATCH_AXES
from vlfm.losses.registry import LOSSES, couples_batch


def _batch_axes(mesh) -> tuple[str, ...]:
    if mesh is None or mesh.empty:
        return ()
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)


def _sharded(local_fn, zimg, ztxt, *scalars):
    """Runs ``local_fn(zimg_rows, ztxt_rows, all_img, all_txt, row_offset, *scalars)`` per data shard."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = _batch_axes(mesh)
    if not axes:
        return local_fn(zimg, ztxt, zimg, ztxt, 0, *scalars)

    def per_shard(zi, zt, *s):
        all_img = jax.lax.all_gather(zi, axes, tiled=True)
        all_txt = jax.lax.all_gather(zt, axes, tiled=True)
        offset = jax.lax.axis_index(axes) * zi.shape[0]
        value, metrics = local_fn(zi, zt, all_img, all_txt, offset, *s)
        return jax.lax.pmean((value, metrics), axes)

    spec = P(axes, None)
    fn = jax.shard_map(per_shard, mesh=mesh, in_specs=(spec, spec) + (P(),) * len(scalars), out_specs=P(),
                       check_vma=False)
    return fn(zimg, ztxt, *scalars)


@LOSSES.register("softmax_contrastive")
@couples_batch
def softmax_contrastive(outputs: dict, batch: dict, label_smoothing: float = 0.0,
                        prefix: str = "") -> tuple[jax.Array, dict]:
    """Symmetric InfoNCE (CLIP): mean of image->text and text->image cross-entropies.

    Reads ``{prefix}image_embed``, ``{prefix}text_embed``, ``{prefix}logit_scale``: a model with two
    contrastive heads (VLMo's ``vl_``) configures the loss twice (``losses.NAME.fn``)."""
    del batch

    def local(zi, zt, all_img, all_txt, offset, scale):
        labels = offset + jnp.arange(zi.shape[0])
        n = all_txt.shape[0]
        onehot = optax.smooth_labels(jax.nn.one_hot(labels, n), label_smoothing) if label_smoothing else \
            jax.nn.one_hot(labels, n)
        logits_i2t = scale * zi @ all_txt.T
        logits_t2i = scale * zt @ all_img.T
        loss = 0.5 * (optax.softmax_cross_entropy(logits_i2t, onehot).mean()
                      + optax.softmax_cross_entropy(logits_t2i, onehot).mean())
        metrics = {"i2t_accuracy": jnp.mean(jnp.argmax(logits_i2t, -1) == labels),
                   "t2i_accuracy": jnp.mean(jnp.argmax(logits_t2i, -1) == labels)}
        return loss, metrics

    keys = [f"{prefix}{k}" for k in ("image_embed", "text_embed", "logit_scale")]
    missing = [k for k in keys if k not in outputs]
    if missing:
        raise KeyError(f"softmax_contrastive(prefix={prefix!r}) needs model outputs {missing}; the model gave "
                       f"{sorted(outputs)}")
    loss, metrics = _sharded(local, *(outputs[k] for k in keys))
    metrics["temperature"] = outputs[keys[2]]
    return loss, metrics


@LOSSES.register("sigmoid_contrastive")
@couples_batch
def sigmoid_contrastive(outputs: dict, batch: dict) -> tuple[jax.Array, dict]:
    """SigLIP: independent binary losses on every image-text pair, summed and divided by the batch."""
    del batch

    def local(zi, zt, all_img, all_txt, offset, scale, bias):
        del all_img
        n = all_txt.shape[0]
        logits = scale * zi @ all_txt.T + bias
        labels = 2.0 * jax.nn.one_hot(offset + jnp.arange(zi.shape[0]), n) - 1.0
        # Per shard: sum over its rows / its row count; the mean over shards is then the global sum / B.
        loss = -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / zi.shape[0]
        metrics = {"i2t_accuracy": jnp.mean(jnp.argmax(logits, -1) == offset + jnp.arange(zi.shape[0]))}
        return loss, metrics

    bias = outputs.get("logit_bias", jnp.zeros((), jnp.float32))
    loss, metrics = _sharded(local, outputs["image_embed"], outputs["text_embed"], outputs["logit_scale"], bias)
    metrics["temperature"] = outputs["logit_scale"]
    metrics["bias"] = bias
    return loss, metrics
