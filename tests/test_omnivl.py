"""OmniVL: one visual encoder for images and videos, its outputs and losses, the base size, stages of
several tasks, and the data that puts image and video labels in one space."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.data.pipeline import build_dataset
from vlfm.losses import LOSSES, combined_loss
from vlfm.losses import itm as itm_lib
from vlfm.models import build_model
from vlfm.train.config import load_config
from vlfm.train.tasks import Task, TaskSchedule, task_names

RNGS = ("params", "sampling", "dropout")


def _rngs(seed=0):
    return {k: jax.random.key(seed + i) for i, k in enumerate(RNGS)}


def _count(tree) -> int:
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(flax.linen.unbox(tree)))


def test_tiny_forward_images_and_videos_share_parameters_and_losses_are_finite():
    cfg = load_config("configs/omnivl_tiny.py").model
    for tower in (cfg.image, cfg.text):  # one unrolled layer: a cheaper compile
        tower.update(depth=1, scan=False)
    model = build_model(cfg)
    b, frames, length = 4, cfg.image.num_frames, 12
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.integers(5, 60, (b, length)), jnp.int32).at[:, 0].set(2)
    video = {"video": jnp.asarray(rng.normal(size=(b, frames, 32, 32, 3)), jnp.float32), "text": text,
             "text_mask": jnp.ones((b, length), bool), "label": jnp.asarray([-1, 60, 60, 3], jnp.int32)}
    image = dict(video, image=video["video"][:, 0])
    del image["video"]
    init = lambda batch: model.init(_rngs(), batch, train=True)["params"]  # noqa: E731
    video_shapes, image_shapes = jax.eval_shape(init, video), jax.eval_shape(init, image)
    # One parameter set: an image is a static clip of one tubelet (the temporal table is sized for the clips).
    assert jax.tree.map(lambda x: x.shape, video_shapes) == jax.tree.map(lambda x: x.shape, image_shapes)
    assert video_shapes["visual_tower"]["time_embed"]["embedding"].value.shape[0] == frames // cfg.image.tubelet_size

    loss_fn = combined_loss(dict(multi_positive_contrastive=dict(label_key="label"), itm=dict(), caption_ce=dict()))

    @jax.jit
    def run(batch):
        params = model.init(_rngs(), batch, train=True)["params"]
        out = model.apply({"params": params}, batch, train=True, rngs=_rngs(7))
        loss, metrics = loss_fn(out, batch)
        return out, loss, model.apply({"params": params}, batch, train=False)

    out, loss, eval_out = run(video)
    assert out["image_embed"].shape == out["text_embed"].shape == (b, 64)
    np.testing.assert_allclose(np.linalg.norm(out["image_embed"], axis=-1), 1.0, rtol=1e-5)
    assert out["itm_logits"].shape == (3 * b, 2)
    np.testing.assert_array_equal(out["itm_labels"], [1] * b + [0] * 2 * b)
    assert out["caption_logits"].shape == (b, length - 1, cfg.decoder.vocab_size)
    np.testing.assert_array_equal(out["caption_labels"], text[:, 1:])
    assert np.isfinite(float(loss))
    # Evaluation (the momentum model, evaluators) gives the contrastive outputs only, equal to training's.
    assert sorted(eval_out) == ["image_embed", "logit_scale", "text_embed"]
    np.testing.assert_allclose(eval_out["image_embed"], out["image_embed"], atol=1e-6)


def test_hard_negatives_skip_columns_of_the_same_label():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 8)).astype(np.float32)
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    near = np.concatenate([z[:3], z[:3] + 1e-3 * rng.normal(size=(3, 8)).astype(np.float32)])  # 3 + i ~ i
    labels = jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32)
    draw = jax.jit(jax.vmap(lambda k, lab: itm_lib.hard_negatives(k, near, near, 50.0, labels=lab),
                            in_axes=(0, None)))
    keys = jax.random.split(jax.random.key(0), 64)
    plain_image, _ = draw(keys, jnp.full((6,), -1, jnp.int32))
    labelled_image, labelled_text = draw(keys, labels)
    twin = (np.arange(6) + 3) % 6
    # Without labels the near-duplicate twin is nearly always drawn; with them it never is, nor the row itself.
    assert (np.asarray(plain_image) == twin).mean() > 0.9
    for drawn in (labelled_image, labelled_text):
        drawn = np.asarray(drawn)
        assert not (drawn == twin).any() and not (drawn == np.arange(6)).any()


def test_base_parameter_count():
    cfg = load_config("configs/omnivl_base.py").model
    model = build_model(cfg)
    batch = {"video": jax.ShapeDtypeStruct((2, 8, 224, 224, 3), jnp.float32),
             "text": jax.ShapeDtypeStruct((2, 32), jnp.int32)}
    shapes = jax.eval_shape(lambda b: model.init(_rngs(), b, train=True), batch)["params"]
    assert _count(shapes) == 561_370_883
    assert _count(shapes["visual_tower"]) == 121_258_752  # TimeSformer-Base (HF TimesformerModel's encoder size)
    assert _count(shapes["text_tower"]) == 108_891_648  # BERT-base without its pooler


def _task(name, steps, stage=""):
    return Task(name=name, bundle=None, batch_size=1, loss_fn=None, steps=steps, stage=stage)


def test_stages_of_several_tasks_alternate_within_the_stage():
    tasks = [_task("image", 3, "image"), _task("image_joint", 4, "joint"), _task("video", 2, "joint")]
    schedule = TaskSchedule("stages", tasks, seed=1)
    picks = [schedule.tasks_at(s)[0] for s in range(3 + 6 + 12)]
    assert picks[:3] == ["image"] * 3
    joint = picks[3:9]
    assert sorted(joint) == ["image_joint"] * 4 + ["video"] * 2
    assert picks[9:15] == joint and picks[15:21] == joint  # after the last stage its order repeats
    assert sorted(schedule.step_kinds()) == [("image",), ("image_joint",), ("video",)]
    # One task per stage: the stages schedule as before (each task its steps, then the last one).
    single = TaskSchedule("stages", [_task("a", 2), _task("b", 3)])
    assert [single.tasks_at(s)[0] for s in range(8)] == ["a"] * 2 + ["b"] * 6
    with pytest.raises(ValueError, match="consecutive"):
        TaskSchedule("stages", [_task("a", 1, "x"), _task("b", 1, "y"), _task("c", 1, "x")])


def test_task_order_sets_the_order_of_stages_that_names_do_not_sort_into():
    config = load_config("configs/omnivl_tiny.py")
    by_name = ["image", "image_joint", "motion", "motion_joint", "video"]
    assert list(config.tasks.keys()) == by_name  # a ConfigDict sorts its keys
    assert task_names(config) == ["motion", "image", "image_joint", "motion_joint", "video"]
    config.task_order = ["motion", "image", "video"]
    with pytest.raises(ValueError, match="every task exactly once"):
        task_names(config)
    config.task_order = ()
    assert task_names(config) == by_name


def test_image_and_video_labels_in_one_space_with_one_vocabulary():
    clips = dict(name="moving_shapes", num_examples=4, num_frames=2, image_size=16, max_len=12)
    labels = build_dataset(dict(name="label_text", templates="data", keep=("video",), label_offset=56,
                                source=dict(clips, view="video_label", vocab="shapes")), "train")
    plain = build_dataset(dict(clips, view="video_label"), "train")
    got = [int(labels.random_transform(labels.examples[i], np.random.default_rng(i))["label"]) for i in range(4)]
    assert got == [int(plain.examples[i]["label"]) + 56 for i in range(4)]
    shared = build_dataset(dict(clips, view="video_caption", vocab="shapes"), "train").info["tokenizer"]
    images = build_dataset(dict(name="shapes", num_examples=4, image_size=16, max_objects=1), "train")
    image_tok = images.info["tokenizer"]
    assert shared.tokens[:image_tok.vocab_size] == image_tok.tokens  # image texts keep their ids
    caption = "a red circle moving to the left quickly"
    assert shared.unk_id not in shared.encode(caption) and image_tok.unk_id in image_tok.encode(caption)
