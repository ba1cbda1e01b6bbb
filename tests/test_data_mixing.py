"""Dataset mixing: proportions, determinism, mixed within a batch and one dataset per step, counters."""

import os

import grain
import numpy as np
import pytest

from vlfm.data import build_dataset, synthetic, train_iterator
from vlfm.data.mixing import Chooser, MixStream, per_step_iterator
from vlfm.data.streaming import take


def _streams(n):
    return [grain.MapDataset.range(1000 * i, 1000 * i + 1000).repeat(None).to_iter_dataset() for i in range(n)]


@pytest.mark.parametrize("sampling", ["weighted", "round_robin"])
def test_mix_proportions_follow_the_weights(sampling):
    weights = [0.7, 0.2, 0.1]
    draws = take(MixStream(_streams(3), ["a", "b", "c"], weights, sampling, seed=0), 5000)
    counts = np.bincount(np.asarray(draws) // 1000, minlength=3)
    np.testing.assert_allclose(counts / 5000, weights, atol=0.02 if sampling == "weighted" else 1e-3)
    # Each stream is consumed in its own order: nothing skipped or repeated.
    for i in range(3):
        own = [d for d in draws if d // 1000 == i][:1000]
        assert own == list(range(1000 * i, 1000 * i + len(own)))


def test_round_robin_is_exact_and_weighted_is_seeded():
    names = [Chooser([1, 1, 1], "round_robin", 0)(i, [i // 3 + (i % 3 > j) for j in range(3)]) for i in range(6)]
    assert names == [0, 1, 2, 0, 1, 2]
    rr = [d // 1000 for d in take(MixStream(_streams(3), ["a", "b", "c"], [5, 2, 1], "round_robin"), 80)]
    assert rr[:8] == rr[8:16]  # periodic with the weights' cycle
    for n in range(1, 81):  # every prefix is within one draw of its target share
        counts = np.bincount(rr[:n], minlength=3)
        assert (np.abs(counts - n * np.array([5, 2, 1]) / 8) < 1).all(), (n, counts)
    a = take(MixStream(_streams(2), ["a", "b"], [1, 1], "weighted", seed=1), 200)
    assert a == take(MixStream(_streams(2), ["a", "b"], [1, 1], "weighted", seed=1), 200)
    assert a != take(MixStream(_streams(2), ["a", "b"], [1, 1], "weighted", seed=2), 200)
    with pytest.raises(ValueError, match="weights"):
        MixStream(_streams(2), ["a", "b"], [0, 0])
    with pytest.raises(ValueError, match="sampling"):
        MixStream(_streams(2), ["a", "b"], [1, 1], "random")


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    synthetic.write_webdataset(root / "a", 40, 10, size=16, prefix="a", label_classes=1000)
    from vlfm.data.webdataset import write_shards
    samples = (dict(synthetic.sample(i, 16), cls=str(i)) for i in range(500, 540))
    write_shards(samples, str(root / "b" / "b-%05d.tar"), 10)
    return str(root)


def _wds(root, part, **kw):
    return dict(name="webdataset", urls=os.path.join(root, part, f"{part}-*.tar"), image=dict(size=16), label=dict(),
                shuffle_buffer=8, **kw)


def test_mixed_within_a_batch_with_counters(two_corpora):
    cfg = dict(name="mixture", datasets=dict(a=dict(_wds(two_corpora, "a"), weight=3.0),
                                             b=dict(_wds(two_corpora, "b"), weight=1.0)))
    bundle = build_dataset(cfg, "train")
    assert bundle.info["datasets"] == ["a", "b"]
    it = train_iterator(bundle, global_batch_size=16, seed=0, process_index=0, process_count=1)
    labels = np.concatenate([next(it)["label"] for _ in range(25)])
    from_b = int((labels >= 500).sum())
    assert 0.18 < from_b / len(labels) < 0.32  # weight 1/4
    stats = it.stats()
    assert stats["data/a/examples"] + stats["data/b/examples"] == 400
    assert stats["data/b/examples"] == from_b
    # Each batch mixes both datasets.
    it2 = train_iterator(bundle, global_batch_size=16, seed=0, process_index=0, process_count=1)
    first = next(it2)["label"]
    assert (first < 500).any() and (first >= 500).any()


def test_one_dataset_per_step(two_corpora):
    datasets = dict(a=dict(_wds(two_corpora, "a"), batch_size=4, weight=1.0),
                    b=dict(_wds(two_corpora, "b"), batch_size=6, weight=1.0))
    it = per_step_iterator(datasets, sampling="round_robin", seed=0, process_index=0, process_count=1)
    steps = [next(it) for _ in range(6)]
    assert [n for n, _ in steps] == ["a", "b"] * 3
    for name, batch in steps:
        assert len(batch["label"]) == (4 if name == "a" else 6)
        assert ((batch["label"] >= 500) == (name == "b")).all()
    assert it.stats()["data/a/steps"] == 3 and it.stats()["data/b/steps"] == 3
    weighted = per_step_iterator(dict(datasets, a=dict(datasets["a"], weight=4.0)), seed=5, process_index=0,
                                 process_count=1)
    names = [next(weighted)[0] for _ in range(100)]
    assert 70 <= names.count("a") <= 90
    again = per_step_iterator(dict(datasets, a=dict(datasets["a"], weight=4.0)), seed=5, process_index=0,
                              process_count=1)
    assert [next(again)[0] for _ in range(100)] == names
