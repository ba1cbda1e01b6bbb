"""Shared test utilities: run the trainer CLI in a fresh process, tiny configs."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A very small CLIP for fast trainer tests (the real tiny config is configs/clip_tiny.py).
SMALL_CLIP = [
    "--config.model.image.depth=1", "--config.model.image.width=32", "--config.model.image.mlp_dim=64",
    "--config.model.image.patch_size=8",
    "--config.model.text.depth=1", "--config.model.text.width=32", "--config.model.text.mlp_dim=64",
    "--config.model.embed_dim=32", "--config.data.num_examples=2000", "--config.data.batch_size=32",
    "--config.evals.retrieval.num_examples=100", "--config.evals.zeroshot.num_examples=100",
]


def trainer_env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_trainer(args: list[str], devices: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vlfm.train", *args]
    return subprocess.run(cmd, cwd=REPO, env=trainer_env(devices), capture_output=True, text=True, timeout=timeout)
