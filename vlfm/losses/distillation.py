"""Knowledge-distillation losses. Teacher outputs arrive in ``outputs["teacher/<name>"]``;
``teacher="momentum"`` reads the momentum (EMA) model's outputs (``outputs["momentum"]``,
``config.momentum``) instead.

The trainer runs frozen teachers inside the jitted step under ``stop_gradient`` and puts their
output dicts next to the student's, so these losses only compare arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlfm.losses.registry import LOSSES


def _teacher(outputs: dict, teacher: str) -> dict:
    if teacher == "momentum":
        if "momentum" not in outputs:
            raise KeyError("teacher='momentum' needs the momentum model's outputs: set config.momentum.decay")
        return outputs["momentum"]
    key = f"teacher/{teacher}"
    if key not in outputs:
        have = sorted(k[len("teacher/"):] for k in outputs if k.startswith("teacher/"))
        raise KeyError(f"no outputs of teacher {teacher!r}; this task's teachers: {have}")
    return outputs[key]


def _positions(batch: dict, mask_key: str | None, ignore_index: int, shape) -> jax.Array:
    """Which positions count: all, or those whose ``mask_key`` target is not ``ignore_index``."""
    if mask_key is None:
        return jnp.ones(shape, bool)
    return batch[mask_key] != ignore_index


@LOSSES.register("kd_logits")
def kd_logits(outputs: dict, batch: dict, *, teacher: str, student_key: str = "logits", teacher_key: str | None = None,
              temperature: float = 1.0, mask_key: str | None = None, ignore_index: int = -1) -> tuple[jax.Array, dict]:
    """Hinton's soft-label loss ``tau^2 * KL(softmax(t/tau) || softmax(s/tau))``, averaged over
    examples (and over the positions whose ``mask_key`` target is set, e.g. masked tokens)."""
    s = outputs[student_key].astype(jnp.float32) / temperature
    t = jax.lax.stop_gradient(_teacher(outputs, teacher)[teacher_key or student_key].astype(jnp.float32))
    t = t / temperature
    t_logp = jax.nn.log_softmax(t, axis=-1)
    kl = jnp.sum(jnp.exp(t_logp) * (t_logp - jax.nn.log_softmax(s, axis=-1)), axis=-1)
    where = _positions(batch, mask_key, ignore_index, kl.shape)
    loss = temperature ** 2 * jnp.sum(jnp.where(where, kl, 0.0)) / jnp.maximum(where.sum(), 1)
    agree = jnp.where(where, jnp.argmax(s, -1) == jnp.argmax(t, -1), False).sum() / jnp.maximum(where.sum(), 1)
    return loss, {"teacher_agreement": agree}


@LOSSES.register("kd_hidden")
def kd_hidden(outputs: dict, batch: dict, *, teacher: str, student_key: str = "tokens", teacher_key: str | None = None,
              distance: str = "l2") -> tuple[jax.Array, dict]:
    """Hidden-state regression to a teacher: mean squared error or ``1 - cosine`` per vector."""
    del batch
    s = outputs[student_key].astype(jnp.float32)
    t = jax.lax.stop_gradient(_teacher(outputs, teacher)[teacher_key or student_key].astype(jnp.float32))
    if s.shape != t.shape:
        raise ValueError(f"student {student_key} {s.shape} and teacher {t.shape} differ; add a projection")
    if distance == "l2":
        per_vector = jnp.mean((s - t) ** 2, axis=-1)
    elif distance == "cosine":
        cos = jnp.sum(s * t, -1) / (jnp.linalg.norm(s, axis=-1) * jnp.linalg.norm(t, axis=-1) + 1e-8)
        per_vector = 1.0 - cos
    else:
        raise ValueError(f"unknown distance {distance!r}; valid: l2, cosine")
    return jnp.mean(per_vector), {}


@LOSSES.register("kd_attention")
def kd_attention(outputs: dict, batch: dict, *, teacher: str, student_key: str = "attention",
                 teacher_key: str | None = None, eps: float = 1e-8) -> tuple[jax.Array, dict]:
    """KL between teacher and student attention distributions ``[..., queries, keys]`` (rows sum
    to 1), averaged over every query row: the fusion-to-dual-encoder distillation signal."""
    del batch
    s = outputs[student_key].astype(jnp.float32)
    t = jax.lax.stop_gradient(_teacher(outputs, teacher)[teacher_key or student_key].astype(jnp.float32))
    kl = jnp.sum(t * (jnp.log(t + eps) - jnp.log(s + eps)), axis=-1)
    return jnp.mean(kl), {}


def _path(tree: dict, path: str, what: str):
    """``tree["a"]["b"]...`` for ``path="a/b/..."``; a missing step fails naming the keys there."""
    node = tree
    for i, step in enumerate(path.split("/")):
        if not isinstance(node, dict) or step not in node:
            have = sorted(node) if isinstance(node, dict) else type(node).__name__
            raise KeyError(f"{what}: no {'/'.join(path.split('/')[:i + 1])!r} (have {have}); sow attention with the "
                           "model's attention_layers and return it with forward.mutable=('attention',)")
        node = node[step]
    return node


def _sown(tree: dict, path: str, call: int, layer: int, what: str) -> jax.Array:
    """One sown attention part: sown values are a tuple over the module's calls, each stacked over the
    chosen layers; this picks call ``call`` and layer row ``layer``."""
    value = _path(tree, path, what)
    if isinstance(value, (tuple, list)):
        value = value[call]
    return value[layer].astype(jnp.float32)


def _masked_log_softmax(logits: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    if key_mask is not None:
        logits = jnp.where(key_mask, logits, -jnp.inf)
    return jax.nn.log_softmax(logits, axis=-1)


def _row_kl(t_logp: jax.Array, s_logp: jax.Array) -> jax.Array:
    """``KL(t || s)`` per row; keys the teacher gives no mass (masked) contribute nothing."""
    t = jnp.exp(t_logp)
    return jnp.sum(jnp.where(t > 0, t * (t_logp - s_logp), 0.0), axis=-1)


def cross_modal_attention(q: jax.Array, k: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    """Log-probabilities ``[B, H, Tq, Tk]`` of queries ``q [B, Tq, H, D]`` attending over keys
    ``k [B, Tk, H, D]`` of the other modality (scaled by ``1/sqrt(D)``), masked keys excluded."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) / jnp.sqrt(q.shape[-1])
    return _masked_log_softmax(logits, None if key_mask is None else key_mask[:, None, None, :])


@LOSSES.register("kd_cross_attention")
def kd_cross_attention(outputs: dict, batch: dict, *, teacher: str, teacher_key: str = "attention/encoder",
                       teacher_part: str = "logits", student_image: str = "attention/image_tower/encoder",
                       student_text: str = "attention/text_tower/encoder", call: int = 0, layer: int = -1,
                       eps: float = 1e-30) -> tuple[jax.Array, dict]:
    """DiDE's cross-modal attention distillation, ``KL(teacher || student)`` for image-to-text plus
    text-to-image attention, each averaged over examples, heads and (non-padding) query tokens.

    Student: its towers encode image and text apart; their last layer's sown queries and keys
    (``{student_image,student_text}/{queries,keys}``) give ``softmax(Q_I K_T^T / sqrt(d))`` over the
    text tokens and ``softmax(Q_T K_I^T / sqrt(d))`` over the image tokens, per head. Teacher: a fusion
    encoder's attention over ``[text; image]`` (``teacher_key/{teacher_part}``, ``[B, H, Lt+Li, Lt+Li]``
    with ``Lt = batch["text"].shape[1]``), cut into its two cross-modal blocks and re-normalised over
    the other modality: ``teacher_part="logits"`` takes a softmax of the cut scores (the spec's
    form), ``"probs"`` divides the cut probabilities by their sum; the two are equal in exact
    arithmetic (``p_j / sum_S p = exp(s_j) / sum_S exp(s)``), the logits avoid underflow. Text padding
    (``batch["text_mask"]``) is excluded as keys and as queries. ``call`` / ``layer`` pick the sown
    entry (which call of the module, which of its chosen layers; default the first call, last layer).
    """
    if teacher_part not in ("logits", "probs"):
        raise ValueError(f"teacher_part must be 'logits' or 'probs', got {teacher_part!r}")
    q_i = _sown(outputs, f"{student_image}/queries", call, layer, "student image queries")
    k_i = _sown(outputs, f"{student_image}/keys", call, layer, "student image keys")
    q_t = _sown(outputs, f"{student_text}/queries", call, layer, "student text queries")
    k_t = _sown(outputs, f"{student_text}/keys", call, layer, "student text keys")
    t_att = jax.lax.stop_gradient(_sown(_teacher(outputs, teacher), f"{teacher_key}/{teacher_part}", call, layer,
                                        f"teacher {teacher!r} attention"))
    lt, li = q_t.shape[1], q_i.shape[1]
    if t_att.shape[-1] != lt + li or t_att.shape[-2] != lt + li:
        raise ValueError(f"teacher attention {t_att.shape} does not cover the student's {lt} text + {li} image "
                         "tokens (the two must tokenise alike)")
    if t_att.shape[1] != q_i.shape[2]:
        raise ValueError(f"teacher has {t_att.shape[1]} heads, the student {q_i.shape[2]}")
    text_mask = batch.get("text_mask")
    text_mask = jnp.ones(batch["text"].shape, bool) if text_mask is None else text_mask.astype(bool)
    keys_t = text_mask[:, None, None, :]
    t_i2t, t_t2i = t_att[:, :, lt:, :lt], t_att[:, :, :lt, lt:]
    if teacher_part == "logits":
        t_i2t, t_t2i = _masked_log_softmax(t_i2t, keys_t), _masked_log_softmax(t_t2i, None)
    else:
        renorm = lambda p: jnp.log(p + eps) - jnp.log(jnp.sum(p, -1, keepdims=True) + eps)  # noqa: E731
        t_i2t = jnp.where(keys_t, renorm(jnp.where(keys_t, t_i2t, 0.0)), -jnp.inf)
        t_t2i = renorm(t_t2i)
    s_i2t = cross_modal_attention(q_i, k_t, text_mask)
    s_t2i = cross_modal_attention(q_t, k_i)
    kl_i2t = jnp.mean(_row_kl(t_i2t, s_i2t))
    rows = jnp.broadcast_to(text_mask[:, None, :], s_t2i.shape[:3])
    kl_t2i = jnp.sum(jnp.where(rows, _row_kl(t_t2i, s_t2i), 0.0)) / jnp.maximum(rows.sum(), 1)
    return kl_i2t + kl_t2i, {"kl_i2t": kl_i2t, "kl_t2i": kl_t2i}
