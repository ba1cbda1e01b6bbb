"""configs/coca_tiny.py learns on the built-in data, through ``python -m vlfm.train`` in a fresh
single-device process: after a shortened run (same model, data, losses and evaluators; fewer, smaller
steps and fewer held-out examples) retrieval R@1 is far above chance and greedy captions score a CIDEr-D
well above the most-frequent-reference baseline."""

import json
import os

import pytest

from tests.helpers import run_trainer

pytestmark = pytest.mark.slow

STEPS = 60


def test_coca_tiny_learns_retrieval_and_captioning(tmp_path):
    out = run_trainer(["--config", "configs/coca_tiny.py", "--workdir", str(tmp_path),
                       f"--config.total_steps={STEPS}", "--config.data.batch_size=64",
                       "--config.data.num_examples=5000", "--config.optimizer.lr.warmup_steps=10",
                       "--config.checkpoint_every=100000", "--config.export_params=False",
                       f"--config.log_every={STEPS}",
                       f"--config.evals.retrieval.every={STEPS}", "--config.evals.retrieval.num_examples=200",
                       f"--config.evals.captioning.every={STEPS}", "--config.evals.captioning.num_examples=200",
                       "--config.evals.captioning.batch_size=200"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    r = {k: v for row in rows for k, v in row.items() if k.startswith("eval/")}
    print({k: round(v, 3) for k, v in r.items() if not k.endswith("seconds")})
    chance = r["eval/retrieval/chance_r1"]  # 1/200
    assert r["eval/retrieval/i2t_r1"] > 4 * chance and r["eval/retrieval/t2i_r1"] > 4 * chance, r
    assert r["eval/captioning/cider_d"] > 2 * r["eval/captioning/baseline_cider_d"], r
