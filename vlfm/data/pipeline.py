"""Input pipelines: dataset registry, grain pipelines per host, and global batches on the mesh.

A dataset factory returns a ``DatasetBundle`` for one split: either a finite random-access
``grain.MapDataset`` of records (TFDS, the built-in data) or a ``stream`` factory of a grain
``IterDataset`` (webdataset shards, text files, mixtures), plus a per-example ``random_transform``
(decoding, augmentation, tokenisation, masking; it may return a ``BadSample``). ``example_stream``
turns either kind into one endless, seeded, host-sharded stream of clean examples; ``train_iterator``
batches it per host (in ``num_workers`` processes) into a checkpointable ``DataIterator``, and
``to_global`` makes each host's rows one ``jax.Array`` laid out over the mesh's data-parallel axes.
The iterator's state is saved with every checkpoint, so a resumed run sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import grain
import jax
import numpy as np
from absl import flags

from vlfm.core.sharding import batch_sharding
from vlfm.data.bad_data import BadSample, DropBad, EmptyDatasetError, bad_counts
from vlfm.data.counters import mix_counts
from vlfm.data.normalization import NORMALIZE, host_normalize
from vlfm.data.workers import die_with_parent
from vlfm.registry import Registry

DATASETS: Registry[Callable[..., "DatasetBundle"]] = Registry("dataset")
# Keys of a data config that configure the pipeline, not the dataset factory.
PIPELINE_KEYS = ("batch_size", "num_workers", "seed", "eval_split", "eval_examples", "train_split", "weight",
                 "prefetch_to_device", "normalize_on_device")


class DatasetBundle:
    """A split's examples (``examples`` MapDataset or ``stream`` factory), the per-example random
    transform and metadata (``info``: name, tokenizer, max_len, class names, ...).

    Images stay uint8 through ``raw_transform``; ``info["normalize"]`` names their statistics
    (``vlfm.data.normalization``) and ``random_transform`` is the raw one followed by the host
    normalisation (float32), what every reader but the train loop sees.

    ``stream(seed=, process_index=, process_count=, num_epochs=, shuffle=)`` returns a grain
    ``IterDataset`` of this host's records (or ``BadSample`` markers); its sources split the data
    further over grain's worker processes.
    """

    def __init__(self, examples: grain.MapDataset | None = None, random_transform: Callable | None = None,
                 info: Mapping[str, Any] | None = None, *, stream: Callable[..., grain.IterDataset] | None = None):
        if (examples is None) == (stream is None):
            raise ValueError("a DatasetBundle needs exactly one of examples (MapDataset) or stream")
        self.examples = examples
        self.stream = stream
        self.info = dict(info or {})
        self.raw_transform = random_transform
        self.normalization = dict(self.info.get(NORMALIZE) or {})
        self.random_transform = (_Normalized(random_transform, self.normalization) if self.normalization
                                 else random_transform)

    @property
    def name(self) -> str:
        return str(self.info.get("name", "dataset"))

    def example_stream(self, *, seed: int, process_index: int = 0, process_count: int = 1,
                       num_epochs: int | None = None, shuffle: bool = True, normalize: bool = True
                       ) -> grain.IterDataset:
        """Clean examples for one host: sharded, shuffled, repeated, transformed, bad samples dropped.
        ``normalize=False`` keeps the images uint8 (``info["normalize"]`` says how to normalise them)."""
        if self.examples is not None:
            ds = self.examples[process_index::process_count]
            if len(ds) == 0:
                raise EmptyDatasetError(f"dataset {self.name} yields no examples for host {process_index} of "
                                        f"{process_count}")
            if shuffle:
                ds = ds.shuffle(seed=seed)
            ds = ds.repeat(num_epochs)
            it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
        else:
            it_ds = self.stream(seed=seed, process_index=process_index, process_count=process_count,
                                num_epochs=num_epochs, shuffle=shuffle)
        transform = self.random_transform if normalize else self.raw_transform
        if transform is not None:
            it_ds = it_ds.random_map(_RandomTransform(transform), seed=host_seed(seed, process_index))
        return DropBad(it_ds, name=self.name)

    def example(self, normalize: bool = True) -> dict[str, np.ndarray]:
        """One transformed example (the first usable one), e.g. for shapes at model initialisation."""
        it = iter(self.example_stream(seed=0, num_epochs=1, shuffle=False, normalize=normalize))
        try:
            return next(it)
        except StopIteration:
            raise EmptyDatasetError(f"dataset {self.name} yields no usable example") from None
        finally:
            it.close()


def host_seed(seed: int, process_index: int) -> int:
    """A 32-bit seed for this host's random transforms (hosts must not draw the same augmentations)."""
    return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])


def _plain(value: Any) -> Any:
    """ConfigDicts -> dicts (recursively) so factories get plain kwargs."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def build_dataset(cfg: Mapping[str, Any], split: str) -> DatasetBundle:
    cfg = _plain(cfg)
    if "name" not in cfg:
        raise KeyError(f"the data config needs a 'name'; valid names: {', '.join(DATASETS.names())}")
    factory = DATASETS.get(cfg.pop("name"))
    for key in PIPELINE_KEYS:
        cfg.pop(key, None)
    return factory(split=split, **cfg)


class _Normalized:
    """A raw transform followed by the host normalisation of its declared image keys (picklable)."""

    def __init__(self, fn: Callable | None, stats: Mapping[str, Any]):
        self.fn, self.stats = fn, dict(stats)

    def __call__(self, example: Any, rng: np.random.Generator) -> Any:
        out = self.fn(example, rng) if self.fn is not None else example
        return out if isinstance(out, BadSample) else host_normalize(out, self.stats)


class _RandomTransform(grain.transforms.RandomMap):
    def __init__(self, fn: Callable):
        self.fn = fn

    def random_map(self, element, rng: np.random.Generator):
        return element if isinstance(element, BadSample) else self.fn(element, rng)


class DataIterator(grain.DatasetIterator):
    """The train iterator: per-host batches, checkpointable (with the worker count), with ``stats()``.

    ``stats()`` gives counters for the metrics: ``data/bad/<kind>`` (samples or shards skipped) and, for
    mixtures, ``data/<dataset>/examples``. They are read from the pipeline state, so they are exact for
    the batches consumed so far, whichever worker produced them, and they continue across a resume.
    """

    def __init__(self, inner: grain.DatasetIterator, *, num_workers: int, name: str):
        super().__init__(inner)
        self.num_workers = num_workers
        self.name = name

    def __next__(self) -> Any:
        return next(self._parent)

    def get_state(self) -> dict:
        return {"num_workers": self.num_workers, "pipeline": self._parent.get_state()}

    def set_state(self, state: dict) -> None:
        if state.get("num_workers") != self.num_workers:
            raise ValueError(f"data iterator state of {self.name} was saved with num_workers="
                             f"{state.get('num_workers')}, this run has num_workers={self.num_workers}: element "
                             "order depends on the worker count, so resume with the same data.num_workers")
        self._parent.set_state(state["pipeline"])

    def stats(self) -> dict[str, float]:
        return pipeline_stats(self._parent.get_state())

    def __str__(self) -> str:
        return f"DataIterator({self.name}, num_workers={self.num_workers})"


def pipeline_stats(state: Any) -> dict[str, float]:
    """Bad-data and mixing counters from a (nested) pipeline state."""
    out: dict[str, float] = {}
    per_dataset = bad_counts(state)
    for kinds in per_dataset.values():
        for kind, n in kinds.items():
            out[f"data/bad/{kind}"] = out.get(f"data/bad/{kind}", 0.0) + n
    mixed = mix_counts(state)
    for name, n in mixed.items():
        out[f"data/{name}/examples"] = float(n)
    if mixed:
        for name, kinds in per_dataset.items():
            if name in mixed:
                for kind, n in kinds.items():
                    out[f"data/{name}/bad/{kind}"] = float(n)
    return out


def train_iterator(bundle: DatasetBundle, *, global_batch_size: int, seed: int, num_workers: int = 0,
                   process_index: int | None = None, process_count: int | None = None,
                   normalize: bool = True) -> DataIterator:
    """An endless, seeded, host-sharded iterator of per-host numpy batches (checkpointable); images
    uint8 with ``normalize=False`` (the step normalises them, ``bundle.normalization``)."""
    if process_index is None or process_count is None:
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} hosts")
    ds = bundle.example_stream(seed=seed, process_index=process_index, process_count=process_count,
                               normalize=normalize)
    ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        # Workers end when this process does, even when it is killed with SIGKILL (see workers.py).
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                            worker_init_fn=functools.partial(die_with_parent, os.getpid()))
    return DataIterator(iter(ds), num_workers=num_workers, name=bundle.name)


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside ``absl.app.run`` nothing has parsed them."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def numeric_only(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Drops non-array leaves (captions as strings) that cannot go to devices."""
    return {k: v for k, v in batch.items() if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}


def to_global(batch: Mapping[str, np.ndarray], mesh) -> dict:
    """This host's rows -> global ``jax.Array``s sharded over the data-parallel axes."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
            for k, v in numeric_only(batch).items()}


def eval_arrays(bundle: DatasetBundle, limit: int | None = None) -> dict[str, np.ndarray]:
    """The first ``limit`` usable examples of a (held-out) split, in order, stacked into arrays (the whole
    split in one host's memory: for tests and inspection; evaluators read ``eval_examples``).

    Random transforms run with a fixed seed, so evaluation inputs are the same every time.
    """
    rows = [example for _, example in eval_examples(bundle, limit, process_index=0, process_count=1)]
    if not rows:
        raise EmptyDatasetError(f"dataset {bundle.name} yields no usable example for evaluation")
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class HintedRows:
    """Evaluation rows (an iterable; each ``iter`` starts them afresh) with the number this host expects
    to read as ``operator.length_hint``, for progress reports: exact for random-access splits without bad
    examples, the ``limit`` share for streams, unknown (no hint) for a whole stream."""

    def __init__(self, rows: Callable[[], Iterator[tuple[int, dict[str, Any]]]], expected: int | None):
        self._rows, self.expected = rows, expected

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        return self._rows()

    def __length_hint__(self) -> int:
        return NotImplemented if self.expected is None else self.expected


def eval_examples(bundle: DatasetBundle, limit: int | None = None, *, process_index: int | None = None,
                  process_count: int | None = None) -> HintedRows:
    """This host's share of the first ``limit`` usable examples of a held-out split, in order, as
    ``(index, example)`` pairs: what an evaluator reads, so no host holds the whole split.

    Host p of P reads the split's own host sharding (records p, p + P, ... of a random-access split; its
    shards of a streamed one) and keeps ``limit // P`` (+1 for the first ``limit % P`` hosts) usable
    examples; its j-th example has index ``p + P * j``, so results gathered in index order are those of
    one host reading the first ``limit`` examples. Random transforms run with a fixed seed per host, so
    evaluation inputs are the same every time. The result's ``length_hint`` is how many rows this host
    expects (``HintedRows``).
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    share = None if limit is None else int(limit) // process_count + (process_index < int(limit) % process_count)
    expected = share
    if bundle.examples is not None:
        records = len(range(process_index, len(bundle.examples), process_count))
        expected = records if share is None else min(share, records)

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        if share == 0:
            return
        it = iter(bundle.example_stream(seed=0, process_index=process_index, process_count=process_count,
                                        num_epochs=1, shuffle=False))
        try:
            for j, example in enumerate(itertools.islice(it, share)):
                yield process_index + process_count * j, example
        finally:
            it.close()

    return HintedRows(rows, expected)
