"""Bad data loses nothing and stops nothing: each kind is skipped, counted and logged once; a dataset
that yields nothing is an error naming the path."""

import logging
import os
import tarfile

import grain
import numpy as np
import pytest

from vlfm.data import build_dataset, synthetic, train_iterator
from vlfm.data.bad_data import EmptyDatasetError
from vlfm.data.pipeline import pipeline_stats
from vlfm.data.webdataset import write_shards

EXPECTED = {"data/bad/corrupt_image": 2, "data/bad/empty_text": 1, "data/bad/missing_key": 2,
            "data/bad/bad_text": 1, "data/bad/bad_value": 1, "data/bad/truncated_shard": 1,
            "data/bad/unreadable_shard": 2}
GOOD = [0, 1, 9] + list(range(10, 15)) + list(range(20, 25))


def _good(i):
    s = synthetic.sample(i, 16, label_classes=1000)
    s["cls"] = str(i)
    return s


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    pattern = str(folder / "shard-%05d.tar")
    first = []
    for i in range(10):
        s = _good(i)
        if i == 2:
            s["jpg"] = np.random.default_rng(0).bytes(300)            # corrupt JPEG
        elif i == 3:
            s["jpg"] = s["jpg"][: len(s["jpg"]) // 2]                 # truncated JPEG
        elif i == 4:
            s["txt"] = "   "                                           # empty caption
        elif i == 5:
            del s["txt"], s["json"]                                    # missing caption
        elif i == 6:
            del s["jpg"]                                               # missing image
        elif i == 7:
            s["txt"] = b"\xff\xfe caption"                             # not UTF-8
        elif i == 8:
            s["cls"] = "seven"                                         # unparseable label
        first.append(s)
    write_shards(first, pattern, maxcount=100, start=0)
    write_shards([_good(i) for i in range(10, 20)], pattern, maxcount=100, start=1)
    with tarfile.open(pattern % 1) as tar:  # cut the file inside sample 15's image
        cut = next(m for m in tar.getmembers() if m.name == f"{15:09d}.jpg").offset_data + 10
    with open(pattern % 1, "r+b") as f:
        f.truncate(cut)
    # shard 2 is missing
    with open(pattern % 3, "wb") as f:
        f.write(b"this is not a tar file" * 100)
    write_shards([_good(i) for i in range(20, 25)], pattern, maxcount=100, start=4)
    return str(folder)


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "picture"]) + "\n")
    return str(path)


def _config(folder, vocab_file, **kw):
    return dict(name="webdataset", urls=os.path.join(folder, "shard-{00000..00004}.tar"), image=dict(size=16),
                text=dict(tokenizer=dict(kind="wordpiece", path=vocab_file), max_len=8), label=dict(), **kw)


def test_each_kind_is_skipped_counted_and_logged_once(bad_shards, vocab_file, caplog):
    bundle = build_dataset(_config(bad_shards, vocab_file), "train")
    with caplog.at_level(logging.WARNING, logger="vlfm.data"):
        it = iter(bundle.example_stream(seed=0, num_epochs=2))
        labels = [int(e["label"]) for e in it]
    assert sorted(labels) == sorted(GOOD * 2)  # every good sample of both epochs, nothing else
    stats = pipeline_stats(it.get_state())
    assert stats == {k: 2 * v for k, v in EXPECTED.items()}
    warnings = [r.getMessage() for r in caplog.records if "skipping bad data" in r.getMessage()]
    assert len(warnings) == len(EXPECTED)  # once per kind
    text = "\n".join(warnings)
    assert f"shard-00000.tar key {2:09d}" in text or f"shard-00000.tar key {3:09d}" in text
    assert "truncated_shard in" in text and f"shard-00001.tar key {15:09d}" in text
    assert "unreadable_shard in" in text and ("shard-00002.tar" in text or "shard-00003.tar" in text)


def test_counts_across_worker_processes(bad_shards, vocab_file):
    """Counters are summed over workers. A worker's state reaches the main process with its next good
    example, so read the counters once both workers are into their second epoch: unshuffled, worker 0
    reads shards 0, 2, 4 (8 good examples per epoch) and worker 1 shards 1, 3 (5), and grain takes one
    element from each worker in turn, so 18 elements are 9 from each."""
    bundle = build_dataset(_config(bad_shards, vocab_file), "train")
    ds = bundle.example_stream(seed=0, shuffle=False).mp_prefetch(grain.MultiprocessingOptions(num_workers=2))
    it = iter(ds)
    labels = [int(next(it)["label"]) for _ in range(18)]
    stats = pipeline_stats(it.get_state())
    it.close()
    assert sorted(labels) == sorted(GOOD + [0, 10, 11, 12, 13])
    assert stats == EXPECTED


def test_training_iterator_reports_counters(bad_shards, vocab_file):
    bundle = build_dataset(_config(bad_shards, vocab_file, shuffle_buffer=1, cycle_length=1), "train")
    it = train_iterator(bundle, global_batch_size=13, seed=0, process_index=0, process_count=1)
    assert sorted(next(it)["label"].tolist()) == GOOD  # an epoch holds exactly 13 good samples
    assert sorted(next(it)["label"].tolist()) == GOOD
    stats = it.stats()  # all of epoch 1, and epoch 2 up to its last good sample
    assert set(stats) == set(EXPECTED)
    assert all(EXPECTED[k] <= stats[k] <= 2 * EXPECTED[k] for k in EXPECTED), stats


def test_a_dataset_of_only_unreadable_shards_is_an_error_naming_them(tmp_path, vocab_file):
    (tmp_path / "shard-00000.tar").write_bytes(b"garbage" * 10)
    bundle = build_dataset(dict(_config(str(tmp_path), vocab_file), urls=str(tmp_path / "shard-{00000..00001}.tar")),
                           "train")
    with pytest.raises(EmptyDatasetError, match="shard-00000.tar"):
        bundle.example()


def test_a_dataset_of_only_bad_samples_is_an_error(tmp_path, vocab_file):
    write_shards([{"__key__": f"{i:03d}", "jpg": b"broken", "txt": "a picture"} for i in range(5)],
                 str(tmp_path / "shard-%05d.tar"))
    bundle = build_dataset(dict(_config(str(tmp_path), vocab_file), urls=str(tmp_path / "shard-00000.tar")), "train")
    it = train_iterator(bundle, global_batch_size=2, seed=0, process_index=0, process_count=1)
    with pytest.raises(EmptyDatasetError, match="shard-00000.tar"):
        next(it)


def test_empty_text_file_is_an_error(tmp_path, vocab_file):
    (tmp_path / "empty.txt").write_text("")
    bundle = build_dataset(dict(name="text_files", paths=str(tmp_path / "empty.txt"),
                                text=dict(tokenizer=dict(kind="wordpiece", path=vocab_file), max_len=8)), "train")
    with pytest.raises(EmptyDatasetError, match="empty.txt"):
        bundle.example()


def test_an_empty_tar_shard_is_counted_and_logged_naming_it(tmp_path, vocab_file, caplog):
    write_shards([_good(i) for i in range(3)], str(tmp_path / "shard-%05d.tar"))
    with tarfile.open(tmp_path / "shard-00001.tar", "w"):  # a valid tar without members
        pass
    bundle = build_dataset(dict(_config(str(tmp_path), vocab_file), urls=str(tmp_path / "shard-{00000..00001}.tar")),
                           "train")
    with caplog.at_level(logging.WARNING, logger="vlfm.data"):
        it = iter(bundle.example_stream(seed=0, num_epochs=2))
        labels = sorted(int(e["label"]) for e in it)
    assert labels == [0, 0, 1, 1, 2, 2]
    assert pipeline_stats(it.get_state()) == {"data/bad/empty_shard": 2}
    warnings = [r.getMessage() for r in caplog.records if "empty_shard" in r.getMessage()]
    assert len(warnings) == 1 and "shard-00001.tar" in warnings[0], warnings
