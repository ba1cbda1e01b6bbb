"""Inter-modality flow (IMF; Visual Parsing, Xue et al. 2021): how much of a fusion model's attention
flow crosses between text and image, per layer.

Following the attention rollout of Abnar & Zuidema (2020), the flow through layers ``0..l`` is the
product of the layers' head-averaged attention matrices (row = query, column = key), each with the
residual connection mixed in: ``Â_k = (1 - residual) A_k + residual I`` and ``F_l = Â_l Â_{l-1} ... Â_0``.
Over the real tokens (text padding left out), with ``L`` the text and ``V`` the image positions:

    IMF_l = ( Σ_{i∈V, j∈L} F_l[i, j] + Σ_{i∈L, j∈V} F_l[i, j] ) / Σ_{i, j} F_l[i, j]

``text_to_image`` is the first term over the denominator (image tokens drawing from text tokens:
information flows text -> image), ``image_to_text`` the second; ``imf`` is their sum. The
per-example values are averaged over the held-out examples. ``attention_imf`` is the same share for
layer ``l``'s own attention (``F = A_l``, no composition), and ``uniform_imf`` what every layer would
score if each token attended evenly to all real tokens (``2 |L| |V| / (|L| + |V|)^2``), the bar that
tells a model that mixes modalities more or less than chance.

Co-attention fusion (METER's default, BridgeTower) has no joint self-attention, and the rollout above
says nothing about it: each side's self-attention softmax covers its own modality and its
cross-attention softmax the other one, so under the rollout a text token's layer ``l`` flow is
``r Ŝ_t`` on the text and ``(1 - r) C_ti`` on the image of the layer's input (``Ŝ = (1 - r) A + r I``,
``C`` the cross-attention; likewise for image tokens), whatever the weights. Every row puts the same
``1 - r`` on the other modality, so the composed share is a two-state chain's:
``IMF_l = (1 - (2r - 1)^(l+1)) / 2`` for every input and every trained model (``co_attention_imf``;
0.5 at every layer for ``r = 0.5``). ``co_attention_flow`` builds those layer matrices; the fusion
models' ``joint_attention`` refuses co-attention for this reason. A measure of how much co-attention
fusion actually mixes would have to weigh the branches by what they add (e.g. the norms of the
attention outputs against the residual), not by the attention probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from vlfm.data.pipeline import build_dataset, eval_examples
from vlfm.evaluators.predict import eval_batches, process_sum
from vlfm.evaluators.registry import EVALUATORS

INPUT_KEYS = ("image", "text", "text_mask")


def attention_rollout(probs: np.ndarray, residual: float = 0.5) -> np.ndarray:
    """``probs [..., layers, T, T]`` -> the flow through layers ``0..l`` for every ``l``, same shape:
    ``F_l = Â_l F_{l-1}`` with ``Â = (1 - residual) A + residual I`` (``residual=0``: plain products)."""
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    probs = np.asarray(probs, np.float64)
    eye = np.eye(probs.shape[-1])
    flow = np.broadcast_to(eye, probs.shape[:-3] + eye.shape)
    out = np.empty_like(probs)
    for layer in range(probs.shape[-3]):
        flow = ((1.0 - residual) * probs[..., layer, :, :] + residual * eye) @ flow
        out[..., layer, :, :] = flow
    return out


def modality_flow(flow: np.ndarray, modality: np.ndarray) -> dict[str, np.ndarray]:
    """Cross-modal shares of ``flow [B, ..., T, T]`` (row = query) with ``modality [B, T]`` (0 text,
    1 image, -1 left out): ``text_to_image`` (image rows, text columns), ``image_to_text`` (text rows,
    image columns) and ``imf`` (their sum), each divided by the total over real rows and columns;
    arrays of shape ``[B, ...]``."""
    flow = np.asarray(flow, np.float64)
    modality = np.asarray(modality)
    extra = flow.ndim - 3  # axes between the batch and the matrix (layers)
    shape = (modality.shape[0],) + (1,) * extra + (modality.shape[1],)
    text, image = (modality == 0).reshape(shape), (modality == 1).reshape(shape)
    real = text | image

    def mass(rows, cols):
        return np.sum(flow * rows[..., :, None] * cols[..., None, :], axis=(-2, -1))

    total = np.maximum(mass(real, real), np.finfo(np.float64).tiny)
    out = {"text_to_image": mass(image, text) / total, "image_to_text": mass(text, image) / total}
    out["imf"] = out["text_to_image"] + out["image_to_text"]
    return out


def co_attention_flow(text_self: np.ndarray, text_cross: np.ndarray, image_self: np.ndarray,
                      image_cross: np.ndarray, residual: float = 0.5) -> np.ndarray:
    """One co-attention layer's rollout matrix over ``[text; image]`` (module docstring): text rows
    ``[r Ŝ_t, (1 - r) C_ti]``, image rows ``[(1 - r) C_it, r Ŝ_i]``; inputs ``[..., Lt, Lt]``,
    ``[..., Lt, Li]``, ``[..., Li, Li]``, ``[..., Li, Lt]`` (rows = queries, each summing to 1)."""
    r = residual
    hat = lambda a: (1.0 - r) * a + r * np.eye(a.shape[-1])  # noqa: E731
    text = np.concatenate([r * hat(text_self), (1.0 - r) * text_cross], axis=-1)
    image = np.concatenate([(1.0 - r) * image_cross, r * hat(image_self)], axis=-1)
    return np.concatenate([text, image], axis=-2)


def co_attention_imf(num_layers: int, residual: float = 0.5) -> np.ndarray:
    """The IMF of layers ``0..num_layers-1`` of any co-attention stack under the rollout: fixed by the
    residual weight alone, ``(1 - (2r - 1)^(l+1)) / 2``."""
    return (1.0 - (2.0 * residual - 1.0) ** np.arange(1, num_layers + 1)) / 2.0


@EVALUATORS.register("inter_modality_flow")
class InterModalityFlowEvaluator:
    """IMF per fused layer (module docstring) of a model whose ``joint_attention`` predict function gives
    ``probs [B, layers, T, T]`` (head-averaged) and ``modality [B, T]`` (the fusion models' one: ViLT,
    VLMo, METER with ``fusion="merged"``, Visual Parsing). Streams the split: each batch is reduced to
    per-layer sums at once, so no attention map is kept. Metrics ``imf_layer{l}``,
    ``text_to_image_layer{l}``, ``image_to_text_layer{l}``, ``attention_imf_layer{l}``; ``imf`` (the
    last layer's, the whole stack's flow) and ``uniform_imf``. ``residual`` weighs the identity in
    each layer's matrix (0.5: Abnar & Zuidema's rollout; 0: products of the raw attention)."""

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 64, residual: float = 0.5):
        if "joint_attention" not in predict_fns:
            raise ValueError("inter_modality_flow needs a model with a joint_attention predict function (a fusion "
                             f"model over [text; image]); this one offers {', '.join(predict_fns)}")
        if not 0.0 <= residual <= 1.0:
            raise ValueError(f"residual must be in [0, 1], got {residual}")
        self.predict = predict_fns["joint_attention"]
        self.bundle, self.num_examples, self.batch_size = build_dataset(data, split), num_examples, batch_size
        self.residual = residual

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        sums: dict[str, np.ndarray] = {}
        count = 0
        for batch, index in eval_batches(eval_examples(self.bundle, self.num_examples), self.batch_size):
            keep = index >= 0
            out = self.predict(params, {k: batch[k] for k in INPUT_KEYS if k in batch})
            probs, modality = np.asarray(out["probs"])[keep], np.asarray(out["modality"])[keep]
            rows = {f"{k}_layer": v for k, v in modality_flow(attention_rollout(probs, self.residual),
                                                               modality).items()}
            rows["attention_imf_layer"] = modality_flow(probs, modality)["imf"]
            n_text, n_image = np.sum(modality == 0, 1), np.sum(modality == 1, 1)
            rows["uniform_imf"] = 2.0 * n_text * n_image / np.square(n_text + n_image)
            for k, v in rows.items():
                sums[k] = sums.get(k, 0.0) + v.sum(axis=0)
            count += int(keep.sum())
        count = int(process_sum(np.asarray(count)))
        means = {k: process_sum(np.asarray(v, np.float64)) / max(count, 1) for k, v in sums.items()}
        for name in ("imf_layer", "text_to_image_layer", "image_to_text_layer", "attention_imf_layer"):
            for layer, value in enumerate(means[name]):
                yield f"{name}{layer}", float(value)
        yield "imf", float(means["imf_layer"][-1])
        yield "uniform_imf", float(means["uniform_imf"])
