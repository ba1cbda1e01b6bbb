"""Tests for vlfm.core.checkpoint on a realistic sharded train state (8 fake CPU devices)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import errno
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, PartitionSpec as P

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vlfm.core import checkpoint as ckpt  # noqa: E402

AXES = ("data", "fsdp", "tensor")
RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"))


def pdense(features, axes):
    return nn.Dense(
        features,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
    )


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.gelu(pdense(64, ("embed", "mlp"))(x))
        return pdense(16, ("mlp", "embed"))(h)


MODEL = MLP()
TX = optax.adamw(1e-2)
X = jnp.linspace(-1.0, 1.0, 16 * 32).reshape(16, 32)
Y = jnp.cos(jnp.arange(16 * 16, dtype=jnp.float32)).reshape(16, 16)


def init_fn(rng):
    params = MODEL.init(rng, X)["params"]
    return {
        "params": params,
        "opt_state": TX.init(params),
        "ema_params": params,
        "step": jnp.zeros((), jnp.int32),
    }


def train_step(state):
    grads = jax.grad(lambda p: jnp.mean((MODEL.apply({"params": p}, X) - Y) ** 2))(state["params"])
    updates, opt_state = TX.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ema = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state["ema_params"], params)
    return {"params": params, "opt_state": opt_state, "ema_params": ema, "step": state["step"] + 1}


class Setup:
    """A mesh with its abstract state (ShapeDtypeStruct + sharding), jitted init and donating step."""

    def __init__(self, mesh):
        self.mesh = mesh
        with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
            boxed = jax.eval_shape(init_fn, jax.random.key(0))
            self.shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, RULES)
            self._init = jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=self.shardings)
            self.step = jax.jit(
                train_step, in_shardings=(self.shardings,), out_shardings=self.shardings, donate_argnums=0
            )
        # Unboxed outside the mesh context: unboxing there would apply sharding constraints to abstract values.
        self.abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.meta.unbox(boxed), self.shardings
        )

    def state(self, n_steps=2):
        """A state after a few optimizer steps, so that mu, nu, count and ema are all non-trivial."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(RULES):
            state = self._init(jax.random.key(0))
            for _ in range(n_steps):
                state = self.step(state)
        return state


@pytest.fixture(scope="module")
def setup8():
    assert jax.device_count() >= 8
    mesh = jax.make_mesh((2, 2, 2), AXES, axis_types=(AxisType.Auto,) * 3)
    return Setup(mesh)


@pytest.fixture(scope="module")
def setup4():
    mesh = jax.make_mesh((1, 4, 1), AXES, axis_types=(AxisType.Auto,) * 3, devices=jax.devices()[:4])
    return Setup(mesh)


def host_copy(tree):
    return jax.tree.map(lambda a: np.array(a, copy=True), tree)


def assert_same(a, b):
    """Same tree structure (namedtuple types included) and bit-identical leaves."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def make_data_iterator():
    return iter(grain.MapDataset.range(1000).shuffle(seed=3).map(lambda i: i * 10).batch(4).to_iter_dataset())


def test_round_trip_exact(setup8, tmp_path):
    state = setup8.state()
    expected = host_copy(state)
    c = ckpt.Checkpointer(tmp_path / "ckpt", save_every=5)
    try:
        assert c.save(10, state, meta={"note": "round trip"})
        c.wait()
        assert c.latest_step() == 10
        restored, meta = c.restore(setup8.abstract)
    finally:
        c.close()
    assert_same(restored, expected)
    adam = restored["opt_state"][0]
    assert isinstance(adam, optax.ScaleByAdamState)
    assert int(adam.count) == 2 and int(restored["step"]) == 2
    assert meta == {"note": "round trip", "step": 10}
    for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(setup8.abstract)):
        assert leaf.sharding == want.sharding


def test_interval_force_and_keep_n(setup8, tmp_path):
    state = setup8.state(0)
    c = ckpt.Checkpointer(tmp_path / "ckpt", keep=2, save_every=3, async_save=False)
    try:
        saved = {step: c.save(step, state) for step in range(1, 10)}
        assert [s for s, ok in saved.items() if ok] == [3, 6, 9]
        assert c.save(10, state, force=True)
        assert not c.save(10, state, force=True)  # already saved: no error, no second write
        c.wait()
        assert c.all_steps() == [9, 10]
        assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["10", "9"]
        assert c.latest_step() == 10
    finally:
        c.close()


def test_latest_step_ignores_in_flight_async_save(setup8, tmp_path):
    c = ckpt.Checkpointer(tmp_path / "ckpt", save_every=1)
    try:
        assert c.latest_step() is None
        assert c.save(1, setup8.state(1))
        # Committed steps only: either the async save already finished, or it is not counted yet.
        assert c.latest_step() in (None, 1)
        assert c.latest_step() is None or (tmp_path / "ckpt" / "1" / ckpt.COMMIT_MARKER).exists()
        c.wait()
        assert c.latest_step() == 1
    finally:
        c.close()


def test_restore_onto_four_device_mesh(setup8, setup4, tmp_path):
    state = setup8.state()
    expected = host_copy(state)
    c = ckpt.Checkpointer(tmp_path / "ckpt", save_every=1)
    try:
        c.save(2, state)
        restored, _ = c.restore(setup4.abstract)
    finally:
        c.close()
    assert_same(restored, expected)
    for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(setup4.abstract)):
        assert leaf.sharding == want.sharding
        assert len(leaf.sharding.device_set) == 4
    kernel = restored["params"]["Dense_0"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (8, 64)  # 32 rows over fsdp=4, 64 cols over tensor=1


def test_async_save_is_safe_against_donation(setup8, tmp_path):
    state = setup8.state()
    expected = host_copy(state)
    c = ckpt.Checkpointer(tmp_path / "ckpt", save_every=1, async_save=True)
    try:
        assert c.save(2, state)
        with jax.set_mesh(setup8.mesh), nn.logical_axis_rules(RULES):
            new_state = setup8.step(state)  # donates the buffers the save was issued with
            for _ in range(3):
                new_state = setup8.step(new_state)
        jax.block_until_ready(new_state)
        # The sharded leaves really were donated. (On CPU, JAX declines to donate the replicated scalars
        # `step` and adam `count`: orbax holds zero-copy numpy views of them until the write finishes.)
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state["params"]))
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state["opt_state"][0].mu))
        c.wait()
        restored, _ = c.restore(setup8.abstract)
    finally:
        c.close()
    assert_same(restored, expected)
    assert not np.array_equal(
        np.asarray(restored["params"]["Dense_0"]["kernel"]), np.asarray(new_state["params"]["Dense_0"]["kernel"])
    )


def test_data_iterator_resumes_exactly(setup8, tmp_path):
    state = setup8.state(0)
    it = make_data_iterator()
    for _ in range(3):
        next(it)
    c = ckpt.Checkpointer(tmp_path / "ckpt", save_every=1)
    try:
        assert c.save(3, state, data_iterator=it)
        # The iterator keeps moving while the save runs in the background.
        expected = [next(it) for _ in range(4)]
        c.wait()
        resumed = make_data_iterator()
        _, meta = c.restore(setup8.abstract, data_iterator=resumed)
    finally:
        c.close()
    assert meta["step"] == 3
    for want in expected:
        np.testing.assert_array_equal(next(resumed), want)


def test_restore_with_iterator_but_no_saved_data_fails(setup8, tmp_path):
    c = ckpt.Checkpointer(tmp_path / "ckpt", save_every=1)
    try:
        c.save(1, setup8.state(0))
        with pytest.raises(ValueError, match="no data iterator state"):
            c.restore(setup8.abstract, data_iterator=make_data_iterator())
    finally:
        c.close()


def test_meta_json_round_trip(setup8, tmp_path):
    config = {"model": {"depth": 2, "widths": [64, 16]}, "lr": 1e-3, "name": "mlp", "remat": False, "eval": None}
    meta = {"config": config, "tokens_seen": 123456789}
    c = ckpt.Checkpointer(tmp_path / "ckpt", save_every=1)
    try:
        c.save(4, setup8.state(0), meta=meta)
        meta["config"]["lr"] = 99.0  # later mutation must not leak into the written checkpoint
        c.wait()
        _, restored = c.restore(setup8.abstract)
    finally:
        c.close()
    assert restored == {"config": {**config, "lr": 1e-3}, "tokens_seen": 123456789, "step": 4}
    other = ckpt.Checkpointer(tmp_path / "other")
    try:
        with pytest.raises(TypeError):
            other.save(0, setup8.state(0), meta={"bad": object()})
    finally:
        other.close()


def test_half_written_checkpoints_are_ignored(setup8, tmp_path):
    directory = tmp_path / "ckpt"
    state1 = setup8.state(1)
    expected1 = host_copy(state1)
    c = ckpt.Checkpointer(directory, keep=5, save_every=1)
    c.save(1, state1)
    c.close()
    # A save killed mid-write leaves "<step>.orbax-checkpoint-tmp-<timestamp>" (orbax's atomic rename on
    # POSIX); a copy interrupted on its way to storage can leave a step directory without the commit marker.
    shutil.copytree(directory / "1", directory / "2.orbax-checkpoint-tmp-1712345678901234")
    (directory / "2.orbax-checkpoint-tmp-1712345678901234" / ckpt.COMMIT_MARKER).unlink()
    shutil.copytree(directory / "1", directory / "3")
    (directory / "3" / ckpt.COMMIT_MARKER).unlink()

    c = ckpt.Checkpointer(directory, keep=5, save_every=1)
    try:
        assert c.latest_step() == 1
        assert c.all_steps() == [1]
        restored, meta = c.restore(setup8.abstract)
        assert meta["step"] == 1
        assert_same(restored, expected1)
        with pytest.raises(FileNotFoundError):
            c.restore(setup8.abstract, step=3)
        # A new save of the interrupted step goes through; the uncommitted step dir blocks loudly.
        assert c.save(2, setup8.state(2))
        c.wait()
        assert c.latest_step() == 2
        with pytest.raises(RuntimeError, match="not a committed checkpoint"):
            c.save(3, setup8.state(0))
    finally:
        c.close()
    assert ckpt.load_params_from_checkpoint(directory) is not None
    assert not list(directory.glob("*.orbax-checkpoint-tmp-*"))  # cleaned up by the new manager


def test_restore_without_checkpoint_raises(setup8, tmp_path):
    c = ckpt.Checkpointer(tmp_path / "empty")
    try:
        assert c.latest_step() is None
        with pytest.raises(FileNotFoundError):
            c.restore(setup8.abstract)
    finally:
        c.close()


def test_export_and_load_params(setup8, setup4, tmp_path):
    params = setup8.state()["params"]
    expected = host_copy(params)
    ckpt.export_params(params, tmp_path / "export")
    as_numpy = ckpt.load_params(tmp_path / "export")
    assert_same(as_numpy, expected)
    assert all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(as_numpy))
    resharded = ckpt.load_params(tmp_path / "export", setup4.abstract["params"])
    assert_same(resharded, expected)
    for leaf, want in zip(jax.tree.leaves(resharded), jax.tree.leaves(setup4.abstract["params"])):
        assert leaf.sharding == want.sharding


def test_load_params_from_checkpoint(setup8, setup4, tmp_path):
    c = ckpt.Checkpointer(tmp_path / "ckpt", save_every=1)
    state1 = setup8.state(1)
    expected1 = host_copy(state1["params"])
    state2 = setup8.state(2)
    expected2 = host_copy(state2["params"])
    try:
        c.save(1, state1)
        c.save(2, state2)
    finally:
        c.close()
    latest = ckpt.load_params_from_checkpoint(tmp_path / "ckpt")
    assert_same(latest, expected2)
    assert all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(latest))
    first = ckpt.load_params_from_checkpoint(tmp_path / "ckpt", setup4.abstract["params"], step=1)
    assert_same(first, expected1)
    assert first["Dense_1"]["kernel"].sharding == setup4.abstract["params"]["Dense_1"]["kernel"].sharding


def test_sigterm_handler_installed_and_restored(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    c = ckpt.Checkpointer(tmp_path / "a", handle_sigterm=False)
    assert signal.getsignal(signal.SIGTERM) is before
    c.close()
    c = ckpt.Checkpointer(tmp_path / "b")
    assert signal.getsignal(signal.SIGTERM) == c._on_sigterm
    assert not c.preempted and not c.should_stop(0)
    c.close()
    assert signal.getsignal(signal.SIGTERM) is before


SIGTERM_SCRIPT = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import signal, sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import jax
from test_checkpoint import Setup, AXES, RULES
from jax.sharding import AxisType
from vlfm.core import checkpoint as ckpt

setup = Setup(jax.make_mesh((2, 2, 2), AXES, axis_types=(AxisType.Auto,) * 3))
state = setup.state(0)
c = ckpt.Checkpointer({directory!r}, save_every=1000, keep=3)
for step in range(1, 100):
    with jax.set_mesh(setup.mesh):
        state = setup.step(state)
    if step == {kill_at}:
        os.kill(os.getpid(), signal.SIGTERM)
    c.save(step, state, meta={{"reason": "loop"}})
    if c.should_stop(step):
        c.close()
        restored_default = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        print("PREEMPTED: checkpoint committed at step", c.latest_step(), "default handler back:", restored_default)
        sys.exit(0)
c.close()
print("NOT STOPPED")
sys.exit(1)
"""


def test_sigterm_saves_and_stops(setup8, tmp_path):
    kill_at = 5
    script = tmp_path / "sigterm_run.py"
    directory = tmp_path / "ckpt"
    script.write_text(
        SIGTERM_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), directory=str(directory), kill_at=kill_at)
    )
    proc = subprocess.run([sys.executable, str(script)], timeout=120, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The handler only sets a flag. CPython runs it in the main thread at its next bytecode check, which in
    # practice is before save(k), so the checkpoint is at step k. If the kernel hands the signal to another
    # thread, it may only be seen at save(k + 1); both are correct, the next save after the signal.
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    assert steps in ([kill_at], [kill_at + 1])
    assert f"committed at step {steps[0]} default handler back: True" in proc.stdout
    c = ckpt.Checkpointer(directory, handle_sigterm=False)
    try:
        restored, meta = c.restore(setup8.abstract)
    finally:
        c.close()
    assert int(restored["step"]) == steps[0] and meta == {"reason": "loop", "step": steps[0]}


def test_close_waits_for_the_startup_cleanup_thread(tmp_path, monkeypatch):
    """orbax removes leftover temporary directories in a background thread started by the manager; a
    run that fails early closed the checkpointer while that thread still ran, and its next file-system
    call then failed at interpreter shutdown ("cannot schedule new futures ..."), masking the run's error."""
    import asyncio

    from orbax.checkpoint._src.path import temporary_paths

    done = []

    async def slow_cleanup(*args, **kwargs):
        await asyncio.sleep(0.5)
        done.append(True)

    monkeypatch.setattr(temporary_paths, "cleanup_temporary_paths", slow_cleanup)
    c = ckpt.Checkpointer(tmp_path / "ckpt", handle_sigterm=False)
    c.close()
    assert done == [True]


@pytest.mark.parametrize("error, cause", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "the disk is full or over quota (it needs about "),
    (PermissionError(errno.EACCES, "Permission denied"), "PermissionError: [Errno 13] Permission denied"),
])
def test_a_failed_write_names_directory_step_and_the_intact_checkpoint(setup8, tmp_path, monkeypatch, error, cause):
    """A write failing in orbax's background thread (simulated: the meta item's write raises, as a full disk
    would) ends in one CheckpointWriteError naming where, which step, why, and the last committed step; the
    storage's error is its cause; ``close`` does not raise it a second time; the committed step restores."""
    from orbax.checkpoint._src.handlers.json_checkpoint_handler import JsonCheckpointHandler

    directory = tmp_path / "ckpt"
    state1 = setup8.state(1)
    expected1 = host_copy(state1)
    c = ckpt.Checkpointer(directory, save_every=1, handle_sigterm=False)
    try:
        assert c.save(1, state1)
        c.wait()
        original = JsonCheckpointHandler._save_fn

        async def failing_write(self, x, path):
            if x.get("step") == 2:
                raise error
            return await original(self, x, path)

        monkeypatch.setattr(JsonCheckpointHandler, "_save_fn", failing_write)
        state2 = setup8.state(2)
        with pytest.raises(ckpt.CheckpointWriteError) as info:
            c.save(2, state2)
            c.save(3, state2)  # the async failure of step 2 surfaces here at the latest
            c.wait()
    finally:
        c.close()  # must not bury the failure under a second error
    message = str(info.value)
    assert message.startswith(f"checkpoint step 2 could not be written to {directory}: {cause}"), message
    assert "The last committed checkpoint, step 1, is intact" in message
    assert (info.value.step, info.value.last_committed) == (2, 1)
    assert info.value.disk_full == (error.errno == errno.ENOSPC)
    if info.value.disk_full:
        needed = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state2))
        assert f"it needs about {needed / 1024:.1f} KB of arrays" in message and " free there now)" in message
    chain, e = [], info.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert any(e is error for e in chain)  # the original error is chained, not swallowed

    monkeypatch.undo()
    c = ckpt.Checkpointer(directory, save_every=1, handle_sigterm=False)
    try:
        assert c.all_steps() == [1]
        restored, meta = c.restore(setup8.abstract)
    finally:
        c.close()
    assert meta["step"] == 1
    assert_same(restored, expected1)


def test_a_failed_last_save_is_raised_by_close_naming_it(setup8, tmp_path, monkeypatch):
    """The run's final save has no next save to surface its failure: ``close`` raises it, named."""
    from orbax.checkpoint._src.handlers.json_checkpoint_handler import JsonCheckpointHandler

    c = ckpt.Checkpointer(tmp_path / "ckpt", save_every=1, handle_sigterm=False)
    assert c.save(1, setup8.state(1))
    c.wait()
    original = JsonCheckpointHandler._save_fn

    async def failing_write(self, x, path):
        if x.get("step") == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await original(self, x, path)

    monkeypatch.setattr(JsonCheckpointHandler, "_save_fn", failing_write)
    c.save(2, setup8.state(2), force=True)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"checkpoint step 2 could not be written to .*the disk is "
                                                        r"full.*The last committed checkpoint, step 1, is intact"):
        c.close()
    c.close()  # once raised, not again
