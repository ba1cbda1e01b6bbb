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
