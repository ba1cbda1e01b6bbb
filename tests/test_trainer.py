"""End-to-end trainer tests through the command line, each in a fresh single-device process."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO, SMALL_CLIP, run_trainer, trainer_env
from vlfm.core.checkpoint import load_params


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_tiny_clip_learns_retrieval(tmp_path):
    """The README's main job, shortened: held-out retrieval rises far above chance and above the untrained model."""
    common = ["--config", "configs/clip_tiny.py", "--config.evals.retrieval.num_examples=500",
              "--config.evals.zeroshot.num_examples=500", "--config.log_every=25"]
    untrained = run_trainer(common + ["--workdir", str(tmp_path / "untrained"), "--config.total_steps=1",
                                      "--config.optimizer.lr.peak=0.0"])
    assert untrained.returncode == 0, untrained.stdout[-3000:] + untrained.stderr[-3000:]
    base = [m for m in _metrics(tmp_path / "untrained") if "eval/retrieval/i2t_r1" in m][-1]
    out = run_trainer(common + ["--workdir", str(tmp_path / "run"), "--config.total_steps=250",
                                "--config.optimizer.lr.warmup_steps=50"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    metrics = _metrics(tmp_path / "run")
    evals = [m for m in metrics if "eval/retrieval/i2t_r1" in m]
    final = evals[-1]
    chance = final["eval/retrieval/chance_r1"]
    assert final["eval/retrieval/i2t_r1"] >= 10 * chance, final
    assert final["eval/retrieval/t2i_r1"] >= 10 * chance, final
    assert final["eval/retrieval/i2t_r1"] > 3 * max(base["eval/retrieval/i2t_r1"], chance)
    assert final["eval/zeroshot/accuracy"] > 3 * final["eval/zeroshot/chance"]
    losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    assert losses[-1] < 0.7 * losses[0]
    line = [l for l in out.stdout.splitlines() if "step 250/250" in l][-1]
    for field in ("loss", "s/step", "ex/s", "TFLOP/s/device", "MFU", "ETA"):
        assert field in line, line
    assert os.path.isdir(tmp_path / "run" / "tensorboard") and os.listdir(tmp_path / "run" / "tensorboard")
    assert os.path.isdir(tmp_path / "run" / "params")


def _small_args(workdir, steps=30):
    return ["--config", "configs/clip_tiny.py", "--workdir", str(workdir), *SMALL_CLIP,
            f"--config.total_steps={steps}", "--config.checkpoint_every=10", "--config.log_every=1",
            "--config.evals.retrieval.every=0", "--config.evals.zeroshot.every=0",
            "--config.evals.retrieval.num_examples=64", "--config.evals.zeroshot.num_examples=64"]


@pytest.mark.slow
def test_preempted_and_resumed_run_equals_uninterrupted_run(tmp_path):
    full = run_trainer(_small_args(tmp_path / "full"))
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]

    cmd = [sys.executable, "-m", "vlfm.train", *_small_args(tmp_path / "resumed")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=trainer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    log_lines = []
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:  # SIGTERM once training is under way, between checkpoints
            log_lines.append(line)
            if "step 13/30" in line:
                proc.send_signal(signal.SIGTERM)
                break
            assert time.monotonic() < deadline, "trainer did not reach step 13"
        log_lines += proc.stdout.readlines()
        assert proc.wait(timeout=120) == 0, "".join(log_lines)[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    log_text = "".join(log_lines)
    assert "preemption signal received" in log_text, log_text[-3000:]
    assert not os.path.exists(tmp_path / "resumed" / "params")  # stopped early: no final export

    resumed = run_trainer(_small_args(tmp_path / "resumed"))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stdout
    a = load_params(str(tmp_path / "full" / "params"))
    b = load_params(str(tmp_path / "resumed" / "params"))
    for x, y in zip(_leaves(a), _leaves(b)):
        np.testing.assert_array_equal(x, y)
    # The resumed run logged the same losses as the uninterrupted one after the restart point.
    fl = {m["step"]: m["train/loss"] for m in _metrics(tmp_path / "full") if "train/loss" in m}
    rl = {m["step"]: m["train/loss"] for m in _metrics(tmp_path / "resumed") if "train/loss" in m}
    for step in range(20, 31):
        assert fl[step] == rl[step], (step, fl[step], rl[step])
    # Every logged interval says how long the loop waited for data (the log line too).
    timed = [m for m in _metrics(tmp_path / "full") if "train/step_time" in m]
    assert timed and all(0 < m["train/data_wait_fraction"] <= 1 for m in timed), timed
    assert all(0 < m["train/data_wait_s"] <= m["train/step_time"] for m in timed), timed
    assert "data wait" in [line for line in full.stdout.splitlines() if "step 30/30" in line][-1]


def _leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    """SGD without clipping: the learning rate jumps from 0 to near float32's maximum at step 2, so that
    step's update overflows some parameters to Inf while its loss and gradient (taken before the update)
    are finite. The step must count as non-finite: the checkpoint of step 2 held 123 Inf parameters when
    only the loss and gradient norm were checked."""
    args = _small_args(tmp_path, steps=6) + ["--config.checkpoint_every=1", "--config.optimizer.name=sgd",
                                            "--config.optimizer.clip_norm=0", "--config.optimizer.weight_decay=0",
                                            "--config.optimizer.lr.name=constant", "--config.optimizer.lr.peak=3e38",
                                            "--config.optimizer.lr.warmup_steps=1"]
    out = run_trainer(args)
    assert out.returncode == 3, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "NaN/Inf at step" in text
    bad_step = int(text.split("NaN/Inf at step ")[1].split(";")[0])
    last_good = int(text.split("last good checkpoint is step ")[1].split(".")[0])
    assert 0 < last_good < bad_step
    from vlfm.core.checkpoint import load_params_from_checkpoint
    params = load_params_from_checkpoint(str(tmp_path / "checkpoints"), step=last_good)
    assert all(np.isfinite(x).all() for x in _leaves(params))
    saved = [int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()]
    assert max(saved) == last_good, saved  # nothing of the bad step (or later) was written
