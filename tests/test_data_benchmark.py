"""The data throughput benchmark runs and prints its JSON (tiny settings)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_data_throughput_benchmark_prints_json(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "benchmarks/data_throughput.py", "--images", "96", "--size", "64",
                          "--batch", "8", "--seconds", "0.3", "--workers", "0", "--data_dir", str(tmp_path)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["image_size"] == 64
    assert result["per_core_pairs_per_s"]["train_preprocessing"] > 0
    assert result["pipeline"]["0_workers"]["pairs_per_s"] > 0
    assert result["cores_for_target"] == round(3600 / result["per_core_pairs_per_s"]["train_pipeline"], 1)
