"""PolyViT: a tokenizer per modality, shared layers, a head per task chosen by the task name."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from vlfm.core.tree import strip_boxes
from vlfm.models import build_model
from vlfm.train.config import load_config
from vlfm.train.forward import Forward
from vlfm.train.state import TaskInit, state_initializer

MODEL = dict(name="polyvit", width=16, depth=2, num_heads=2, mlp_dim=32,
             tokenizers=dict(image=dict(name="vit", patch_size=8),
                             video=dict(name="video_vit", patch_size=8, tubelet_size=2),
                             audio=dict(name="spectrogram_vit", patch_size=8, frequency_stride=8, time_stride=8)),
             heads=dict(shapes=5, colours=3, motion=4, pitch=6))
BATCHES = dict(shapes={"image": np.ones((2, 16, 16, 3), np.float32)},
               colours={"image": np.ones((2, 16, 16, 3), np.float32)},
               motion={"video": np.ones((2, 4, 16, 16, 3), np.float32)},
               pitch={"audio": np.ones((2, 16, 16), np.float32)})


def _params(model_cfg):
    import optax

    model = build_model(model_cfg)
    tasks = [TaskInit(name, batch, Forward(pass_task=True)) for name, batch in BATCHES.items()]
    init = state_initializer(model, optax.sgd(0.1), tasks=tasks)
    state = jax.eval_shape(init, jax.random.key(0))
    return model, traverse_util.flatten_dict(strip_boxes(state["params"]), sep="/")


def test_one_init_over_all_tasks_makes_every_tokenizer_and_head():
    model, flat = _params(MODEL)
    tops = sorted({k.split("/")[0] for k in flat})
    assert tops == ["audio_tokenizer", "head_colours", "head_motion", "head_pitch", "head_shapes", "image_tokenizer",
                    "shared", "video_tokenizer"]
    assert flat["head_motion/kernel"].shape == (16, 4) and flat["video_tokenizer/tubelet_embed/kernel"].shape == \
        (2, 8, 8, 3, 16)
    assert not any("encoder" in k for k in flat if "tokenizer" in k)  # no modality layers by default
    assert flat["shared/encoder/layers/attn/query/kernel"].shape[0] == 2
    assert sorted(model.PREDICT) == ["logits/colours", "logits/motion", "logits/pitch", "logits/shapes"]
    _, flat = _params(dict(MODEL, modality_layers=1))
    assert flat["image_tokenizer/encoder/layers/attn/query/kernel"].shape[0] == 1
    assert flat["shared/encoder/layers/attn/query/kernel"].shape[0] == 1


def test_the_task_picks_the_head_and_the_batch_the_tokenizer():
    model = build_model(MODEL)
    variables = model.init(jax.random.key(0), BATCHES["shapes"], task="shapes")
    params = jax.tree.map(lambda x: x, variables["params"])
    out = model.apply({"params": params}, BATCHES["shapes"], task="shapes")
    assert out["logits"].shape == (2, 5)
    np.testing.assert_array_equal(out["logits"], 0.0)  # zero-initialised head
    with pytest.raises(KeyError, match="no head for task 'cifar'; heads: shapes, colours, motion, pitch"):
        model.apply({"params": params}, BATCHES["shapes"], task="cifar")
    with pytest.raises(ValueError, match="exactly one of image, video, audio"):
        model.apply({"params": params}, dict(BATCHES["shapes"], **BATCHES["pitch"]), task="shapes")
    bad = dict(MODEL, tokenizers=dict(MODEL["tokenizers"], image=dict(name="vit", patch_size=8, width=8)))
    with pytest.raises(ValueError, match=r"tokenizers.image sets \['width'\]"):
        build_model(bad).init(jax.random.key(0), BATCHES["shapes"], task="shapes")


def test_tiny_config_co_trains_or_trains_one_task():
    both = load_config("configs/polyvit_tiny.py")
    assert sorted(both.tasks) == ["audio", "image", "video"] and both.schedule == "weighted"
    assert both.total_steps == sum(t.steps for t in both.tasks.values())
    alone = load_config("configs/polyvit_tiny.py:video")
    assert list(alone.tasks) == ["video"] and alone.total_steps == both.tasks.video.steps
    with pytest.raises(ValueError, match="valid: image, video, audio"):
        load_config("configs/polyvit_tiny.py:speech")
