"""Running predict functions over a held-out split that is spread over the hosts.

Each host reads its own share of the split (``vlfm.data.pipeline.eval_examples``) as ``(index, example)``
rows. ``eval_batches`` turns them into fixed-size host batches with the rows' indices (-1 marks padding):
every host yields the same number of batches, so a predict function over global (mesh-sharded) batches
compiles one shape and runs in step on all hosts. ``predict_rows`` runs predict functions over the
batches and keeps this host's real rows; ``gather_rows`` collects them from all hosts in index order
(as one host reading the whole split would have them). Outputs are pytrees of any dtype: token ids and
labels stay integers. ``observe_batches`` lets a caller watch the batches go by (``python -m vlfm.evaluate``'s
progress report) without changing what is computed.

A predict function is ``fn(params, batch) -> pytree`` of per-row arrays for the host's batch rows
(``vlfm.train.evaluation.make_predict_fns`` makes them from a model; tests use plain numpy functions).
"""

from __future__ import annotations

import contextlib
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from vlfm.data.bad_data import EmptyDatasetError
from vlfm.data.pipeline import HintedRows

Rows = Iterable[tuple[int, Mapping[str, Any]]]
# observer(batches_done, total_batches or None, real rows done), called by ``eval_batches`` on this host.
BatchObserver = Callable[[int, "int | None", int], None]
_OBSERVERS: list[BatchObserver] = []


@contextlib.contextmanager
def observe_batches(observer: BatchObserver) -> Iterator[None]:
    """Calls ``observer(done, total, rows)`` each time a consumer of ``eval_batches`` has finished a batch
    (``done`` counts from 1 in each pass over a split; ``total`` is the pass's batch count where the rows
    give a ``length_hint``, else None; ``rows`` the real rows of this host so far). For progress reports:
    observers see the batches, they never change them."""
    _OBSERVERS.append(observer)
    try:
        yield
    finally:
        _OBSERVERS.remove(observer)


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on any host (all hosts must call this together)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.bool_))))


def process_sum(x: np.ndarray) -> np.ndarray:
    """The sum of ``x`` (same shape on every host) over the hosts."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x
    return np.asarray(multihost_utils.process_allgather(x)).sum(axis=0)


def host_rows(arrays: Mapping[str, np.ndarray]) -> HintedRows:
    """This host's share of arrays held identically on every host: rows p, p + P, ... as ``(index, row)``."""
    n = len(next(iter(arrays.values())))
    mine = range(jax.process_index(), n, jax.process_count())
    return HintedRows(lambda: ((i, {k: v[i] for k, v in arrays.items()}) for i in mine), len(mine))


def eval_batches(rows: Rows, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """``(batch, index)`` pairs of ``ceil(batch_size / hosts)`` rows each from this host's rows.

    Padding rows repeat the host's last real row and have index -1. Hosts agree at every step on whether
    any of them has rows left, so all yield the same number of batches (a host that has run out pads a
    whole batch). Raises ``EmptyDatasetError`` when no host has a row.
    """
    per_host = -(-int(batch_size) // jax.process_count())
    hint = operator.length_hint(rows, -1)
    total = None if hint < 0 else -(-hint // per_host)
    it = iter(rows)
    last = None
    done = real = 0
    while True:
        chunk = list(itertools.islice(it, per_host))
        if not any_process(bool(chunk)):
            break
        if chunk:
            last = chunk[-1][1]
        elif last is None:
            raise EmptyDatasetError(f"host {jax.process_index()} of {jax.process_count()} has no evaluation "
                                    "example while others have some: evaluate more examples or on fewer hosts")
        index = np.full(per_host, -1, np.int64)
        index[:len(chunk)] = [i for i, _ in chunk]
        examples = [e for _, e in chunk] + [last] * (per_host - len(chunk))
        yield {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}, index
        done, real = done + 1, real + len(chunk)
        for observer in list(_OBSERVERS):
            observer(done, total, real)
    if last is None:
        raise EmptyDatasetError("the evaluation split yields no usable example")


def predict_rows(fns: Mapping[str, Callable], params: Any,
                 batches: Iterable[tuple[Mapping[str, np.ndarray], np.ndarray]]) -> tuple[np.ndarray, dict]:
    """``fn(params, batch)`` for every named function over the batches; returns this host's real rows:
    ``(index, {name: pytree of numpy arrays})`` (padding dropped, dtypes kept)."""
    indices, outputs = [], {name: [] for name in fns}
    for batch, index in batches:
        keep = index >= 0
        indices.append(index[keep])
        for name, fn in fns.items():
            outputs[name].append(jax.tree.map(lambda x: np.asarray(x)[keep], fn(params, batch)))
    if not indices:
        raise EmptyDatasetError("no evaluation batch")
    rows = {name: jax.tree.map(lambda *xs: np.concatenate(xs), *outs) for name, outs in outputs.items()}
    return np.concatenate(indices), rows


def gather_rows(index: np.ndarray, tree: Any) -> Any:
    """Every host's rows of ``tree`` (arrays with ``len(index)`` rows), on every host, sorted by ``index``."""
    if jax.process_count() == 1:
        order = np.argsort(index, kind="stable")
        return jax.tree.map(lambda x: x[order], tree)
    counts = np.asarray(multihost_utils.process_allgather(np.asarray(len(index), np.int64)))
    size = int(counts.max())

    def padded(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)])

    index_all = np.asarray(multihost_utils.process_allgather(padded(np.asarray(index, np.int64))))
    tree_all = multihost_utils.process_allgather(jax.tree.map(padded, tree))
    real = (np.arange(size)[None] < counts[:, None]).ravel()
    order = np.argsort(index_all.ravel()[real], kind="stable")
    return jax.tree.map(lambda x: np.asarray(x).reshape(-1, *x.shape[2:])[real][order], tree_all)


def predict_split(fns: Mapping[str, Callable], params: Any, rows: Rows, batch_size: int) -> dict:
    """``predict_rows`` over ``eval_batches(rows)``, gathered from all hosts in index order."""
    index, outputs = predict_rows(fns, params, eval_batches(rows, batch_size))
    return gather_rows(index, outputs)


def predict_all(fn: Callable, params: Any, arrays: Mapping[str, np.ndarray], batch_size: int) -> Any:
    """``fn`` over arrays held identically on every host (each host runs its share of the rows): the
    outputs of all rows, in order, on every host."""
    return predict_split({"out": fn}, params, host_rows(arrays), batch_size)["out"]
