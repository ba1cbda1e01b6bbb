"""Train-state checkpointing on top of orbax's CheckpointManager.

One checkpoint step directory holds one orbax Composite with an item per
top-level key of the train state (``params``, ``opt_state``, ``step`` and,
when present, ``ema_params``), plus ``data`` (a grain iterator state, when
given) and ``meta`` (small JSON). Keeping ``params`` a separate item lets
fine-tuning and teacher models read it without touching the optimizer state.

Restores always go through an abstract target (``jax.ShapeDtypeStruct`` with
``.sharding``): that is what lets a checkpoint written on one mesh be read on
another one, and what keeps optax's namedtuple states intact.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

# Orbax writes this file into a step directory right before committing it
# (atomic rename on POSIX, in-place marker on GCS). A step directory without
# it was never completed.
COMMIT_MARKER = "commit_success.txt"
DATA_ITEM = "data"
META_ITEM = "meta"
_RESERVED = (DATA_ITEM, META_ITEM)
LEAF_KEY = "value"


def _as_path(directory: str | os.PathLike) -> epath.Path:
    """Orbax wants absolute paths; leave remote URLs (gs://...) untouched."""
    directory = os.fspath(directory)
    if "://" not in directory:
        directory = os.path.abspath(directory)
    return epath.Path(directory)


def _is_single_leaf(value: Any) -> bool:
    return jax.tree_util.treedef_is_leaf(jax.tree.structure(value))


def _wrap(value: Any) -> Any:
    """StandardSave refuses a bare array (the ``step`` scalar), so single leaves go in a dict."""
    return {LEAF_KEY: value} if _is_single_leaf(value) else value


def _unwrap(abstract: Any, restored: Any) -> Any:
    return restored[LEAF_KEY] if _is_single_leaf(abstract) else restored


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, a lost bucket...); the original error is its cause.

    ``step`` is the checkpoint that failed, ``last_committed`` the newest intact one (None: none yet),
    ``disk_full`` whether the storage said it has no space (or quota) left.
    """

    def __init__(self, message: str, *, step: int | None, last_committed: int | None, disk_full: bool):
        super().__init__(message)
        self.step, self.last_committed, self.disk_full = step, last_committed, disk_full


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How the same condition reads once it has passed through tensorstore (array writes): a ValueError whose
# text holds the OS message and errno ("RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']").
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", f"os_error_code='{errno.ENOSPC}'",
                    f"os_error_code='{errno.EDQUOT}'")


def _is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` or any exception it chains (cause or context) says the storage is full."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(current) for text in _DISK_FULL_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


def _size_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _tree_bytes(tree: Any) -> int:
    return sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(tree))


def _json_snapshot(meta: dict | None) -> dict:
    """Copy through JSON so a non-serialisable value fails now, not in a background thread."""
    return json.loads(json.dumps(meta or {}))


class Checkpointer:
    """Async orbax checkpoints of the train state + data iterator, keep-N, preemption-aware.

    Call ``save(step, ...)`` after every train step (it is cheap when it does
    not save): in multi-process jobs orbax's preemption sync point must be
    consulted at every step on every process. Then call ``should_stop(step)``
    and leave the loop when it returns True. Call ``close()`` before exiting
    so the last async save is committed: a process that exits while a save
    is in flight leaves only an uncommitted temporary directory behind.

    Args:
      directory: root directory; one sub-directory per step.
      keep: number of most recent checkpoints kept on disk.
      save_every: ``save`` writes when ``step % save_every == 0``.
      async_save: write to disk in a background thread.
      handle_sigterm: in single-process runs, turn SIGTERM into a checkpoint
        plus ``should_stop() == True`` instead of an immediate kill.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        save_every: int = 1000,
        async_save: bool = True,
        handle_sigterm: bool = True,
    ):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        self.directory = _as_path(directory)
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            # Every save decision is made here (interval, force, preemption).
            save_interval_steps=1,
            enable_async_checkpointing=async_save,
            # Leftovers of a save interrupted by a crash or a kill are removed.
            cleanup_tmp_directories=True,
            create=True,
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options)
        self._sigterm_seen = threading.Event()
        self._stop = False
        self._last_requested: int | None = None
        self._bytes: dict[int, int] = {}  # bytes of arrays each requested step writes (for a full-disk message)
        self._failed = False  # a write error was raised; close() then does not raise it a second time
        self._previous_handler: Any = None
        self._handler_installed = False
        if handle_sigterm:
            self._install_sigterm_handler()
        broken = [s for s in self._mngr.all_steps() if not self._is_committed(s)]
        if broken:
            log.warning("Ignoring uncommitted checkpoint step directories %s in %s", broken, self.directory)

    # --- preemption -----------------------------------------------------

    def _install_sigterm_handler(self) -> None:
        """Single-process runs only: JAX's preemption service covers multi-process jobs."""
        if jax.process_count() > 1:
            return
        if threading.current_thread() is not threading.main_thread():
            log.warning("Checkpointer created outside the main thread; SIGTERM is not handled.")
            return
        self._previous_handler = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._handler_installed = True

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        # Only set a flag (no I/O, no logging): the checkpoint is written from the train loop.
        self._sigterm_seen.set()
        previous = self._previous_handler
        if callable(previous):
            previous(signum, frame)

    @property
    def preempted(self) -> bool:
        """Whether this process has seen a SIGTERM (single-process runs)."""
        return self._sigterm_seen.is_set()

    def _reached_preemption(self, step: int) -> bool:
        # orbax's check is JAX's coordinated preemption sync point; it is False without jax.distributed.
        return self._sigterm_seen.is_set() or self._mngr.reached_preemption(step)

    # --- queries --------------------------------------------------------

    def _step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def _is_committed(self, step: int) -> bool:
        return (self._step_dir(step) / COMMIT_MARKER).exists()

    def all_steps(self) -> list[int]:
        """Fully committed steps, ascending."""
        return sorted(s for s in self._mngr.all_steps() if self._is_committed(s))

    def latest_step(self) -> int | None:
        """Latest fully committed step; in-flight async saves and half-written ones do not count."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    # --- save -----------------------------------------------------------

    def save(
        self,
        step: int,
        state: dict,
        *,
        data_iterator: Any = None,
        meta: dict | None = None,
        force: bool = False,
    ) -> bool:
        """Saves on the interval, when forced, or at a preemption; returns whether it saved.

        When this returns, the arrays have been copied to host memory, so the
        caller may donate or overwrite ``state`` right away; the write to disk
        continues in the background.
        """
        step = int(step)
        preempted = self._reached_preemption(step)
        if not (force or preempted or step % self.save_every == 0):
            return False
        if preempted:
            self._stop = True
        if step in self._mngr.all_steps():
            if step == self._last_requested or self._is_committed(step):
                return False
            raise RuntimeError(
                f"{self._step_dir(step)} exists but is not a committed checkpoint; remove it to save step {step}."
            )
        for key in state:
            if key in _RESERVED:
                raise ValueError(f"State key {key!r} clashes with a checkpoint item name.")
        items = {key: ocp.args.StandardSave(_wrap(value)) for key, value in state.items()}
        if data_iterator is not None:
            items[DATA_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
        items[META_ITEM] = ocp.args.JsonSave({**_json_snapshot(meta), "step": step})
        in_flight = self._last_requested
        self._bytes = {s: n for s, n in self._bytes.items() if s == in_flight}
        self._bytes[step] = _tree_bytes(state)
        with self._naming_write_errors(lambda: in_flight if in_flight is not None and not self._is_committed(in_flight)
                                       else step):
            saved = self._mngr.save(step, args=ocp.args.Composite(**items), force=True)
        if saved:
            self._last_requested = step
            if preempted:
                log.warning("Preemption (SIGTERM) seen: checkpoint requested at step %d.", step)
        return bool(saved)

    def should_stop(self, step: int) -> bool:
        """True once a preemption was seen and its checkpoint was requested by ``save``."""
        del step  # The decision was taken (and coordinated across processes) in save().
        return self._stop

    def wait(self) -> None:
        """Blocks until the in-flight async save is committed; raises ``CheckpointWriteError`` if it failed."""
        with self._naming_write_errors(lambda: self._last_requested):
            self._mngr.wait_until_finished()

    @contextlib.contextmanager
    def _naming_write_errors(self, failed_step: Callable[[], int | None]) -> Iterator[None]:
        """Turns a failed write into one ``CheckpointWriteError`` naming the directory, the failed step, the
        space it needed and the last committed step; the original error stays chained as its cause.

        A write fails in orbax's background threads and surfaces at the next save or wait; by then orbax
        has logged it (often several times). The message here is what ends the run.
        """
        try:
            yield
        except Exception as e:
            if self._failed or isinstance(e, CheckpointWriteError):
                raise
            self._failed = True
            raise self._write_error(failed_step(), e) from e

    def _write_error(self, step: int | None, error: Exception) -> CheckpointWriteError:
        try:
            last = self.latest_step()
        except Exception:  # the storage may be unreadable too; the message says so instead
            last = None
            intact = "the committed checkpoints could not be listed"
        else:
            intact = (f"the last committed checkpoint, step {last}, is intact" if last is not None
                      else "no checkpoint was committed yet")
        what = f"checkpoint step {step}" if step is not None else "a checkpoint"
        full = _is_disk_full(error)
        if full:
            needed = self._bytes.get(step) if step is not None else None
            free = None
            if "://" not in os.fspath(self.directory):
                try:
                    free = shutil.disk_usage(os.fspath(self.directory)).free
                except OSError:
                    pass
            sizes = [f"it needs about {_size_text(needed)} of arrays" if needed else "",
                     f"{_size_text(free)} free there now" if free is not None else ""]
            sizes_text = "; ".join(t for t in sizes if t)
            cause = f"the disk is full or over quota{' (' + sizes_text + ')' if sizes_text else ''}"
        else:
            cause = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
        return CheckpointWriteError(
            f"{what} could not be written to {self.directory}: {cause}. {intact[0].upper() + intact[1:]}"
            f"{'; free space and rerun to resume from it' if full and last is not None else ''}.",
            step=step, last_committed=last, disk_full=full)

    # --- restore --------------------------------------------------------

    def restore(
        self,
        abstract_state: dict,
        *,
        step: int | None = None,
        data_iterator: Any = None,
    ) -> tuple[dict, dict]:
        """Restores onto the shardings of ``abstract_state`` (ShapeDtypeStructs); returns (state, meta).

        ``data_iterator`` is set to the saved position in place.
        """
        self.wait()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"No committed checkpoint in {self.directory}.")
        elif not self._is_committed(step):
            raise FileNotFoundError(f"No committed checkpoint for step {step} in {self.directory}.")
        items = {key: ocp.args.StandardRestore(_wrap(value)) for key, value in abstract_state.items()}
        if data_iterator is not None:
            data_dir = self._step_dir(step) / DATA_ITEM
            if not data_dir.exists():
                raise ValueError(f"Checkpoint step {step} has no data iterator state.")
            # grain writes one state per process; data shards follow the process count, so a run with
            # another count cannot continue those streams: it restarts them (model and optimizer restored).
            if (data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json").exists():
                items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
            else:
                saved = sorted(p.name for p in data_dir.glob("process_*.json"))
                log.warning("Checkpoint step %d holds data iterator states %s of another process count (this run "
                            "has %d): model, optimizer and step are restored, the data streams start afresh.", step,
                            saved, jax.process_count())
        items[META_ITEM] = ocp.args.JsonRestore()
        restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
        state = {key: _unwrap(value, restored[key]) for key, value in abstract_state.items()}
        return state, dict(restored[META_ITEM])

    def _wait_for_cleanup(self) -> None:
        """Waits for orbax's start-up removal of temporary directories (a background thread).

        ``CheckpointManager.close`` does not wait for it; a run that fails early (a missing
        ``init_from`` source) would exit with that thread still running, and its next file-system
        call then fails at interpreter shutdown ("cannot schedule new futures after interpreter
        shutdown"), burying the run's real error under a second traceback.
        """
        pending = getattr(self._mngr, "_cleanup_tmp_directory_future", None)
        if pending is not None:
            pending.result()
            self._mngr._cleanup_tmp_directory_future = None

    def _wait_for_abandoned_writes(self) -> None:
        """After a failed save, waits for the save's other writes (orbax runs each in its own thread).

        orbax reports the first failed write and leaves the others running; they keep writing into the
        step's temporary directory, where the next manager's start-up clean-up would race them
        ("Directory not empty"). Their own errors are echoes of the failure already raised.
        """
        async_manager = getattr(getattr(self._mngr, "_checkpointer", None), "_async_manager", None)
        for pending in getattr(async_manager, "_commit_futures", None) or ():
            try:
                pending.result()
            except Exception as e:
                log.debug("a write of the failed checkpoint also failed: %s", e)

    def close(self) -> None:
        """Waits for pending saves and background clean-up; gives SIGTERM back to the previous handler.

        Raises ``CheckpointWriteError`` if the last save failed, unless that failure was raised already
        (``close`` in a ``finally`` must not bury the error that ended the run under a second one).
        """
        try:
            self._wait_for_cleanup()
            if not self._failed:
                self.wait()  # a failed last save is raised here, named
        finally:
            try:
                if self._failed:
                    self._wait_for_abandoned_writes()
                    try:
                        self._mngr.close()
                    except Exception as e:  # the failure already raised, seen again by orbax's close
                        log.debug("checkpoint manager close after a failed write: %s", e)
                else:
                    with self._naming_write_errors(lambda: self._last_requested):
                        self._mngr.close()
            finally:
                if self._handler_installed:
                    signal.signal(signal.SIGTERM, self._previous_handler)
                    self._handler_installed = False


# --- params-only checkpoints ---------------------------------------------


def export_params(params: Any, directory: str | os.PathLike) -> None:
    """Writes params alone as a plain orbax checkpoint (for fine-tuning and conversion).

    An existing export in ``directory`` is replaced. All processes must call this.
    """
    ckptr = ocp.StandardCheckpointer()
    try:
        ckptr.save(_as_path(directory), params, force=True)
        ckptr.wait_until_finished()
    finally:
        ckptr.close()


def _load_pytree(path: epath.Path, abstract: Any) -> Any:
    """Reads one orbax pytree directory, resharded onto ``abstract`` or as numpy when it is None.

    A ShapeDtypeStruct without sharding is not enough for a host restore: orbax
    then falls back to the saved sharding, which fails on a different device
    count. Asking for ``np.ndarray`` explicitly avoids devices altogether.
    """
    if abstract is not None:
        handler = ocp.StandardCheckpointHandler()
        args = ocp.args.StandardRestore(abstract)
    else:
        handler = ocp.PyTreeCheckpointHandler()
        tree = handler.metadata(path).tree
        args = ocp.args.PyTreeRestore(
            item=jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree),
            restore_args=jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), tree),
        )
    try:
        return handler.restore(path, args=args)
    finally:
        handler.close()


def load_params(directory: str | os.PathLike, abstract_params: Any = None) -> Any:
    """Reads an ``export_params`` checkpoint.

    With ``abstract_params`` (ShapeDtypeStructs with shardings) the arrays are
    resharded onto those shardings; without, they come back as numpy arrays.
    """
    path = _as_path(directory)
    if not (path / COMMIT_MARKER).exists():
        raise FileNotFoundError(f"No committed params export in {path}.")
    return _load_pytree(path, abstract_params)


def load_params_from_checkpoint(
    directory: str | os.PathLike, abstract_params: Any = None, step: int | None = None
) -> Any:
    """Reads only the ``params`` item of a training checkpoint (fine-tuning, teachers).

    ``step`` None means the latest committed step. Without ``abstract_params``
    the arrays come back as numpy arrays.
    """
    path = _as_path(directory)
    if step is None:
        steps = [s for s in ocp.utils.checkpoint_steps(path) if (path / str(s) / COMMIT_MARKER).exists()]
        if not steps:
            raise FileNotFoundError(f"No committed checkpoint in {path}.")
        step = max(steps)
    elif not (path / str(step) / COMMIT_MARKER).exists():
        raise FileNotFoundError(f"No committed checkpoint for step {step} in {path}.")
    return _load_pytree(path / str(step) / "params", abstract_params)
