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
from vlfm.losses.registry import LOSSES, couples_batch, reads_batch


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
@reads_batch()
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
@reads_batch()
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


def _sharded_rows(local_fn, rows: dict, columns: dict, scalars: dict):
    """Runs ``local_fn(local_rows, gathered_rows, columns, scalars, row_offset)`` per data shard.

    ``rows``: batch-major arrays split over the data shards (each shard scores its own rows against
    every shard's, gathered differentiably); ``columns``: extra columns every shard sees whole (a
    queue of earlier embeddings); ``scalars``: replicated values (logit scales)."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = _batch_axes(mesh)
    if not axes:
        return local_fn(rows, rows, columns, scalars, 0)

    def per_shard(r, c, s):
        gathered = jax.tree.map(lambda x: jax.lax.all_gather(x, axes, tiled=True), r)
        offset = jax.lax.axis_index(axes) * jax.tree.leaves(r)[0].shape[0]
        return jax.lax.pmean(local_fn(r, gathered, c, s, offset), axes)

    row_specs = jax.tree.map(lambda x: P(axes, *(None,) * (x.ndim - 1)), rows)
    fn = jax.shard_map(per_shard, mesh=mesh, in_specs=(row_specs, jax.tree.map(lambda _: P(), columns),
                                                       jax.tree.map(lambda _: P(), scalars)),
                       out_specs=P(), check_vma=False)
    return fn(rows, columns, scalars)


_NEG = -1e9  # logit of a column that does not exist yet (an unfilled queue slot); exp() of it is 0


def _multi_positive_xent(logits: jax.Array, positives: jax.Array, soft: jax.Array | None, alpha: float) -> jax.Array:
    """Mean cross-entropy against targets uniform over each row's positives, optionally mixed with a
    teacher's distribution: ``(1 - alpha) * uniform(positives) + alpha * soft``."""
    targets = positives / positives.sum(-1, keepdims=True)
    if soft is not None:
        targets = (1.0 - alpha) * targets + alpha * soft
    return optax.softmax_cross_entropy(logits, jax.lax.stop_gradient(targets)).mean()


@LOSSES.register("multi_positive_contrastive")
@couples_batch
def multi_positive_contrastive(outputs: dict, batch: dict, label_key: str | None = None, prefix: str = "",
                               queue: bool = False, alpha: float = 0.0, columns: str = "student"
                               ) -> tuple[jax.Array, dict]:
    """UniCL's image-text-label contrast (Yang et al. 2022), with MoCo/ALBEF queues and momentum distillation.

    Positives of a row are every column with the same label (``batch[label_key]``): image-label data enters
    as prompt-filled class names with the class id, each image-text pair with a label of its own. A
    negative label (or ``label_key=None``) makes a row its own only positive, so with unique labels this is
    exactly ``softmax_contrastive``. The target is uniform over the positives, in both directions; the loss is
    the mean of the two directions' cross-entropies.

    ``queue``: the columns also include the momentum queue (``outputs["queue"]``: ``{prefix}image_embed``,
    ``{prefix}text_embed``, ``valid`` and, with ``label_key``, that key); unfilled slots are masked.
    ``columns="momentum"`` scores against the momentum encoders' embeddings of the batch (ALBEF, MoCo) instead
    of the student's own. ``alpha > 0``: momentum distillation, the target becomes
    ``(1 - alpha) * positives + alpha * softmax(teacher scores)``, the teacher scoring the momentum image
    (text) embeddings against the same columns with the momentum model's ``logit_scale`` (``1 / tau``).
    Everything momentum comes from ``config.momentum`` (``vlfm.train.momentum``).
    """
    if columns not in ("student", "momentum"):
        raise ValueError(f"multi_positive_contrastive: columns must be 'student' or 'momentum', got {columns!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"multi_positive_contrastive: alpha must be in [0, 1], got {alpha}")
    keys = [f"{prefix}{k}" for k in ("image_embed", "text_embed", "logit_scale")]
    _require(outputs, keys, "multi_positive_contrastive", prefix)
    momentum = None
    if alpha > 0 or columns == "momentum":
        if "momentum" not in outputs:
            raise KeyError("multi_positive_contrastive with alpha > 0 or columns='momentum' needs the momentum "
                           "encoders' outputs: set config.momentum.decay (vlfm.train.momentum)")
        momentum = outputs["momentum"]
        _require(momentum, keys, "multi_positive_contrastive (momentum outputs)", prefix)
    zi, zt, scale = (outputs[k] for k in keys)
    n = zi.shape[0]
    if label_key is None:
        labels = jnp.full((n,), -1, jnp.int32)
    else:
        if label_key not in batch:
            raise KeyError(f"multi_positive_contrastive: label_key {label_key!r} is not in the batch "
                           f"(keys: {sorted(batch)})")
        labels = batch[label_key].astype(jnp.int32).reshape(n)
    rows = {"zi": zi, "zt": zt, "label": labels}
    scalars = {"scale": scale}
    if momentum is not None:
        rows.update(mzi=jax.lax.stop_gradient(momentum[keys[0]]), mzt=jax.lax.stop_gradient(momentum[keys[1]]))
        scalars["mscale"] = jax.lax.stop_gradient(momentum[keys[2]])
    extra = {}
    if queue:
        if "queue" not in outputs:
            raise KeyError("multi_positive_contrastive(queue=True) needs outputs['queue']: set "
                           "config.momentum.queue_size and queue_keys (vlfm.train.momentum)")
        q = outputs["queue"]
        need = keys[:2] + ["valid"] + ([label_key] if label_key else [])
        _require(q, need, "multi_positive_contrastive (queue)", prefix)
        extra = {"img": q[keys[0]], "txt": q[keys[1]], "valid": q["valid"],
                 "label": (q[label_key].astype(jnp.int32).reshape(-1) if label_key
                           else jnp.full(q["valid"].shape, -1, jnp.int32))}
        extra = jax.lax.stop_gradient(extra)

    def local(mine, every, cols, s, offset):
        own = offset + jnp.arange(mine["zi"].shape[0])
        batch_pos = (((mine["label"][:, None] == every["label"][None, :]) & (mine["label"][:, None] >= 0))
                     | (own[:, None] == jnp.arange(every["label"].shape[0])[None, :]))
        img_cols, txt_cols = (every["mzi"], every["mzt"]) if columns == "momentum" else (every["zi"], every["zt"])
        positives, mask = batch_pos, None
        if cols:
            queue_pos = (mine["label"][:, None] == cols["label"][None, :]) & (mine["label"][:, None] >= 0)
            positives = jnp.concatenate([batch_pos, queue_pos & cols["valid"][None, :]], axis=1)
            mask = jnp.concatenate([jnp.ones(batch_pos.shape[1], bool), cols["valid"]])
            img_cols = jnp.concatenate([img_cols, cols["img"].astype(img_cols.dtype)])
            txt_cols = jnp.concatenate([txt_cols, cols["txt"].astype(txt_cols.dtype)])

        def scores(scale, a, b):
            logits = scale * a @ b.T
            return logits if mask is None else jnp.where(mask[None, :], logits, _NEG)

        positives = positives.astype(jnp.float32)
        logits_i2t, logits_t2i = scores(s["scale"], mine["zi"], txt_cols), scores(s["scale"], mine["zt"], img_cols)
        soft_i2t = soft_t2i = None
        if alpha > 0:
            soft_i2t = jax.nn.softmax(scores(s["mscale"], mine["mzi"], txt_cols if columns == "momentum" else
                                             _momentum_cols(every["mzt"], cols, "txt")), -1)
            soft_t2i = jax.nn.softmax(scores(s["mscale"], mine["mzt"], img_cols if columns == "momentum" else
                                             _momentum_cols(every["mzi"], cols, "img")), -1)
        loss = 0.5 * (_multi_positive_xent(logits_i2t, positives, soft_i2t, alpha)
                      + _multi_positive_xent(logits_t2i, positives, soft_t2i, alpha))
        hit = lambda logits: jnp.take_along_axis(positives, jnp.argmax(logits, -1)[:, None], 1)[:, 0]  # noqa: E731
        metrics = {"i2t_accuracy": hit(logits_i2t).mean(), "t2i_accuracy": hit(logits_t2i).mean(),
                   "positives_per_row": positives.sum(-1).mean()}
        return loss, metrics

    loss, metrics = _sharded_rows(local, rows, extra, scalars)
    metrics["temperature"] = scale
    return loss, metrics


def _momentum_cols(batch_cols: jax.Array, queue_cols: dict, key: str) -> jax.Array:
    """The teacher's columns: the momentum embeddings of the batch, then the queue (already momentum ones)."""
    if not queue_cols:
        return batch_cols
    return jnp.concatenate([batch_cols, queue_cols[key].astype(batch_cols.dtype)])


def _require(outputs: dict, keys, what: str, prefix: str) -> None:
    missing = [k for k in keys if k not in outputs]
    if missing:
        raise KeyError(f"{what}(prefix={prefix!r}) needs {missing}; given {sorted(outputs)}")
