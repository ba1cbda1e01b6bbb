"""webdataset tar shards (the img2dataset layout: ``KEY.jpg``, ``KEY.txt``, ``KEY.json`` ...) as a resumable
grain stream, plus a small shard writer.

Shards are streamed (local files, fsspec URLs such as ``gs://`` or ``https://``, or ``pipe:COMMAND``)
and split over hosts and workers by ``streaming.ShardedStream``. A sample is the run of consecutive
tar members that share a key (the member name up to the first dot of its base name). The resume
token after a sample is the byte offset of the next sample's first header, so a restore seeks straight
there in an uncompressed ``.tar`` (elsewhere it re-reads and skips ``n`` samples). A shard that cannot
be opened or is not a tar yields one ``unreadable_shard`` marker; one that ends mid-member yields a
``truncated_shard`` marker after its complete samples; a valid tar without any sample yields one
``empty_shard`` marker (counted and logged like bad data, so a shard written empty does not go unseen).
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from vlfm.data.bad_data import EMPTY_SHARD, TRUNCATED_SHARD, UNREADABLE_SHARD, BadSample
from vlfm.data.pipeline import DATASETS, DatasetBundle
from vlfm.data.preprocess import build_processor
from vlfm.data.streaming import check_urls, open_url, shuffled_shard_stream, urls_for_split


# Tar member extensions each field reads unless its config gives a ``key``.
_DEFAULT_KEYS = {"image": "jpg;jpeg;png;webp", "text": "txt", "label": "cls"}


def split_name(name: str) -> tuple[str, str] | None:
    """``dir/000123.seg.png`` -> (``dir/000123``, ``seg.png``); None for a name without an extension."""
    if name.startswith("./"):
        name = name[2:]
    head, _, base = name.rpartition("/")
    key, dot, ext = base.partition(".")
    if not dot or not key or not ext:
        return None
    return (f"{head}/{key}" if head else key), ext.lower()


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def read_tar(url: str, resume: dict | None = None) -> Iterator[tuple[Any, dict]]:
    """Yields ``({"__key__", "__url__", ext: bytes, ...}, token)`` per sample of one tar shard."""
    if resume is not None and resume.get("end"):
        return
    done = resume["n"] if resume else 0
    try:
        f = open_url(url)
    except Exception as e:  # missing file, permission, network, ...
        yield BadSample(UNREADABLE_SHARD, url, "", _error(e)), {"n": done, "end": True}
        return
    try:
        base, skip = 0, 0
        seek = resume is not None and resume.get("offset") is not None and url.endswith(".tar") and f.seekable()
        if seek:
            f.seek(resume["offset"])
            base = resume["offset"]
        elif resume is not None:
            skip, done = done, 0
        try:
            tar = tarfile.open(fileobj=f, mode="r|" if seek else "r|*")
        except Exception as e:
            yield BadSample(UNREADABLE_SHARD, url, "", _error(e)), {"n": done, "end": True}
            return
        key, sample, members = None, {}, 0
        try:
            for member in tar:
                members += 1
                if not member.isfile():
                    continue
                parts = split_name(member.name)
                if parts is None:
                    continue
                if parts[0] != key:
                    if key is not None:
                        done += 1
                        if done > skip:
                            yield sample, {"n": done, "offset": base + member.offset}
                    key, sample = parts[0], {"__key__": parts[0], "__url__": url}
                sample[parts[1]] = tar.extractfile(member).read()
        except Exception as e:  # truncated or corrupt mid-way: the sample in progress is lost
            yield BadSample(TRUNCATED_SHARD, url, key or "", _error(e)), {"n": done, "end": True}
            return
        if key is not None:
            done += 1
            if done > skip:
                yield sample, {"n": done, "end": True}
        elif resume is None:  # read from its start, the shard held nothing usable
            yield BadSample(EMPTY_SHARD, url, "", f"a valid tar with no sample ({members} members, none a "
                                                  "file named KEY.EXT)"), {"n": done, "end": True}
    finally:
        f.close()


class ShardWriter:
    """Writes samples (dicts with ``__key__`` and ``ext -> bytes|str``) into tar shards of ``maxcount``.

    ``pattern`` has one ``%d``-style field for the shard number, e.g. ``out/cc3m-%05d.tar``; numbering
    starts at ``start``.
    """

    def __init__(self, pattern: str, maxcount: int = 10_000, start: int = 0):
        self.pattern = pattern
        self.maxcount = maxcount
        self.shard = start
        self.count = 0
        self.paths: list[str] = []
        self._tar: tarfile.TarFile | None = None

    def write(self, sample: Mapping[str, Any]) -> None:
        if "__key__" not in sample:
            raise KeyError("a webdataset sample needs a __key__")
        if self._tar is None or self.count >= self.maxcount:
            self._open_next()
        key = str(sample["__key__"])
        for ext, value in sample.items():
            if ext.startswith("__"):
                continue
            data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = int(time.time())
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def _open_next(self) -> None:
        self.close()
        path = self.pattern % self.shard
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._tar = tarfile.open(path, "w")
        self.paths.append(path)
        self.shard += 1
        self.count = 0

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_shards(samples: Iterable[Mapping[str, Any]], pattern: str, maxcount: int = 10_000,
                 start: int = 0) -> list[str]:
    """Writes samples into shards numbered from ``start``; returns the shard paths."""
    with ShardWriter(pattern, maxcount, start) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.paths


@DATASETS.register("webdataset")
def webdataset_dataset(split: str, urls: str | list | Mapping[str, Any], name: str = "webdataset",
                       image: Mapping[str, Any] | None = None, text: Mapping[str, Any] | None = None,
                       label: Mapping[str, Any] | None = None, augment: bool | None = None,
                       cycle_length: int = 4, shuffle_buffer: int = 1000, **fields: Any) -> DatasetBundle:
    """Image-text pairs, images, texts or image-label pairs from webdataset shards.

    ``urls``: a pattern (``cc3m-{00000..00331}.tar``, globs, ``a::b``, ``gs://...``, ``pipe:...``) or a
    dict split -> pattern. ``image``/``text``/``label`` (and other registered fields) configure
    preprocessing (``preprocess.py``); their ``key`` picks the tar member extensions (defaults:
    ``jpg;jpeg;png;webp``, ``txt``, ``cls``). ``augment`` defaults to True for splits named ``train*``.
    ``shuffle_buffer`` samples are shuffled in windows (raw bytes, before decoding); ``cycle_length``
    shards are read at once.
    """
    shard_urls = urls_for_split(urls, split, "shards")
    check_urls(shard_urls, f"webdataset {name} split {split}")
    train = split.startswith("train") if augment is None else augment
    specs = dict(image=image, text=text, label=label, **fields)
    specs = {k: (dict(v, key=v.get("key", _DEFAULT_KEYS.get(k, k))) if v is not None else None)
             for k, v in specs.items()}
    processor = build_processor(name, train, **specs)
    stream = functools.partial(shuffled_shard_stream, read_tar, urls=shard_urls, name=name, cycle_length=cycle_length,
                               shuffle_buffer=shuffle_buffer)
    info = dict(processor.info(), num_shards=len(shard_urls))
    return DatasetBundle(stream=stream, random_transform=processor, info=info)

