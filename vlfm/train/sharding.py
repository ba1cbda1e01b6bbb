"""Device mesh and logical-axis sharding rules.

Every parameter and activation in vlfm is named with logical axes (``embed``, ``mlp``, ``heads``,
``batch`` ...). The rules below map them onto the mesh axes ``(data, fsdp, tensor)``: data and fsdp
split the batch; fsdp also splits parameters and optimizer state along ``embed``; tensor splits
heads, MLP and vocabulary. Changing the strategy is a config change, not a code change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
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


def make_mesh(shape: Sequence[int] = (-1, 1, 1), axes: Sequence[str] = MESH_AXES,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with Auto axes (needed for logical sharding constraints under GSPMD)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(shape, len(devices))
    axis_types = (AxisType.Auto,) * len(shape)
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
