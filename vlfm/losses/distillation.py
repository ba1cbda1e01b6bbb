"""Knowledge-distillation losses. Teacher outputs arrive in ``outputs["teacher/<name>"]``.

The trainer runs frozen teachers inside the jitted step under ``stop_gradient`` and puts their
output dicts next to the student's, so these losses only compare arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlfm.losses.registry import LOSSES


def _teacher(outputs: dict, teacher: str) -> dict:
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
