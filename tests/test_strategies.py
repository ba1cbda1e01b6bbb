"""Sharding strategies on 8 CPU devices, chosen by mesh shape and logical-axis rules alone.

``tests/test_sharding.py`` checks losses and updates for (2,2,2) and (1,4,2) against one device. Here:
the bytes each device really holds (parameters and AdamW state) for data parallel, FSDP, tensor
parallel and their combinations, against the count the logical axes and rules call for; and the
single-device results for the strategies test_sharding does not run.
"""

import collections

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from tests.test_sharding import MODEL, _batch, _run, _single_device_reference
from vlfm.models import build_model
from vlfm.optim import build_optimizer
from vlfm.optim.combine import sum_gradients
from vlfm.core.sharding import make_mesh, rules_from_config
from vlfm.train.state import init_batch, sharded_init, state_initializer

STRATEGIES = {
    "data parallel": ((8, 1, 1), ()),
    "fsdp": ((1, 8, 1), ()),
    "tensor parallel + data": ((2, 1, 4), ()),
    "fsdp + tensor": ((1, 2, 4), ()),
    "data + fsdp": ((2, 4, 1), ()),
    "data + fsdp + tensor": ((2, 2, 2), ()),
    # The rules decide: the same FSDP mesh with parameters kept whole splits only the batch (plain DP).
    "fsdp mesh, embed unsharded": ((1, 8, 1), (("embed", None),)),
}


def _init(shape, rule_overrides):
    mesh = make_mesh(shape)
    rules = rules_from_config(rule_overrides)
    model = build_model(MODEL)
    tx, _ = build_optimizer(dict(name="adamw", lr=dict(name="constant", peak=1e-3)), 10)
    tx = optax.chain(sum_gradients(), tx)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        init = state_initializer(model, tx, init_batch({k: v[0] for k, v in _batch().items()}, 1))
        state, _, _ = sharded_init(init, jax.random.key(0), mesh, rules)
        boxed = jax.eval_shape(init, jax.random.key(0))
    return mesh, rules, state, boxed


def _held_bytes(tree) -> dict:
    """Bytes of the buffers each device really holds."""
    held = collections.Counter()
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            held[shard.device] += shard.data.nbytes
    return held


def _expected_bytes(boxed, mesh, rules) -> int:
    """Per-device bytes the logical axes call for: each dimension split by the mesh axes its rule names."""
    rules = dict(rules)
    total = 0
    for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)):
        names = leaf.names if isinstance(leaf, nn.LogicallyPartitioned) else ()
        value = leaf.value if isinstance(leaf, nn.meta.AxisMetadata) else leaf
        divisor = 1
        for name in names:
            axes = rules.get(name)
            for axis in (axes,) if isinstance(axes, str) else axes or ():
                divisor *= mesh.shape[axis]
        size = int(np.prod(value.shape)) * value.dtype.itemsize
        assert size % divisor == 0, (names, value.shape)
        total += size // divisor
    return total


def _nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_per_device_bytes_follow_the_strategy(name):
    shape, overrides = STRATEGIES[name]
    mesh, rules, state, boxed = _init(shape, overrides)
    params, opt = state["params"], state["opt_state"]
    total = _nbytes(params)
    for tree, boxed_tree in ((params, boxed["params"]), (opt, boxed["opt_state"])):
        held = _held_bytes(tree)
        assert len(held) == 8 and len(set(held.values())) == 1, held  # every device holds the same amount
        assert next(iter(held.values())) == _expected_bytes(boxed_tree, mesh, rules), name
    per_device = next(iter(_held_bytes(params).values()))
    moments = next(iter(_held_bytes(opt).values()))
    assert abs(moments - 2 * per_device) <= 64, (moments, per_device)  # AdamW mu and nu follow the parameters
    fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]
    if dict(overrides).get("embed", "fsdp") is None:
        fsdp = 1
    if fsdp == tensor == 1:
        assert per_device == total  # replicated
    else:
        # Nearly everything is split fsdp x tensor ways; what stays whole is small (biases, norms, scalars).
        assert per_device < total / (fsdp * tensor) + 0.12 * total, (per_device, total)
        assert per_device >= total / (fsdp * tensor)


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (2, 1, 4)])
def test_more_strategies_give_single_device_losses_and_updates(shape):
    ref_state, ref_losses = _single_device_reference()
    state, losses = _run(make_mesh(shape))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ref_state["params"]), jax.tree.leaves(state["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)
