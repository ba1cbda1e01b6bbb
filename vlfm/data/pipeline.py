"""Input pipelines: dataset registry, grain pipelines per host, and global batches on the mesh.

A dataset factory returns a ``grain.MapDataset`` of example dicts (numpy leaves) for one split. The
train pipeline shards it by host, shuffles with a seed, repeats, applies the random transforms and
batches per host; ``to_global`` turns each host's rows into one ``jax.Array`` laid out over the
mesh's data-parallel axes. The grain iterator's state is saved with every checkpoint, so a resumed
run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Callable

import grain
import jax
import numpy as np

from vlfm.registry import Registry
from vlfm.train.sharding import batch_sharding

DATASETS: Registry[Callable[..., "DatasetBundle"]] = Registry("dataset")


class DatasetBundle:
    """A split's examples plus the per-example random transform (e.g. MLM masking) and metadata."""

    def __init__(self, examples: grain.MapDataset, random_transform: Callable | None = None,
                 info: Mapping[str, Any] | None = None):
        self.examples = examples
        self.random_transform = random_transform
        self.info = dict(info or {})


def build_dataset(cfg: Mapping[str, Any], split: str) -> DatasetBundle:
    cfg = dict(cfg)
    if "name" not in cfg:
        raise KeyError(f"the data config needs a 'name'; valid names: {', '.join(DATASETS.names())}")
    factory = DATASETS.get(cfg.pop("name"))
    for key in ("batch_size", "num_workers", "seed", "eval_split", "eval_examples", "train_split"):
        cfg.pop(key, None)
    return factory(split=split, **cfg)


class _RandomTransform(grain.transforms.RandomMap):
    def __init__(self, fn: Callable):
        self.fn = fn

    def random_map(self, element, rng: np.random.Generator):
        return self.fn(element, rng)


def train_iterator(bundle: DatasetBundle, *, global_batch_size: int, seed: int, num_workers: int = 0,
                   process_index: int | None = None, process_count: int | None = None) -> grain.DatasetIterator:
    """An endless, seeded, host-sharded iterator of per-host numpy batches (checkpointable)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} hosts")
    ds = bundle.examples[process_index::process_count]
    if len(ds) == 0:
        raise ValueError(f"dataset {bundle.info.get('name', '?')} yields no examples for host {process_index}")
    ds = ds.shuffle(seed=seed).repeat(None)
    if bundle.random_transform is not None:
        ds = ds.random_map(_RandomTransform(bundle.random_transform), seed=seed + 1)
    ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    if num_workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it_ds)


def numeric_only(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Drops non-array leaves (captions as strings) that cannot go to devices."""
    return {k: v for k, v in batch.items() if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}


def to_global(batch: Mapping[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """This host's rows -> global arrays sharded over the data-parallel axes."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
            for k, v in numeric_only(batch).items()}


def eval_arrays(bundle: DatasetBundle, limit: int | None = None) -> dict[str, np.ndarray]:
    """All examples of a (small, held-out) split stacked into arrays, in order, for evaluators."""
    n = len(bundle.examples) if limit is None else min(limit, len(bundle.examples))
    rows = [bundle.examples[i] for i in range(n)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-size batches over arrays; the last one is padded by repeating rows (sliced off after)."""
    n = len(next(iter(arrays.values())))
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size) % n
        yield {k: v[idx] for k, v in arrays.items()}
