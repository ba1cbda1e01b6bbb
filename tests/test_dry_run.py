"""``--dry_run``: the step compiled ahead of time for the configured mesh, per-device memory and FLOPs."""

import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from tests.helpers import REPO, SMALL_CLIP, trainer_env
from vlfm.losses import combined_loss
from vlfm.models import build_model
from vlfm.optim import build_optimizer
from vlfm.optim.combine import sum_gradients
from vlfm.core.sharding import batch_sharding, make_mesh, rules_from_config
from vlfm.core.tree import count_params
from vlfm.models.flops import flops_per_example
from vlfm.train import aot
from vlfm.train.config import load_config
from vlfm.train.state import init_batch, sharded_init, state_initializer
from vlfm.train.trainer import train
from vlfm.train.step import make_train_step
from vlfm.train.tasks import Task

UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def _report(stdout: str) -> dict[str, float]:
    m = re.search(r"ahead-of-time compile: ([\d.]+) (\w+) per device in all \(arguments ([\d.]+) (\w+), "
                  r"temporaries ([\d.]+) (\w+), outputs ([\d.]+) (\w+)", stdout)
    assert m, stdout[-3000:]
    values = [float(m.group(i)) * UNITS[m.group(i + 1)] for i in (1, 3, 5, 7)]
    return dict(zip(("total", "arguments", "temporaries", "outputs"), values))


def _dry_run(tmp_path, *extra, env=None):
    cmd = [sys.executable, "-m", "vlfm.train", "--config", "configs/clip_tiny.py", "--workdir", str(tmp_path),
           *SMALL_CLIP, "--dry_run", *extra]
    return subprocess.run(cmd, cwd=REPO, env=dict(trainer_env(8), **(env or {})), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_dry_run_reports_memory_and_flops_without_training(tmp_path):
    dp = _dry_run(tmp_path / "dp", "--config.mesh.shape=(8,1,1)", "--config.model.image.width=64",
                  "--config.model.text.width=64")
    assert dp.returncode == 0, dp.stdout[-3000:] + dp.stderr[-3000:]
    assert "model_flops_per_step" in dp.stdout and "xla_flops_per_device" in dp.stdout
    assert not os.path.exists(tmp_path / "dp" / "checkpoints") and "step 1/" not in dp.stdout  # nothing trained
    fsdp = _dry_run(tmp_path / "fsdp", "--config.mesh.shape=(1,8,1)", "--config.model.image.width=64",
                    "--config.model.text.width=64")
    assert fsdp.returncode == 0, fsdp.stdout[-3000:] + fsdp.stderr[-3000:]
    a, b = _report(dp.stdout), _report(fsdp.stdout)
    assert a["temporaries"] > 0 and a["outputs"] > 0
    # Arguments are parameters + AdamW moments + the batch shard. Data parallel keeps the first two whole on
    # every device; FSDP splits them 8 ways (up to small replicated leaves), with the same batch shard size.
    assert b["arguments"] < 0.3 * a["arguments"], (a, b)


def _param_count(config) -> int:
    """A dual encoder's parameter count from its abstract init (nothing allocated)."""
    image, text = config.model.image, config.model.text
    batch = {"image": jax.ShapeDtypeStruct((1, image.image_size, image.image_size, 3), np.float32),
             "text": jax.ShapeDtypeStruct((1, text.max_len), np.int32)}
    params = jax.eval_shape(build_model(config.model).init, jax.random.key(0), batch)["params"]
    return count_params(params)


def test_dry_run_fails_early_and_readably_when_the_step_will_not_fit(tmp_path):
    out = _dry_run(tmp_path, env={"VLFM_DEVICE_MEMORY_GIB": "0.0001"})
    assert out.returncode == 4, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout + out.stderr
    # The parameter count is logged as a training run logs it, before compiling.
    n = _param_count(load_config("configs/clip_tiny.py", [a[len("--config."):] for a in SMALL_CLIP]))
    assert f"model dual_encoder: {n:,} parameters" in text, text[-3000:]
    assert "the train step will not fit" in text and "a device has 104.9 KiB" in text, text[-3000:]
    assert "fsdp" in text and "remat" in text  # it says what to change
    assert "Traceback" not in text


def _compiled_step(scan: bool):
    """The train step of a 4-layer CLIP on one device, and its analytic model FLOPs."""
    model_cfg = dict(name="dual_encoder", embed_dim=32,
                     image=dict(name="vit", image_size=32, patch_size=4, width=64, depth=4, num_heads=4, mlp_dim=256,
                                pre_norm=True, scan=scan),
                     text=dict(name="text_transformer", vocab_size=64, max_len=16, width=64, depth=4, num_heads=4,
                               mlp_dim=256, eos_id=3, scan=scan))
    batch = {"image": np.zeros((8, 32, 32, 3), np.float32), "text": np.full((8, 16), 5, np.int32)}
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    rules = rules_from_config()
    model = build_model(model_cfg)
    tx, schedule = build_optimizer(dict(name="adamw", lr=dict(name="constant", peak=1e-3)), 10)
    tx = optax.chain(sum_gradients(), tx)
    task = Task("main", None, 8, combined_loss({"softmax_contrastive": {}}))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        init = state_initializer(model, tx, init_batch({k: v[0] for k, v in batch.items()}, 1))
        _, shardings, abstract = sharded_init(init, jax.random.key(0), mesh, rules)
        step = jax.jit(make_train_step(model, [task], tx, schedule, seed=0), in_shardings=(shardings, None, None),
                       out_shardings=(shardings, None), donate_argnums=0)
        batches = {"main": {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding(mesh, v.ndim))
                            for k, v in batch.items()}}
        report = aot.compile_report(step, abstract, batches, {})
    analytic = 8 * 3 * flops_per_example(model_cfg, text_len=16, global_batch=8)
    return report, analytic


@pytest.mark.parametrize("scan", [False, True])
def test_xla_flops_count_scanned_layers_once(scan):
    """What the report's XLA figure means: unrolled, it is close to the analytic model FLOPs (it also counts
    element-wise work); with scanned layers it counts one layer of each tower, far below the analytic count."""
    report, analytic = _compiled_step(scan)
    assert report["total_bytes"] > 0 and report["argument_bytes"] > 0
    ratio = report["xla_flops_per_device"] / analytic
    if scan:
        assert ratio < 0.5, ratio
    else:
        assert 0.9 < ratio < 1.6, ratio


def test_dry_run_of_a_classifier_traces_its_labels(tmp_path):
    """Labels are numpy scalars per example; the dry run's batch must carry them or the loss cannot trace."""
    config = load_config("configs/vit_tiny.py", ["model.image.depth=1", "model.image.width=32",
                                                 "model.image.mlp_dim=64", "data.num_examples=64"])
    report = train(config, str(tmp_path), dry_run=True)
    assert report["num_params"] > 0 and report["model_flops_per_step"] > 0
