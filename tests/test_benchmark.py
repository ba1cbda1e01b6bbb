"""``benchmarks/train_step.py`` (JSON figures, FLOPs as the trainer counts them, profile traces) and the
trainer's ``profile_steps``."""

import glob
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, SMALL_CLIP, run_trainer, trainer_env
from vlfm.models.flops import flops_per_example
from vlfm.train.config import load_config


@pytest.mark.slow
def test_benchmark_prints_consistent_json_and_writes_a_profile(tmp_path):
    overrides = [a for a in SMALL_CLIP if "evals" not in a] + ["--config.profile_steps=1,3"]
    cmd = [sys.executable, "benchmarks/train_step.py", "--config", "configs/clip_tiny.py", *overrides,
           "--steps", "4", "--warmup", "1", "--workdir", str(tmp_path)]
    out = subprocess.run(cmd, cwd=REPO, env=trainer_env(1), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.loads(out.stdout[out.stdout.index("{"):])
    assert r["batch_size"] == 32 and r["steps"] == 4 and r["peak_source"] == "measured bfloat16 matmul"
    assert r["step_ms_min"] <= r["step_ms"] <= r["step_ms_max"]
    assert r["examples_per_s"] == pytest.approx(32 / (r["step_ms"] / 1e3), rel=1e-2)
    assert r["model_tflops_per_device"] == pytest.approx(r["model_flops_per_step"] / (r["step_ms"] / 1e3) / 1e12,
                                                         rel=1e-2)
    assert r["mfu"] == pytest.approx(r["model_tflops_per_device"] / r["peak_tflops"], rel=1e-2)
    # The count the trainer logs (traced by default): 3 x forward of this model at batch 32 and the data's text
    # length, which for a dual encoder is the analytic formula's (tests/test_flops.py says why they agree).
    config = load_config("configs/clip_tiny.py", [a[len("--config."):] for a in overrides])
    expected = 32 * 3 * flops_per_example(config.model, text_len=config.data.max_len, global_batch=32)
    assert r["model_flops_per_step"] == pytest.approx(expected, rel=1e-3)
    assert glob.glob(str(tmp_path / "profile" / "**" / "*.xplane.pb"), recursive=True)


@pytest.mark.slow
def test_trainer_profile_steps_write_a_trace_into_the_workdir(tmp_path):
    args = ["--config", "configs/clip_tiny.py", "--workdir", str(tmp_path), *SMALL_CLIP, "--config.total_steps=3",
            "--config.profile_steps=1,3", "--config.evals={}", "--config.export_params=false"]
    out = run_trainer(args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    traces = glob.glob(os.path.join(tmp_path, "profile", "**", "*.xplane.pb"), recursive=True)
    assert traces, os.listdir(tmp_path)


@pytest.mark.slow
def test_sweep_runs_variants_reports_failures_and_respects_the_budget(tmp_path):
    """Each variant is its own train_step.py process; a broken one is a table row, not a crash; the
    measured peak of the first row is reused so MFU compares across rows; past the budget nothing runs."""
    small = [a for a in SMALL_CLIP if "evals" not in a]
    cmd = [sys.executable, "benchmarks/sweep.py", "--config", "configs/clip_tiny.py", *small, "--steps", "2",
           "--warmup", "1", "--variant", "base=", "--variant", "bf16mu=optimizer.mu_dtype=bfloat16",
           "--variant", "typo=model.image.dpeth=2", "--out", str(tmp_path / "r.jsonl")]
    out = subprocess.run(cmd, cwd=REPO, env=trainer_env(1), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "r.jsonl")]
    assert [r["variant"] for r in rows] == ["base", "bf16mu", "typo"]
    assert rows[0]["batch_size"] == 32 and rows[0]["peak_source"].startswith("measured")
    assert rows[1]["overrides"][-1] == "optimizer.mu_dtype=bfloat16" and rows[1]["peak_source"] == "given"
    assert rows[1]["peak_tflops"] == rows[0]["peak_tflops"]
    assert "dpeth" in rows[2]["error"]
    table = out.stdout.splitlines()
    assert table[0].startswith("| variant | ex/s") and len(table) == 5 and "failed" in table[4]
    skipped = subprocess.run(cmd[:-2] + ["--budget_s", "0"], cwd=REPO, env=trainer_env(1), capture_output=True,
                             text=True, timeout=60)
    assert skipped.stdout.count("skipped: budget") == 3


def test_sweep_presets_are_valid_overrides_of_their_configs():
    """A preset's overrides must load on the config it is named after (a typo would waste device time)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep", os.path.join(REPO, "benchmarks", "sweep.py"))
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    for preset, variants in sweep.PRESETS.items():
        for _, overrides in variants:
            load_config(os.path.join(REPO, "configs", f"{preset}.py"), overrides)
    assert sweep.parse_variant("a=x.y=1,z=2") == ("a", ["x.y=1", "z=2"]) and sweep.parse_variant("b=") == ("b", [])
    with pytest.raises(ValueError, match="NAME=key=value"):
        sweep.parse_variant("nameonly")


def _load_sweep():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep", os.path.join(REPO, "benchmarks", "sweep.py"))
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    return sweep


def _probe_wheel(folder) -> None:
    """A minimal pure-Python wheel (``vlfm_wheel_probe``), written by hand."""
    import base64
    import hashlib
    import zipfile

    info = "vlfm_wheel_probe-1.0.dist-info"
    files = {"vlfm_wheel_probe/__init__.py": b"VALUE = 41 + 1\n",
             f"{info}/METADATA": b"Metadata-Version: 2.1\nName: vlfm-wheel-probe\nVersion: 1.0\n",
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    digest = lambda d: base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode()  # noqa: E731
    record = "".join(f"{p},sha256={digest(d)},{len(d)}\n" for p, d in files.items()) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(os.path.join(folder, "vlfm_wheel_probe-1.0-py3-none-any.whl"), "w") as z:
        for path, data in {**files, f"{info}/RECORD": record.encode()}.items():
            z.writestr(path, data)


def test_sweep_wheels_reach_the_variant_processes(tmp_path, monkeypatch):
    """``--wheels DIR``: DIR's wheels are installed offline into a temporary folder that the variants'
    processes import from; an empty DIR is an error that says how to fill it."""
    sweep = _load_sweep()
    monkeypatch.setenv("PYTHONPATH", "")
    monkeypatch.setattr(sys, "path", list(sys.path))  # use_wheels puts benchmarks/ first
    with pytest.raises(FileNotFoundError, match="wheels.py download"):
        sweep.use_wheels(str(tmp_path))
    _probe_wheel(tmp_path)
    target = sweep.use_wheels(str(tmp_path))
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == target
    out = subprocess.run([sys.executable, "-c", "import vlfm_wheel_probe; print(vlfm_wheel_probe.VALUE)"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "42", out.stderr
