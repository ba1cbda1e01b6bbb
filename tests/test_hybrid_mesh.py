"""Hybrid ICI/DCN meshes for multi-slice pods (``config.mesh.dcn_shape``): the device layout, checked on
fake devices that carry a ``slice_index`` (CPU devices have none), and the errors on this CPU machine."""

import dataclasses

import jax
import numpy as np
import pytest

from vlfm.core.sharding import hybrid_device_array, make_mesh


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    id: int
    slice_index: int | None
    process_index: int = 0
    platform: str = "cpu"
    device_kind: str = "fake"


def _slices(n_slices: int, per_slice: int) -> list[FakeDevice]:
    return [FakeDevice(i, i // per_slice, process_index=i // per_slice) for i in range(n_slices * per_slice)]


def test_data_axis_across_slices_keeps_other_axes_inside_a_slice():
    devices = _slices(2, 4)
    array = hybrid_device_array((4, 2, 1), (2, 1, 1), devices)
    assert array.shape == (4, 2, 1)
    slices = np.vectorize(lambda d: d.slice_index)(array)
    # data rows 0-1 are slice 0, rows 2-3 slice 1: only the data axis crosses the DCN
    assert (slices[:2] == 0).all() and (slices[2:] == 1).all()
    assert sorted(d.id for d in array.flat) == list(range(8))


def test_minus_one_and_a_model_axis_across_slices():
    devices = _slices(2, 4)
    array = hybrid_device_array((-1, 1, 2), (1, 1, 2), devices)
    assert array.shape == (4, 1, 2)
    slices = np.vectorize(lambda d: d.slice_index)(array)
    assert (slices[..., 0] == 0).all() and (slices[..., 1] == 1).all()


def test_processes_are_granules_without_slice_index():
    devices = [FakeDevice(i, None, process_index=i // 2) for i in range(8)]  # 4 hosts of 2 GPUs
    array = hybrid_device_array((8, 1, 1), (4, 1, 1), devices)
    procs = np.vectorize(lambda d: d.process_index)(array)[:, 0, 0]
    assert list(procs) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_bad_dcn_shapes_are_clear_errors():
    devices = _slices(2, 4)
    with pytest.raises(ValueError, match="spans 4 granules, but the job has 2 slices"):
        hybrid_device_array((4, 2, 1), (4, 1, 1), devices)
    with pytest.raises(ValueError, match="does not divide the mesh shape"):
        hybrid_device_array((2, 4, 1), (1, 1, 2), devices)
    with pytest.raises(ValueError, match="one positive entry per mesh axis"):
        hybrid_device_array((8, 1, 1), (2, 1), devices)


def test_cpu_devices_have_no_slices():
    """This machine's CPU devices: no slice_index, one process, so one granule."""
    assert make_mesh((-1, 1, 1), dcn_shape=(1, 1, 1)).devices.shape == (jax.device_count(), 1, 1)
    with pytest.raises(ValueError, match="1 processes .*no slice_index"):
        make_mesh((-1, 1, 1), dcn_shape=(2, 1, 1))
