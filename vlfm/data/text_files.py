"""Plain text files, one document per line, as a resumable grain stream (text-only objectives, e.g. MLM).

Files are split over hosts and workers like shards (``streaming.ShardedStream``); the resume token is
the byte offset after the last line read, so a restore seeks (``.gz`` files re-read and skip lines).
Empty lines and lines that are not UTF-8 are skipped and counted (``empty_text``, ``bad_text``).
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Iterator, Mapping
from typing import Any

from vlfm.data.bad_data import TRUNCATED_SHARD, UNREADABLE_SHARD, BadSample
from vlfm.data.pipeline import DATASETS, DatasetBundle
from vlfm.data.preprocess import build_processor
from vlfm.data.streaming import check_urls, open_url, shuffled_shard_stream, urls_for_split


def read_lines(url: str, resume: dict | None = None) -> Iterator[tuple[Any, dict]]:
    """Yields ``({"text": bytes, "__key__": line number, "__url__": url}, token)`` per line."""
    line_no = resume["n"] if resume else 0
    try:
        raw = open_url(url)
    except Exception as e:
        yield BadSample(UNREADABLE_SHARD, url, "", f"{type(e).__name__}: {e}"), {"n": line_no, "offset": None}
        return
    compressed = url.endswith(".gz")
    try:
        f = gzip.GzipFile(fileobj=raw) if compressed else raw
        skip = 0
        offset = None
        if resume is not None:
            if not compressed and resume.get("offset") is not None and raw.seekable():
                raw.seek(resume["offset"])
                offset = resume["offset"]
            else:
                skip, line_no = line_no, 0
        if offset is None and not compressed:
            offset = 0
        try:
            for line in f:
                line_no += 1
                if offset is not None:
                    offset += len(line)
                if line_no > skip:
                    yield ({"text": line.rstrip(b"\r\n"), "__key__": line_no, "__url__": url},
                           {"n": line_no, "offset": offset})
        except (OSError, EOFError) as e:  # e.g. a truncated .gz
            yield BadSample(TRUNCATED_SHARD, url, str(line_no), f"{type(e).__name__}: {e}"), {"n": line_no,
                                                                                             "offset": None}
    finally:
        raw.close()


@DATASETS.register("text_files")
def text_files_dataset(split: str, paths: str | list | Mapping[str, Any], text: Mapping[str, Any],
                       name: str = "text_files", augment: bool | None = None, cycle_length: int = 4,
                       shuffle_buffer: int = 10_000) -> DatasetBundle:
    """Documents from text files (``paths``: pattern, list, or dict split -> pattern) for text-only
    objectives; ``text`` configures tokenisation and masking (``preprocess.TextField``)."""
    urls = urls_for_split(paths, split, "text files")
    check_urls(urls, f"text_files {name} split {split}")
    train = split.startswith("train") if augment is None else augment
    processor = build_processor(name, train, text=dict(text, key="text"))
    stream = functools.partial(shuffled_shard_stream, read_lines, urls=urls, name=name, cycle_length=cycle_length,
                               shuffle_buffer=shuffle_buffer)
    return DatasetBundle(stream=stream, random_transform=processor, info=processor.info())
