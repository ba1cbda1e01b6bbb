"""Inter-modality flow: exact values on a hand-made attention tensor (streamed over padded batches), and
the evaluator runs on the ViLT and VLMo tiny configs' models through their joint_attention."""

import os

import jax
import numpy as np
import pytest

from vlfm.data.pipeline import build_dataset, eval_arrays
from vlfm.evaluators import EVALUATORS
from vlfm.evaluators.flow import attention_rollout, modality_flow
from vlfm.models import build_model
from vlfm.train.config import load_config_file

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

# 2 text tokens, 1 image token, 1 text padding token (its column gets no attention from real rows)
A0 = [[1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0], [0.25, 0.25, 0.5, 0.0], [0.2, 0.2, 0.2, 0.4]]
A1 = [[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
PROBS = np.array([A0, A1])  # [layers, T, T]
MODALITY = np.array([0, 0, 1, -1])


def test_imf_of_a_hand_made_attention_tensor():
    """Raw attention (residual 0): layer 0's cross mass is A0[1, 2] (text row, image column) = 0.5 and
    A0[2, 0] + A0[2, 1] (image row, text columns) = 0.5 over 3 real rows: IMF 1/3. Layer 1 composes
    F1 = A1 @ A0: rows (A0[2], A0[1], A0[0]) -> text rows' image mass 0.5 + 0.5, the image row's text
    mass 1.0: IMF 2/3. With the rollout's residual 0.5, layer 0 is 0.5 A0 + 0.5 I: IMF (0.25 + 0.25) / 3."""
    raw = modality_flow(attention_rollout(PROBS[None], residual=0.0), MODALITY[None])
    np.testing.assert_allclose(raw["image_to_text"][0], [0.5 / 3, 1.0 / 3])
    np.testing.assert_allclose(raw["text_to_image"][0], [0.5 / 3, 1.0 / 3])
    np.testing.assert_allclose(raw["imf"][0], [1 / 3, 2 / 3])
    rollout = modality_flow(attention_rollout(PROBS[None], residual=0.5), MODALITY[None])
    np.testing.assert_allclose(rollout["imf"][0, 0], 0.5 / 3)

    class FixedAttention:  # every example of the split gets the hand-made tensor (heads already averaged)
        def __call__(self, params, batch):
            n = len(batch["text"])
            return {"probs": np.broadcast_to(PROBS, (n,) + PROBS.shape), "modality": np.tile(MODALITY, (n, 1))}

    data = dict(name="shapes_vl", num_examples=64, image_size=16, max_objects=1, max_len=8)
    ev = EVALUATORS.get("inter_modality_flow")({"joint_attention": FixedAttention()}, data=data, num_examples=5,
                                               batch_size=4, residual=0.0)  # 2 batches, the last one padded
    got = dict(ev.run(None))
    assert got["imf_layer0"] == pytest.approx(1 / 3) and got["imf_layer1"] == pytest.approx(2 / 3)
    assert got["imf"] == pytest.approx(2 / 3)
    assert got["attention_imf_layer1"] == pytest.approx(2 / 3)  # A1 alone: 1 + 1 over 3 rows
    assert got["uniform_imf"] == pytest.approx(2 * 2 * 1 / 9)


@pytest.mark.parametrize("config", ["vilt_tiny", "vlmo_tiny"])
def test_imf_runs_on_fusion_models(config):
    c = load_config_file(os.path.join(CONFIGS, f"{config}.py"))
    model = build_model(c.model)
    data = dict(c.data, num_examples=64)
    arrays = eval_arrays(build_dataset(data, "validation"), 2)
    batch = {k: arrays[k] for k in ("image", "text", "text_mask")}

    def fused(m, b):
        return m.fuse(m.encode_text(b["text"], b["text_mask"], False), m.encode_image(b["image"], False), 1, False)

    params = jax.jit(lambda b: model.init(jax.random.key(0), b, method=fused))(batch)["params"]
    predict = jax.jit(lambda p, b: model.apply({"params": p}, b, method=lambda m, b: m.joint_attention(b)))
    out = predict(params, batch)
    probs, modality = np.asarray(out["probs"]), np.asarray(out["modality"])
    assert probs.shape[1] == c.model.depth and probs.shape[-1] == modality.shape[1]
    for row, modes in zip(probs, modality):  # rows sum to 1 over the real tokens: padding gets nothing
        real = modes >= 0
        np.testing.assert_allclose(row[:, real][..., real].sum(-1), 1.0, rtol=1e-5)
    got = dict(EVALUATORS.get("inter_modality_flow")({"joint_attention": predict}, data=data, num_examples=2,
                                                     batch_size=2).run(params))  # the same compiled shape
    assert set(got) >= {f"imf_layer{i}" for i in range(c.model.depth)} | {"imf", "uniform_imf"}
    assert all(0.0 < got[f"imf_layer{i}"] < 1.0 for i in range(c.model.depth))
