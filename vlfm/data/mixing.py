"""Dataset mixing, deterministic from the seed and checkpointable.

- Mixed within a batch (``name="mixture"`` in a data config): ``MixStream`` draws each example from one
  of several example streams; the batch is formed after mixing, so one batch holds several datasets.
- One dataset per step (FLAVA, PolyViT): ``PerStepMixIterator`` picks a dataset for each step and yields
  ``(dataset_name, batch)`` from that dataset's own train iterator (own batch size and shapes).

``sampling="weighted"`` draws the dataset at random with the given weights (seeded); ``"round_robin"``
is deterministic and keeps every prefix as close to the weights as possible (equal weights cycle
through the datasets in order). Per-dataset counts live in the iterator state and appear in
``DataIterator.stats()`` / ``PerStepMixIterator.stats()``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from vlfm.data.counters import MIX_KEY, mix_counts  # noqa: F401  (mix_counts: part of this module's API)
from vlfm.data.pipeline import DATASETS, DataIterator, DatasetBundle, build_dataset, pipeline_stats, train_iterator

SAMPLINGS = ("weighted", "round_robin")
_BLOCK = 1024  # weighted choices are drawn in blocks of this many, each block seeded by its index


def _normalised(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"mixture weights must be non-negative with a positive sum, got {list(weights)}")
    return w / w.sum()


class Chooser:
    """Which dataset the i-th draw uses: a pure function of (seed, i, counts so far)."""

    def __init__(self, weights: Sequence[float], sampling: str, seed: int):
        if sampling not in SAMPLINGS:
            raise ValueError(f"unknown mixture sampling {sampling!r}; valid: {', '.join(SAMPLINGS)}")
        self.p = _normalised(weights)
        self.sampling = sampling
        self.seed = seed
        self._block_index, self._block = -1, None

    def __call__(self, index: int, counts: Sequence[int]) -> int:
        if self.sampling == "round_robin":
            deficit = self.p * (index + 1) - np.asarray(counts)
            return int(np.argmax(deficit))  # ties -> the first dataset
        block = index // _BLOCK
        if block != self._block_index:
            rng = np.random.default_rng([self.seed, block])
            self._block_index, self._block = block, rng.choice(len(self.p), size=_BLOCK, p=self.p)
        return int(self._block[index % _BLOCK])


class MixStream(grain.IterDataset):
    """Interleaves example streams, one example at a time, by ``Chooser``; ends when a chosen one ends."""

    def __init__(self, parents: Sequence[grain.IterDataset], names: Sequence[str], weights: Sequence[float],
                 sampling: str = "weighted", seed: int = 0):
        super().__init__(list(parents))
        if len(parents) != len(names) or len(parents) != len(weights):
            raise ValueError("MixStream needs one name and one weight per dataset")
        self.names = list(names)
        self.weights = list(weights)
        self.sampling = sampling
        self.seed = seed
        Chooser(weights, sampling, seed)  # validate now

    def __iter__(self) -> grain.DatasetIterator:
        return _MixIterator([p.__iter__() for p in self.parents], self)

    def __str__(self) -> str:
        return f"MixStream({', '.join(self.names)}, {self.sampling})"


class _MixIterator(grain.DatasetIterator):
    def __init__(self, parents: list[grain.DatasetIterator], ds: MixStream):
        super().__init__(parents)
        self.ds = ds
        self.chooser = Chooser(ds.weights, ds.sampling, ds.seed)
        self.index = 0
        self.counts = [0] * len(parents)

    def __next__(self):
        i = self.chooser(self.index, self.counts)
        element = next(self._parents[i])
        self.index += 1
        self.counts[i] += 1
        return element

    def get_state(self) -> dict:
        return {"parents": [p.get_state() for p in self._parents], "index": self.index,
                MIX_KEY: {"names": self.ds.names, "counts": list(self.counts)}}

    def set_state(self, state: dict) -> None:
        for parent, s in zip(self._parents, state["parents"]):
            parent.set_state(s)
        self.index = int(state["index"])
        self.counts = [int(c) for c in state[MIX_KEY]["counts"]]


def _mixed_stream(*, bundles: Mapping[str, DatasetBundle], weights: Sequence[float], sampling: str, seed: int,
                  process_index: int, process_count: int, num_epochs: int | None, shuffle: bool) -> grain.IterDataset:
    parents = [b.example_stream(seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]),
                                process_index=process_index, process_count=process_count, num_epochs=num_epochs,
                                shuffle=shuffle)
               for i, b in enumerate(bundles.values())]
    return MixStream(parents, list(bundles), weights, sampling, seed)


def _sub_configs(datasets: Mapping[str, Any]) -> tuple[dict[str, dict], list[float]]:
    if not datasets:
        raise ValueError("a mixture needs datasets: {name: {name=<dataset>, weight=..., ...}}")
    configs, weights = {}, []
    for key, cfg in datasets.items():
        cfg = dict(cfg)
        weights.append(float(cfg.pop("weight", 1.0)))
        configs[key] = cfg
    return configs, weights


@DATASETS.register("mixture")
def mixture_dataset(split: str, datasets: Mapping[str, Mapping[str, Any]], sampling: str = "weighted",
                    name: str = "mixture") -> DatasetBundle:
    """Several datasets mixed within each batch. ``datasets``: key -> a data config (``name`` of the
    dataset, its fields, ``weight``, optionally ``split`` to read another split name). The datasets
    must produce the same example keys and shapes; the first one's info (tokenizer, ...) is kept."""
    configs, weights = _sub_configs(datasets)
    bundles = {}
    for key, cfg in configs.items():
        sub_split = cfg.pop("split", split)
        cfg.setdefault("name", key)
        bundle = build_dataset(cfg, sub_split)
        bundle.info["name"] = key  # counters and errors name the mixture entry
        bundles[key] = bundle
    stream = functools.partial(_mixed_stream, bundles=bundles, weights=weights, sampling=sampling)
    info = dict(next(iter(bundles.values())).info, name=name, datasets=list(bundles), weights=weights)
    return DatasetBundle(stream=stream, info=info)


class PerStepMixIterator(grain.DatasetIterator):
    """Yields ``(dataset_name, batch)``: one dataset per step, chosen by seed and weights.

    Each dataset has its own ``DataIterator`` (own batch size, workers and state); only the chosen one
    advances. Checkpointable with grain's ``CheckpointSave`` like any train iterator.
    """

    def __init__(self, iterators: Mapping[str, DataIterator], weights: Sequence[float], *,
                 sampling: str = "weighted", seed: int = 0):
        super().__init__(list(iterators.values()))
        self.names = list(iterators)
        self.iterators = dict(iterators)
        self.chooser = Chooser(weights, sampling, seed)
        self.step = 0
        self.counts = [0] * len(self.names)

    def __next__(self) -> tuple[str, Any]:
        i = self.chooser(self.step, self.counts)
        batch = next(self.iterators[self.names[i]])
        self.step += 1
        self.counts[i] += 1
        return self.names[i], batch

    def get_state(self) -> dict:
        return {"step": self.step, "counts": list(self.counts),
                "iterators": {n: it.get_state() for n, it in self.iterators.items()}}

    def set_state(self, state: dict) -> None:
        if sorted(state["iterators"]) != sorted(self.names):
            raise ValueError(f"saved per-step mixture has datasets {sorted(state['iterators'])}, this one "
                             f"{sorted(self.names)}")
        for name, it in self.iterators.items():
            it.set_state(state["iterators"][name])
        self.step = int(state["step"])
        self.counts = [int(c) for c in state["counts"]]

    def stats(self) -> dict[str, float]:
        out = {f"data/{n}/steps": float(c) for n, c in zip(self.names, self.counts)}
        for name, it in self.iterators.items():
            for key, value in pipeline_stats(it.get_state()).items():
                out[key.replace("data/", f"data/{name}/", 1)] = value
        return out


def per_step_iterator(datasets: Mapping[str, Mapping[str, Any]], *, split: str = "train", seed: int = 0,
                      sampling: str = "weighted", num_workers: int = 0, process_index: int | None = None,
                      process_count: int | None = None) -> PerStepMixIterator:
    """A ``PerStepMixIterator`` from data configs: key -> {name, batch_size, weight, fields, ...}."""
    configs, weights = _sub_configs(datasets)
    iterators = {}
    for i, (key, cfg) in enumerate(configs.items()):
        if "batch_size" not in cfg:
            raise ValueError(f"per-step mixture entry {key!r} needs a batch_size")
        batch_size = int(cfg["batch_size"])
        workers = int(cfg.get("num_workers", num_workers))
        sub_split = cfg.pop("split", split)
        cfg.setdefault("name", key)
        bundle = build_dataset(cfg, sub_split)
        bundle.info["name"] = key
        iterators[key] = train_iterator(bundle, global_batch_size=batch_size,
                                        seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]),
                                        num_workers=workers, process_index=process_index,
                                        process_count=process_count)
    return PerStepMixIterator(iterators, weights, sampling=sampling, seed=seed)
