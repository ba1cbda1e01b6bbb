"""Model FLOPs, for throughput and model FLOPs utilisation (MFU), and the peak they are compared with.

Two ways to count the model FLOPs of a training step (``config.flops`` picks one, see
``vlfm.train.tasks.Task.step_flops``):

- ``"traced"`` (the default, any model): ``traced_flops`` traces a function (a task's forward pass and
  loss) to a jaxpr and counts what it multiplies: every ``dot_general`` is ``2 * prod(output dims) *
  prod(contracted dims)`` (a multiply-add is 2 FLOPs), every convolution ``2 * prod(output dims) *
  kernel window * input features per group``, fused cuDNN attention ``4 * B*N*T*H * S``. It recurses
  into every sub-jaxpr (jit, remat, custom_jvp/vjp, shard_map bodies times their shard count), takes
  the most expensive branch of a ``cond``, multiplies a ``scan`` body by its length and counts a
  ``while`` body once (its trip count is not static; ``fori_loop`` with static bounds is a scan).
  Element-wise work (LayerNorm, softmax, activations) and gathers are not counted: on accelerators
  they are a rounding error next to the matmuls, and MFU counts matmul FLOPs by convention.
- ``"analytic"``: a family's own formula (``flops_per_example`` in ``vlfm.models``), e.g. to compare
  with a paper's count. ``transformer_flops`` below is the shared per-layer formula:
  ``2*T*(4*d*d + 2*d*m) + 4*T*T*d`` for T tokens of width d with MLP width m (q, k, v, out, the two
  MLP matrices, attention scores and weighted sum; causal attention counted in full).

A training step costs 3x the forward (backward = 2x forward; ``TRAIN_FACTOR``); rematerialisation
is not model FLOPs, and the count is the same for a scanned model and its unrolled twin.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per chip, by device kind (vendor figures, no sparsity).
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


TRAIN_FACTOR = 3.0  # forward + backward (2x forward) of a training step


def transformer_flops(tokens: int, width: int, depth: int, mlp_dim: int) -> float:
    """Forward FLOPs of ``depth`` transformer layers on ``tokens`` tokens (the module docstring's formula)."""
    per_layer = 2 * tokens * (4 * width * width + 2 * width * mlp_dim) + 4 * tokens * tokens * width
    return float(depth * per_layer)


def _dot_flops(eqn: Any) -> float:
    lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    return 2.0 * math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)


def _conv_flops(eqn: Any) -> float:
    rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
    out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
    # Each output element sums over the kernel window and the input features of its group.
    return 2.0 * math.prod(out.shape) * math.prod(rhs.shape) / out_features


def _cudnn_attention_flops(eqn: Any) -> float:
    q, k = eqn.invars[0].aval, eqn.invars[1].aval
    layout = str(eqn.params.get("layout", ""))
    kv_len = k.shape[2] if layout in ("1", "AttentionLayout.BNTH", "BNTH") else k.shape[1]
    return 4.0 * math.prod(q.shape) * kv_len  # scores and weighted sum, masks counted in full


def _sub_jaxprs(params: dict) -> list:
    found = []
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, jax.extend.core.Jaxpr):
                found.append(item)
    return found


def _as_jaxpr(j: Any) -> Any:
    return j.jaxpr if isinstance(j, jax.extend.core.ClosedJaxpr) else j


def jaxpr_flops(jaxpr: Any) -> float:
    """Matmul and convolution FLOPs of a (closed) jaxpr, sub-jaxprs included (module docstring)."""
    total = 0.0
    for eqn in _as_jaxpr(jaxpr).eqns:
        name, params = eqn.primitive.name, eqn.params
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name.startswith("dot_product_attention_fwd"):
            total += _cudnn_attention_flops(eqn)
        elif name.startswith("dot_product_attention_bwd"):
            continue  # only in a differentiated trace; model FLOPs count the forward
        elif name == "scan":
            total += params["length"] * jaxpr_flops(params["jaxpr"])
        elif name == "cond":
            total += max(jaxpr_flops(b) for b in params["branches"])
        elif name == "shard_map":
            mesh = params["mesh"]
            axes = params.get("newly_manual_axes", params.get("manual_axes", params.get("axis_names")))
            shards = math.prod(mesh.shape[a] for a in (mesh.axis_names if axes is None else axes))
            total += shards * jaxpr_flops(params["jaxpr"])
        elif name == "pallas_call":
            grid = getattr(params.get("grid_mapping"), "grid", ())
            total += math.prod(grid) * jaxpr_flops(params["jaxpr"])
        else:  # jit, remat, custom_jvp/vjp (their primal jaxpr), while (body and condition once), ...
            total += sum(jaxpr_flops(j) for j in _sub_jaxprs(params))
    return total


def traced_flops(fn: Callable, *args: Any, **kwargs: Any) -> float:
    """Matmul/convolution FLOPs of one call ``fn(*args, **kwargs)``, from its jaxpr (nothing runs).

    ``args`` may be arrays or ``jax.ShapeDtypeStruct``s. Call it under the run's mesh and logical
    rules when ``fn`` uses ``shard_map`` or sharding constraints.
    """
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs))


def peak_flops_per_device(override: float | None = None) -> tuple[float | None, str]:
    """The chip's dense bf16 peak, from config or the device kind; None where unknown (e.g. CPU)."""
    if override:
        return float(override), "config"
    kind = jax.devices()[0].device_kind
    for key, value in PEAK_FLOPS.items():
        if key.lower() in kind.lower():
            return value, kind
    return None, kind


def measure_matmul_flops(dtype: str = "bfloat16", n: int | None = None, reps: int = 10) -> float:
    """Achieved FLOP/s of an n x n matmul on one device (median of ``reps`` timed runs): the MFU
    reference where no data-sheet peak is known (CPU), and the benchmark's measured peak."""
    if n is None:
        n = 1024 if jax.default_backend() == "cpu" else 8192
    # Uncommitted host-made arrays (this process's default device): inside a multi-process mesh context,
    # jax.random would make global arrays and committed single-device ones clash with the context mesh.
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((n, n), np.float32), dtype) for _ in range(2))
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times)
