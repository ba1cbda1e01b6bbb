"""Masked image modelling losses: MAE normalised-pixel regression and masked feature regression.

Discrete-token MIM (FLAVA, BEiT) is ``masked_xent`` over the model's code logits and targets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlfm.losses.registry import LOSSES


def normalise_patches(target: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Per patch: ``(x - mean) / sqrt(var + eps)`` over the last axis (MAE's ``norm_pix_loss``)."""
    target = target.astype(jnp.float32)
    mean = target.mean(-1, keepdims=True)
    var = target.var(-1, keepdims=True)
    return (target - mean) / jnp.sqrt(var + eps)


def _masked_mean(per_patch: jax.Array, mask: jax.Array) -> jax.Array:
    m = mask.astype(jnp.float32)
    return jnp.sum(per_patch * m) / jnp.maximum(m.sum(), 1.0)


@LOSSES.register("mae_pixel")
def mae_pixel(outputs: dict, batch: dict, pred_key: str = "mae_pred", target_key: str = "mae_target",
              mask_key: str = "mae_mask", norm_pix: bool = True, eps: float = 1e-6) -> tuple[jax.Array, dict]:
    """MAE / VLC pixel loss: ``sum_masked mean_d (pred - target)^2 / #masked``.

    ``pred [B, N, P*P*C]``, ``target`` the patch pixels (``patchify``), ``mask [B, N]`` True where a
    patch was dropped; each read from the outputs, else from the batch. ``norm_pix`` normalises each
    target patch (the MAE / VLC default). The metric ``mean_baseline`` is the same loss for a model that
    predicts every patch's own mean (0 after normalisation), the bar a model must get below.
    """
    get = lambda k: outputs[k] if k in outputs else batch[k]  # noqa: E731
    pred, target, mask = get(pred_key).astype(jnp.float32), get(target_key), get(mask_key)
    target = normalise_patches(target, eps) if norm_pix else target.astype(jnp.float32)
    loss = _masked_mean(jnp.mean(jnp.square(pred - target), -1), mask)
    mean_pred = jnp.broadcast_to(target.mean(-1, keepdims=True), target.shape)
    baseline = _masked_mean(jnp.mean(jnp.square(mean_pred - target), -1), mask)
    return loss, {"mean_baseline": baseline, "num_masked": jnp.sum(mask).astype(jnp.float32)}


@LOSSES.register("masked_feature_regression")
def masked_feature_regression(outputs: dict, batch: dict, pred_key: str = "mfr_pred",
                              target_key: str = "mfr_target", mask_key: str = "mfr_mask",
                              distance: str = "l2", copy_key: str = "mfr_copy") -> tuple[jax.Array, dict]:
    """Regression of masked tokens' features onto targets taken under ``stop_gradient``.

    ``distance``: ``l2`` (mean over features of the squared error) or ``cosine`` (1 - cosine similarity),
    averaged over positions where ``mask [B, N]`` is True. Metrics, the bars the loss must get below:
    ``mean_baseline``, the same loss for predicting the mean target of the batch's masked tokens at every
    masked token; ``visible_mean_baseline``, predicting the mean target of each example's visible
    (unmasked) tokens; ``copy_baseline`` when the outputs hold ``copy_key`` (a feature per token a model could
    copy, e.g. the most similar visible token's: Visual Parsing's grouped masking keeps it high).
    """
    get = lambda k: outputs[k] if k in outputs else batch[k]  # noqa: E731
    pred = get(pred_key).astype(jnp.float32)
    target = jax.lax.stop_gradient(get(target_key).astype(jnp.float32))
    if distance == "l2":
        per_token = lambda p: jnp.mean(jnp.square(p - target), -1)  # noqa: E731
    elif distance == "cosine":
        unit = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-6)  # noqa: E731
        per_token = lambda p: 1.0 - jnp.sum(unit(p) * unit(target), -1)  # noqa: E731
    else:
        raise ValueError(f"unknown distance {distance!r}; valid: l2, cosine")
    mask = get(mask_key)
    m = mask.astype(jnp.float32)[..., None]
    mean_target = jnp.sum(target * m, axis=(0, 1)) / jnp.maximum(m.sum(), 1.0)
    visible = 1.0 - m
    visible_mean = jnp.sum(target * visible, axis=1, keepdims=True) / jnp.maximum(visible.sum(1, keepdims=True), 1.0)
    metrics = {"num_masked": jnp.sum(mask).astype(jnp.float32),
               "mean_baseline": _masked_mean(per_token(jnp.broadcast_to(mean_target, target.shape)), mask),
               "visible_mean_baseline": _masked_mean(per_token(jnp.broadcast_to(visible_mean, target.shape)), mask)}
    if copy_key in outputs:
        metrics["copy_baseline"] = _masked_mean(per_token(outputs[copy_key].astype(jnp.float32)), mask)
    return _masked_mean(per_token(pred), mask), metrics
