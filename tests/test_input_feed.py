"""The train loop's input side: data-wait reporting."""

import logging

from vlfm.train.input_feed import DataWait


def test_data_wait_reports_per_step_and_fraction_and_warns_once(caplog):
    wait = DataWait(threshold=0.5)
    wait.add(0.3)
    wait.add(0.1)
    with caplog.at_level(logging.WARNING, logger="vlfm"):
        assert wait.report(steps=4, elapsed=2.0) == {"data_wait_s": 0.1, "data_wait_fraction": 0.2}
        assert not caplog.records  # 20%: not input-bound
        wait.reset()
        wait.add(1.5)
        assert wait.report(steps=2, elapsed=2.0)["data_wait_fraction"] == 0.75
        wait.reset()
        wait.add(1.8)
        wait.report(steps=2, elapsed=2.0)
    assert [r.getMessage()[:12] for r in caplog.records] == ["input-bound:"]  # once, at the first such interval


def _shapes_iterators():
    from vlfm.data import build_dataset, train_iterator
    from vlfm.train.tasks import TaskIterators

    bundle = build_dataset(dict(name="shapes", num_examples=64, image_size=8, max_len=8), "train")
    return TaskIterators({"a": train_iterator(bundle, global_batch_size=4, seed=1),
                          "b": train_iterator(bundle, global_batch_size=4, seed=2)})


def test_prefetched_batches_are_read_again_after_a_resume():
    """A checkpoint taken with batches fetched ahead holds the state as of the consumed step: a run restored
    from it reads the prefetched-but-unused batches (restoring the live state would skip them)."""
    import numpy as np

    from vlfm.train.input_feed import InputFeed

    tasks_at = lambda step: ("a",) if step % 3 else ("a", "b")  # noqa: E731  (a pure schedule, two kinds)
    put = lambda name, batch: batch  # noqa: E731
    reference = InputFeed(_shapes_iterators(), tasks_at, put, start_step=0, total_steps=8, prefetch=0)
    expected = []
    for step in range(8):
        expected.append(reference.batches(step))
        reference.fill()

    its = _shapes_iterators()
    feed = InputFeed(its, tasks_at, put, start_step=0, total_steps=8, prefetch=2)
    for step in range(4):
        got = feed.batches(step)
        feed.fill()
        assert len(feed._ahead) == 2  # two future steps already fetched
        for name in got:
            np.testing.assert_array_equal(got[name]["image"], expected[step][name]["image"])
    saved = feed.get_state()
    assert saved != its.get_state()  # the live iterators are two steps further

    resumed_its = _shapes_iterators()
    resumed_its.set_state(saved)
    resumed = InputFeed(resumed_its, tasks_at, put, start_step=4, total_steps=8, prefetch=2)
    for step in range(4, 8):
        got = resumed.batches(step)
        resumed.fill()
        assert set(got) == set(expected[step])
        for name in got:
            np.testing.assert_array_equal(got[name]["image"], expected[step][name]["image"])
            np.testing.assert_array_equal(got[name]["text"], expected[step][name]["text"])
    assert not resumed._ahead  # nothing fetched past the last step
    assert resumed.stats() == {name: it.stats() for name, it in resumed_its.iterators.items()}


def _image_record(size=12, seed=0):
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return {"png": buf.getvalue(), "frames": np.random.default_rng(seed + 1).integers(0, 256, (5, size, size, 3),
                                                                                     dtype=np.uint8)}


def test_uint8_images_normalised_in_the_step_equal_the_host_normalised_floats():
    """Images leave the host uint8 (a quarter of the bytes); what the model reads after the step's
    normalisation equals the old host pipeline's float32 (shapes, a second image, CLIP statistics, video)."""
    import flax.linen as nn
    import grain
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from vlfm.data import DatasetBundle, build_dataset, train_iterator
    from vlfm.data.preprocess import build_processor
    from vlfm.data.video import VideoField  # noqa: F401  (registers the video field)
    from vlfm.optim.combine import sum_gradients
    from vlfm.train.step import make_train_step
    from vlfm.train.tasks import Task

    processor = build_processor("files", True, image=dict(key="png", size=8, train_crop="random_resized_crop",
                                                          flip=True, mean_std="clip"),
                                video=dict(key="frames", num_frames=3, image=dict(size=8, mean_std="imagenet")))
    records = grain.MapDataset.source([_image_record(seed=s) for s in range(4)])
    bundles = {"files": DatasetBundle(records, processor, processor.info()),
               "shapes": build_dataset(dict(name="shapes", num_examples=64, image_size=8, max_len=8), "train"),
               "nlvr2": build_dataset(dict(name="shapes_nlvr2", num_examples=64, image_size=8), "train")}
    expected_keys = {"files": {"image", "video"}, "shapes": {"image"}, "nlvr2": {"image", "image2"}}

    class Seen(nn.Module):  # returns what it reads, so the loss sees the model's input
        keys: tuple

        @nn.compact
        def __call__(self, batch, train=False):
            w = self.param("w", jax.nn.initializers.ones, ())
            return {k: w * batch[k] for k in self.keys}

    for name, bundle in bundles.items():
        assert set(bundle.normalization) == expected_keys[name], name
        host = next(train_iterator(bundle, global_batch_size=4, seed=3))
        raw = next(train_iterator(bundle, global_batch_size=4, seed=3, normalize=False))
        keys = tuple(sorted(expected_keys[name]))
        for k in keys:
            assert raw[k].dtype == np.uint8 and host[k].dtype == np.float32
            assert raw[k].nbytes * 4 == host[k].nbytes
        # The step normalises: its loss reads the model's outputs, which are the model's inputs.
        model = Seen(keys)

        def loss(outputs, batch, _keys=keys):
            return sum(jnp.sum(outputs[k]) for k in _keys), {k: outputs[k] for k in _keys}

        task = Task("main", bundle, 4, loss)
        params = {"w": jnp.ones(())}
        tx = optax.chain(sum_gradients(), optax.sgd(0.0))
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
        step = jax.jit(make_train_step(model, [task], tx, lambda s: 0.0, seed=0))
        batch = {k: raw[k] for k in keys}
        _, metrics = step(state, {"main": batch}, {})
        for k in keys:
            np.testing.assert_allclose(np.asarray(metrics[f"main/{k}"]), host[k], rtol=0, atol=1e-6,
                                       err_msg=f"{name}/{k}")
            assert np.abs(host[k]).max() > 0.5  # real images, not zeros



def test_only_the_keys_model_and_losses_read_go_to_the_devices():
    import pytest

    from vlfm.data import build_dataset
    from vlfm.losses import combined_loss
    from vlfm.models import build_model
    from vlfm.train.batch_keys import check_available, name_undeclared_key, needed_keys, select

    model = build_model(dict(name="dual_encoder", embed_dim=8, image=dict(name="vit", image_size=8, patch_size=4),
                             text=dict(name="text_transformer", vocab_size=64)))  # clip_tiny's families
    clip_loss = combined_loss({"softmax_contrastive": {"weight": 1.0}})
    example = build_dataset(dict(name="shapes", num_examples=64, image_size=8, max_len=8), "train").example()
    assert {"label", "shape", "color", "size", "position"} <= set(example)  # the shapes pairs carry them all

    needed = needed_keys(model, None, clip_loss)
    assert needed == {"image", "text", "text_mask"}
    check_available("main", needed, example)
    assert set(select(example, needed)) == {"image", "text", "text_mask"}
    # Nothing declared (a loss reading the batch, a teacher, another method): every key goes.
    assert needed_keys(model, None, combined_loss({"softmax_contrastive": {}, "softmax_xent": {}})) is None
    assert needed_keys(model, None, clip_loss, reads_batch_elsewhere=True) is None
    assert needed_keys(model, "encode_image", clip_loss) is None
    assert select(example, None).keys() == example.keys()

    # A key the model reads that the data lacks fails at start-up, naming it.
    with pytest.raises(KeyError, match=r"task 'main': the model and losses read batch keys \['text_mask'\]"):
        check_available("main", needed, {k: v for k, v in example.items() if k != "text_mask"})
    # A key read but left on the host (an incomplete declaration) is named with the task, never a bare KeyError.
    with pytest.raises(KeyError, match=r"task 'main'.*batch key 'label', which stays on the host"):
        name_undeclared_key(KeyError("label"), {"main": ["color", "label"]})
    name_undeclared_key(KeyError("other"), {"main": ["label"]})  # any other KeyError is left as it is
