"""Image-text matching (ITM): negative sampling for fusion models and the ITM loss.

Fusion models score (image, text) pairs, so ITM negatives must be built inside the model's forward
pass, from the batch. Two ways:

- random (ViLT, METER, BridgeTower pretraining): each pair keeps its text and half of the pairs get
  another row's image. The originals draw the "false image" from the dataset; drawing it from
  the global batch is the usual equivalent and keeps the input pipeline unchanged.
- hard (ALBEF, VLMo, BridgeTower ``itm_itc_hard``): from the contrastive similarities, each text
  draws one negative image and each image one negative text with probability
  ``softmax(similarity)`` over the *global* batch, own pair excluded. Each data-parallel shard
  scores its rows against the columns gathered from every shard (``shard_map``, as
  ``vlfm.losses.contrastive`` does), so no device holds the full ``[B, B]`` matrix; the returned
  global indices then gather the negative features from wherever they live (XLA inserts the
  collectives). No gradient flows through the sampling.

Both take an explicit PRNG key (the fusion models use their ``sampling`` stream) and the draws are a
pure function of it and the shard layout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from vlfm.losses.contrastive import _batch_axes
from vlfm.losses.registry import LOSSES, negatives_from_batch


def random_negatives(rng: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Image index per pair and its label, ViLT-style: a random half of the pairs (``B - B//2``) get
    another row's image (label 0), the rest keep their own (label 1)."""
    k_perm, k_shift = jax.random.split(rng)
    rows = jnp.arange(batch_size, dtype=jnp.int32)
    is_neg = jax.random.permutation(k_perm, rows) >= batch_size // 2
    shift = jax.random.randint(k_shift, (batch_size,), 1, max(batch_size, 2), dtype=jnp.int32)
    image_idx = jnp.where(is_neg, (rows + shift) % batch_size, rows)
    return image_idx, (image_idx == rows).astype(jnp.int32)


def _draw(key: jax.Array, logits: jax.Array, rows: jax.Array, row_labels: jax.Array | None = None,
          labels: jax.Array | None = None) -> jax.Array:
    """One column per row with probability softmax(logits), never the row's own column nor (with labels)
    a column of the row's label (labels < 0 are a row's own)."""
    own = jnp.arange(logits.shape[1])[None, :] == rows[:, None]
    if labels is not None:
        own = own | ((row_labels[:, None] == labels[None, :]) & (row_labels[:, None] >= 0))
    return jax.random.categorical(key, jnp.where(own, -jnp.inf, logits), axis=-1).astype(jnp.int32)


def hard_negatives(rng: jax.Array, image_embed: jax.Array, text_embed: jax.Array,
                   scale: jax.Array | float = 1.0, labels: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``(negative image per text, negative text per image)``, global indices ``[B]`` each, drawn with
    probability ``softmax(scale * similarity)`` over the global batch with the positive excluded.

    ``labels`` (int ``[B]``): every column of the row's label is excluded too (R2D2 and UniCL-style data,
    where prompts of one class are positives of each other); a negative label is the row's own. A row
    whose every other column shares its label has no negative to draw (do not batch so)."""
    zi = jax.lax.stop_gradient(image_embed).astype(jnp.float32)
    zt = jax.lax.stop_gradient(text_embed).astype(jnp.float32)
    scale = jax.lax.stop_gradient(jnp.asarray(scale, jnp.float32))
    if labels is None:
        labels = jnp.full(zi.shape[:1], -1, jnp.int32)
    labels = jax.lax.stop_gradient(labels).astype(jnp.int32)

    def local(zi_rows, zt_rows, lab_rows, all_img, all_txt, all_lab, offset, key, s):
        k_img, k_txt = jax.random.split(key)
        rows = offset + jnp.arange(zi_rows.shape[0])
        neg_image = _draw(k_img, s * zt_rows @ all_img.T, rows, lab_rows, all_lab)  # each text's negative image
        neg_text = _draw(k_txt, s * zi_rows @ all_txt.T, rows, lab_rows, all_lab)  # each image's negative text
        return neg_image, neg_text

    mesh = jax.sharding.get_abstract_mesh()
    axes = _batch_axes(mesh)
    if not axes:
        return local(zi, zt, labels, zi, zt, labels, 0, rng, scale)

    def per_shard(zi_rows, zt_rows, lab_rows, key, s):
        index = jax.lax.axis_index(axes)
        gather = lambda x: jax.lax.all_gather(x, axes, tiled=True)  # noqa: E731
        return local(zi_rows, zt_rows, lab_rows, gather(zi_rows), gather(zt_rows), gather(lab_rows),
                     index * zi_rows.shape[0], jax.random.fold_in(key, index), s)

    spec = P(axes, None)
    fn = jax.shard_map(per_shard, mesh=mesh, in_specs=(spec, spec, P(axes), P(), P()),
                       out_specs=(P(axes), P(axes)), check_vma=False)
    return fn(zi, zt, labels, rng, scale)


def hard_negative_pairs(neg_image: jax.Array, neg_text: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The ``3B`` ITM pairs of ALBEF/VLMo as ``(text index, image index, label)``: B positives, B texts
    with their negative image, B images with their negative text; labels ``[1]*B + [0]*2B``."""
    b = neg_image.shape[0]
    rows = jnp.arange(b, dtype=jnp.int32)
    text_idx = jnp.concatenate([rows, rows, neg_text])
    image_idx = jnp.concatenate([rows, neg_image, rows])
    labels = jnp.concatenate([jnp.ones((b,), jnp.int32), jnp.zeros((2 * b,), jnp.int32)])
    return text_idx, image_idx, labels


@LOSSES.register("itm")
@negatives_from_batch
def itm_loss(outputs: dict, batch: dict, logits_key: str = "itm_logits", label_key: str = "itm_labels",
             class_weights: tuple[float, float] | None = None, alpha: float = 0.0) -> tuple[jax.Array, dict]:
    """2-way cross-entropy on the pairs the model built (``outputs["itm_labels"]``: 1 = match).

    ``class_weights`` = (negative, positive) weights, e.g. R2D2's (1, 2); the loss is then the
    weighted mean, as torch's weighted ``cross_entropy``. ``alpha > 0``: momentum distillation (R2D2's
    target-guided distillation on ranking), the target becomes ``(1 - alpha) * onehot + alpha *
    softmax(momentum logits)``, the momentum model scoring the same pairs (``config.momentum.from_student``
    with the draws, ``itm_neg_image`` / ``itm_neg_text``). Metrics: accuracy overall and per class.
    """
    del batch
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"itm: alpha must be in [0, 1], got {alpha}")
    logits = outputs[logits_key].astype(jnp.float32)
    labels = outputs[label_key]
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if alpha > 0:
        teacher = outputs.get("momentum", {}).get(logits_key)
        if teacher is None or teacher.shape != logits.shape:
            raise KeyError(f"itm with alpha > 0 needs the momentum model's {logits_key!r} on the student's pairs: set "
                           "config.momentum.decay and config.momentum.from_student=('itm_neg_image', 'itm_neg_text')"
                           + ("" if teacher is None else f" (momentum gives shape {teacher.shape}, student "
                                                         f"{logits.shape})"))
        teacher = jax.lax.stop_gradient(teacher).astype(jnp.float32)
        targets = (1.0 - alpha) * targets + alpha * jax.nn.softmax(teacher, -1)
    per_pair = optax.softmax_cross_entropy(logits, targets)
    if class_weights is None:
        loss = per_pair.mean()
    else:
        w = jnp.asarray(class_weights, jnp.float32)[labels]
        loss = jnp.sum(w * per_pair) / jnp.sum(w)
    correct = jnp.argmax(logits, -1) == labels
    pos = labels == 1
    metrics = {
        "accuracy": correct.mean(),
        "pos_accuracy": jnp.sum(correct & pos) / jnp.maximum(pos.sum(), 1),
        "neg_accuracy": jnp.sum(correct & ~pos) / jnp.maximum((~pos).sum(), 1),
    }
    if alpha > 0:
        metrics["teacher_accuracy"] = (jnp.argmax(teacher, -1) == labels).mean()
    return loss, metrics
