"""Data sources through one interface: webdataset shards, text files, TFDS, the built-in dataset; host
and worker sharding; URL expansion; remote URLs through pipe: and file://."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from vlfm.data import build_dataset, image_ops, synthetic
from vlfm.data.bad_data import TRUNCATED_SHARD, UNREADABLE_SHARD, BadSample, EmptyDatasetError
from vlfm.data.pipeline import eval_arrays, pipeline_stats
from vlfm.data.streaming import STDERR_LINES, ShardedStream, expand_braces, expand_urls, take
from vlfm.data.text_files import read_lines
from vlfm.data.webdataset import read_tar, split_name, write_shards

CLIP_MEAN, CLIP_STD = np.asarray(image_ops.CLIP_MEAN, np.float32), np.asarray(image_ops.CLIP_STD, np.float32)
VOCAB = ["a", "and", "picture", "number"] + list(synthetic.COLOURS) + [str(i) for i in range(200)]


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + VOCAB) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """60 samples (32 px JPEG, caption, json, class) in 6 shards of 10."""
    folder = tmp_path_factory.mktemp("wds")
    paths = synthetic.write_webdataset(folder, 60, 10, size=32, label_classes=60)
    return str(folder), paths


def _wds_config(folder, vocab_file, **kw):
    cfg = dict(name="webdataset", urls=os.path.join(folder, "shard-{00000..00005}.tar"),
               image=dict(size=32), text=dict(tokenizer=dict(kind="wordpiece", path=vocab_file), max_len=12),
               label=dict(), batch_size=8)
    cfg.update(kw)
    return cfg


def test_expand_braces_and_urls(tmp_path):
    assert expand_braces("cc3m-{00000..00002}.tar") == ["cc3m-00000.tar", "cc3m-00001.tar", "cc3m-00002.tar"]
    assert expand_braces("{a,b}/x-{8..10}.tar") == ["a/x-8.tar", "a/x-9.tar", "a/x-10.tar", "b/x-8.tar",
                                                     "b/x-9.tar", "b/x-10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    for name in ("b.tar", "a.tar", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    assert expand_urls(f"{tmp_path}/*.tar") == [f"{tmp_path}/a.tar", f"{tmp_path}/b.tar"]
    assert expand_urls("gs://bucket/x-{0..1}.tar::pipe:cat y.tar") == ["gs://bucket/x-0.tar", "gs://bucket/x-1.tar",
                                                                        "pipe:cat y.tar"]
    assert split_name("./dir/000123.seg.PNG") == ("dir/000123", "seg.png")
    assert split_name("noext") is None


def test_webdataset_examples_match_the_samples(shards, vocab_file):
    folder, _ = shards
    bundle = build_dataset(_wds_config(folder, vocab_file), "validation")
    arrays = eval_arrays(bundle)
    assert len(arrays["label"]) == 60
    np.testing.assert_array_equal(arrays["label"], np.arange(60))  # unshuffled: shard order, then key order
    assert arrays["image"].shape == (60, 32, 32, 3) and arrays["image"].dtype == np.float32
    tok = bundle.info["tokenizer"]
    for i in (0, 17, 59):
        np.testing.assert_array_equal(arrays["text"][i], tok.encode_batch([synthetic.caption(i)], 12)["ids"][0])
        # Eval preprocessing is open_clip's: the 32 px image is only normalised.
        pixels = synthetic.image(i, 32, 32)
        decoded = np.asarray(Image.open(io.BytesIO(synthetic.encode(pixels))).convert("RGB"), np.float32) / 255
        np.testing.assert_allclose(arrays["image"][i], (decoded - CLIP_MEAN) / CLIP_STD, rtol=1e-6, atol=1e-6)


def test_train_split_augments_and_batches(shards, vocab_file):
    folder, _ = shards
    from vlfm.data import train_iterator
    bundle = build_dataset(_wds_config(folder, vocab_file, image=dict(size=24, flip=True, scale=(0.3, 1.0))), "train")
    it = train_iterator(bundle, global_batch_size=8, seed=0, process_index=0, process_count=1)
    batch = next(it)
    assert batch["image"].shape == (8, 24, 24, 3) and batch["text"].shape == (8, 12)
    assert len(set(batch["label"].tolist())) == 8
    it.close()


def _keys(urls, reader, **kw):
    return [r["__key__"] for r in take(ShardedStream(urls, reader, name="t", num_epochs=1, **kw), 10_000)]


@pytest.mark.parametrize("num_shards", [6, 1])  # split by shard; fewer shards than readers: split by record
def test_hosts_and_workers_see_disjoint_samples_covering_the_epoch(tmp_path, num_shards):
    paths = write_shards(({"__key__": f"{i:04d}", "txt": str(i)} for i in range(60)), str(tmp_path / "s-%02d.tar"),
                         60 // num_shards)
    seen = []
    for host in range(2):
        for worker in range(2):
            ds = ShardedStream(paths, read_tar, name="t", seed=5, num_epochs=1, process_index=host, process_count=2,
                               cycle_length=2)
            ds.set_slice(slice(worker, None, 2))  # what grain's mp_prefetch does in worker `worker`
            keys = [r["__key__"] for r in take(ds, 1000)]
            assert keys, (host, worker)
            seen.append(keys)
    flat = [k for keys in seen for k in keys]
    assert len(flat) == len(set(flat)) == 60  # disjoint
    assert sorted(flat) == [f"{i:04d}" for i in range(60)]  # and together the whole epoch


def test_two_hosts_through_the_pipeline(shards, vocab_file):
    folder, _ = shards
    bundle = build_dataset(_wds_config(folder, vocab_file), "train")
    labels = []
    for host in range(2):
        stream = bundle.example_stream(seed=3, process_index=host, process_count=2, num_epochs=1)
        labels.append([int(e["label"]) for e in take(stream, 1000)])
    assert not set(labels[0]) & set(labels[1])
    assert sorted(labels[0] + labels[1]) == list(range(60))
    assert labels[0] != sorted(labels[0])  # shuffled (shard order and within-window order)


def test_shuffling_is_seeded_and_differs_per_epoch(tmp_path):
    paths = write_shards(({"__key__": f"{i:04d}", "txt": str(i)} for i in range(40)), str(tmp_path / "s-%02d.tar"), 5)
    a = _keys(paths, read_tar, seed=1)
    assert a == _keys(paths, read_tar, seed=1)
    assert a != _keys(paths, read_tar, seed=2)
    two = [r["__key__"] for r in take(ShardedStream(paths, read_tar, name="t", seed=1, num_epochs=2), 1000)]
    assert sorted(two[:40]) == sorted(two[40:]) and two[:40] != two[40:]
    inter = _keys(paths, read_tar, seed=1, cycle_length=3)
    assert sorted(inter) == sorted(a) and inter != a


def test_pipe_file_and_fsspec_urls_read_like_local_paths(shards):
    _, paths = shards
    local = _keys(paths[:2], read_tar, shuffle=False)
    assert _keys([f"file://{p}" for p in paths[:2]], read_tar, shuffle=False) == local
    assert _keys([f"pipe:cat {p}" for p in paths[:2]], read_tar, shuffle=False) == local
    assert len(local) == 20
    import fsspec  # remote URLs (gs://, s3://, https://) go through fsspec; its in-memory filesystem stands in
    memory = fsspec.filesystem("memory")
    for i, p in enumerate(paths[:2]):
        with open(p, "rb") as f:
            memory.pipe(f"/vlfm-test/shard-{i}.tar", f.read())
    remote = [f"memory://vlfm-test/shard-{i}.tar" for i in range(2)]
    assert _keys(remote, read_tar, shuffle=False) == local
    records = list(read_tar(remote[0]))
    assert [r["__key__"] for r, _ in read_tar(remote[0], records[4][1])] == [r["__key__"] for r, _ in records[5:]]


def test_a_failing_pipe_command_is_reported_with_its_url_exit_code_and_stderr(vocab_file):
    url = "pipe:sh -c 'echo boom >&2; exit 3'"
    [(marker, _)] = list(read_tar(url))
    assert isinstance(marker, BadSample) and marker.kind == UNREADABLE_SHARD and marker.source == url
    assert url in marker.detail and "exited with code 3" in marker.detail and "boom" in marker.detail
    # A dataset whose every shard fails stops with an error that says why, not only that it is empty.
    bundle = build_dataset(_wds_config("", vocab_file, urls=url), "train")
    with pytest.raises(EmptyDatasetError, match=r"exited with code 3.*boom"):
        bundle.example()
    [(silent, _)] = list(read_tar("pipe:true"))  # succeeds but writes nothing
    assert silent.kind == UNREADABLE_SHARD and "wrote nothing" in silent.detail


def test_pipe_stderr_is_kept_bounded_and_a_cut_stream_names_the_failure(shards):
    _, paths = shards
    noisy = "pipe:sh -c 'for i in $(seq 1000); do echo line $i >&2; done; exit 1'"
    [(marker, _)] = list(read_tar(noisy))
    first_kept = 1000 - STDERR_LINES + 1
    assert f"line {first_kept} |" in marker.detail and f"line {first_kept - 1} |" not in marker.detail
    assert marker.detail.endswith("line 1000")
    half = os.path.getsize(paths[0]) // 2  # the download breaks off half-way
    records = list(read_tar(f"pipe:sh -c 'head -c {half} {paths[0]}; echo connection reset >&2; exit 56'"))
    *good, (cut, _) = records
    assert 0 < len(good) < 10 and not any(isinstance(r, BadSample) for r, _ in good)
    assert cut.kind == TRUNCATED_SHARD and "exited with code 56" in cut.detail and "connection reset" in cut.detail


def test_tar_resume_seeks_or_skips(shards):
    _, paths = shards
    records = list(read_tar(paths[0]))
    keys = [r["__key__"] for r, _ in records]
    token = records[3][1]
    assert token["offset"] > 0
    assert [r["__key__"] for r, _ in read_tar(paths[0], token)] == keys[4:]
    assert [r["__key__"] for r, _ in read_tar(f"pipe:cat {paths[0]}", token)] == keys[4:]  # not seekable: skip
    assert list(read_tar(paths[0], records[-1][1])) == []


def test_text_files(tmp_path, vocab_file):
    paths = synthetic.write_text_files(tmp_path, 30, 10)
    with open(paths[1], "a") as f:
        f.write("\n   \n")  # two empty documents: skipped and counted
    cfg = dict(name="text_files", paths=str(tmp_path / "text-*.txt"),
               text=dict(tokenizer=dict(kind="wordpiece", path=vocab_file), max_len=10, mlm_prob=0.15))
    bundle = build_dataset(cfg, "train")
    seen, empty = [], 0
    for host in range(2):
        it = iter(bundle.example_stream(seed=0, process_index=host, process_count=2, num_epochs=1))
        rows = list(it)
        seen.append(rows)
        assert set(rows[0]) == {"text", "text_mask", "mlm_targets"}
        empty += pipeline_stats(it.get_state()).get("data/bad/empty_text", 0)
    assert len(seen[0]) + len(seen[1]) == 30
    assert empty == 2
    lines = list(read_lines(paths[0]))
    assert [r["text"].decode() for r, _ in lines] == [synthetic.caption(i) for i in range(10)]
    assert [r["text"].decode() for r, _ in read_lines(paths[0], lines[6][1])] == [synthetic.caption(i)
                                                                                   for i in range(7, 10)]


def test_builtin_dataset_in_the_same_interface():
    bundle = build_dataset(dict(name="shapes", num_examples=64, image_size=16, max_len=12), "train")
    example = bundle.example()
    assert example["image"].shape == (16, 16, 3) and example["text"].shape == (12,)
    labels = []
    for host in range(2):
        labels += [int(e["label"]) for e in take(bundle.example_stream(seed=0, process_index=host, process_count=2,
                                                                        num_epochs=1), 100)]
    assert len(labels) == 64


def test_missing_dataset_is_an_error_naming_the_path(tmp_path, vocab_file):
    with pytest.raises(EmptyDatasetError, match="nothing-here"):
        build_dataset(_wds_config(str(tmp_path / "nothing-here"), vocab_file), "train")
    with pytest.raises(EmptyDatasetError, match="matched no files"):
        build_dataset(dict(_wds_config(str(tmp_path), vocab_file), urls=str(tmp_path / "*.tar")), "train")


# ----------------------------------------------------------------------------------------------------
# TFDS: a small dataset written without TensorFlow (encoded JPEG bytes), read as an array_record source.


def _toy_builder():
    import tensorflow_datasets as tfds

    class VlfmToyCaptions(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
                "label": tfds.features.ClassLabel(names=["red", "green", "blue"]),
            }))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 30), "validation": self._generate_examples(100, 6)}

        def _generate_examples(self, start, n):
            for i in range(start, start + n):
                yield i, {"image": synthetic.encode(synthetic.image(i, 24, 40)),
                          "captions": {"text": [synthetic.caption(i), f"another caption {i}"]}, "label": i % 3}

    return VlfmToyCaptions


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    _toy_builder()(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def _tfds_config(data_dir, vocab_file):
    return dict(name="tfds", tfds_name="vlfm_toy_captions", data_dir=data_dir, image=dict(size=16),
                text=dict(key="captions/text", tokenizer=dict(kind="wordpiece", path=vocab_file), max_len=12),
                label=dict(key="label"))


def test_tfds_source(tfds_dir, vocab_file):
    bundle = build_dataset(_tfds_config(tfds_dir, vocab_file), "validation")
    assert bundle.info["class_names"] == ["red", "green", "blue"] and bundle.info["num_classes"] == 3
    arrays = eval_arrays(bundle)
    assert arrays["image"].shape == (6, 16, 16, 3) and len(arrays["label"]) == 6
    tok = bundle.info["tokenizer"]
    expected = {tuple(tok.encode_batch([synthetic.caption(i)], 12)["ids"][0]) for i in range(100, 106)}
    assert {tuple(t) for t in arrays["text"]} == expected  # eval: the first caption of each example
    assert sorted(arrays["label"].tolist()) == sorted(i % 3 for i in range(100, 106))
    train = build_dataset(_tfds_config(tfds_dir, vocab_file), "train")
    hosts = [[tuple(e["text"]) for e in take(train.example_stream(seed=1, process_index=h, process_count=2,
                                                                   num_epochs=1), 100)] for h in range(2)]
    assert len(hosts[0]) == len(hosts[1]) == 15


def test_ufo_base_data_sections_build_on_tfds_and_text_files(tfds_dir, vocab_file, tmp_path):
    """``configs/ufo_base.py``'s ImageNet and corpus task data, pointed by overrides at a toy TFDS
    dataset and generated text files, build through the real sources: labelled images at the
    configured size, whole-word-masked text, class names from the TFDS label feature."""
    from vlfm.train.config import load_config

    synthetic.write_text_files(tmp_path, 12, 6)
    config = load_config("configs/ufo_base.py", [
        "tasks.image.data.tfds_name=vlfm_toy_captions", f"tasks.image.data.data_dir={tfds_dir}",
        f"tasks.text.data.paths.train={tmp_path}/text-*.txt",
        f"tasks.text.data.text.tokenizer.path={vocab_file}"])
    images = build_dataset(config.tasks.image.data, "train")
    example = images.example()
    assert example["image"].shape == (224, 224, 3) and example["label"].shape == ()
    assert images.info["num_classes"] == 3  # the configured model has 1000: the real ImageNet's
    text = build_dataset(config.tasks.text.data, "train")
    row = next(iter(text.example_stream(seed=0, process_index=0, process_count=1, num_epochs=1)))
    assert row["text"].shape == (128,) and (row["mlm_targets"] >= 0).any()
    assert config.model.num_classes == 1000 and set(config.teachers) == {"vit", "bert"}
