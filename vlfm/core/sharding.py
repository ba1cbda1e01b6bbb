"""Device mesh and logical-axis sharding rules.

Every parameter and activation in vlfm is named with logical axes (``embed``, ``mlp``, ``heads``,
``batch`` ...). The rules below map them onto the mesh axes ``(data, fsdp, tensor)``: data and fsdp
split the batch; fsdp also splits parameters and optimizer state along ``embed``; tensor splits
heads, MLP and vocabulary. Changing the strategy is a config change, not a code change. On multi-slice
TPU pods ``mesh.dcn_shape`` says which axes cross slices (``hybrid_device_array``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("seq", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("classes", None),
    ("layers", None),
    ("patch_h", None),
    ("patch_w", None),
    ("pos", None),
    ("channels", None),
    ("proj", None),
    ("types", None),
    # Activations have their own names (maxtext's convention), so a rule can lay them out differently
    # from the parameters: the embed dimension of activations is not split over fsdp (fsdp splits the
    # batch of activations and the embed dimension of parameters).
    ("activation_batch", BATCH_AXES),
    ("activation_seq", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("cache_batch", BATCH_AXES),
    ("cache_seq", None),
    ("cache_heads", "tensor"),
    ("cache_kv", None),
)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces one ``-1`` entry by "the rest of the devices"; checks the product."""
    shape = tuple(int(s) for s in shape)
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh shape {shape} does not divide {num_devices} devices")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh shape {shape} has {math.prod(shape)} devices, but {num_devices} are available")
    return shape


def hybrid_device_array(shape: Sequence[int], dcn_shape: Sequence[int], devices: Sequence[Any]) -> np.ndarray:
    """Devices laid out for a multi-slice mesh: ``shape`` is the whole mesh, ``dcn_shape`` how many slices
    (granules joined by the data-centre network) each axis spans; inside a slice each axis has
    ``shape / dcn_shape`` devices on the fast ICI links, so only the axes with ``dcn_shape > 1`` (data
    parallelism, usually) cross slices.

    A granule is a TPU slice (devices with ``slice_index``) or, where devices have none (GPUs, CPUs), a
    process. ``-1`` in ``shape`` is "the rest of the devices"; ``dcn_shape`` must multiply to the number
    of granules.
    """
    shape = resolve_mesh_shape(shape, len(devices))
    dcn_shape = tuple(int(s) for s in dcn_shape)
    if len(dcn_shape) != len(shape) or min(dcn_shape) < 1:
        raise ValueError(f"mesh.dcn_shape {dcn_shape} needs one positive entry per mesh axis ({len(shape)})")
    if any(s % d for s, d in zip(shape, dcn_shape)):
        raise ValueError(f"mesh.dcn_shape {dcn_shape} does not divide the mesh shape {shape} axis by axis")
    by_slice = all(getattr(d, "slice_index", None) is not None for d in devices)
    granule = "slice_index" if by_slice else "process_index"
    granules = len({getattr(d, granule) for d in devices})
    if math.prod(dcn_shape) != granules:
        kind = "slices" if by_slice else "processes (these devices have no slice_index, so a process is a granule)"
        raise ValueError(f"mesh.dcn_shape {dcn_shape} spans {math.prod(dcn_shape)} granules, but the job has "
                         f"{granules} {kind}")
    ici_shape = tuple(s // d for s, d in zip(shape, dcn_shape))
    return mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, process_is_granule=not by_slice,
                                                allow_split_physical_axes=True)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), axes: Sequence[str] = MESH_AXES,
              devices: Sequence[jax.Device] | None = None, dcn_shape: Sequence[int] | None = None) -> Mesh:
    """A mesh with Auto axes (needed for logical sharding constraints under GSPMD); with ``dcn_shape``
    (``config.mesh.dcn_shape``, multi-slice pods) a hybrid ICI/DCN layout (``hybrid_device_array``)."""
    devices = list(devices if devices is not None else jax.devices())
    axis_types = (AxisType.Auto,) * len(shape)
    if dcn_shape is not None and math.prod(dcn_shape) > 1:
        return Mesh(hybrid_device_array(shape, dcn_shape, devices), tuple(axes), axis_types=axis_types)
    shape = resolve_mesh_shape(shape, len(devices))
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(shape, tuple(axes), axis_types=axis_types)
    return Mesh(np.asarray(devices).reshape(shape), tuple(axes), axis_types=axis_types)


def rules_from_config(overrides: Sequence[Sequence] | None = None) -> tuple:
    """Default rules with per-name overrides from config (a list of ``(logical, mesh)`` pairs)."""
    rules = dict(DEFAULT_RULES)
    for name, target in overrides or ():
        rules[name] = tuple(target) if isinstance(target, list) else target
    return tuple(rules.items())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading axis split over the data-parallel axes, the rest replicated."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names)


def to_global_batch(batch: dict, mesh: Mesh) -> dict:
    """Host arrays holding the whole global batch (single process) -> arrays sharded over the batch axes."""
    return {k: jax.device_put(v, batch_sharding(mesh, np.ndim(v))) for k, v in batch.items()}
