"""The tiny fusion configs learn on the built-in data, through ``python -m vlfm.train`` in a fresh
single-device process: ITM accuracy well above chance, masked-token accuracy above the unigram
baseline, VQA accuracy above the answer prior. Runs are shortened versions of the configs (same model,
data and losses; fewer steps), so each stays within two to four minutes on 2 CPU cores."""

import json
import os

import pytest

from tests.helpers import run_trainer

pytestmark = pytest.mark.slow

SHORT = ["--config.checkpoint_every=100000", "--config.export_params=False", "--config.log_every=50"]


def _final_eval(workdir) -> dict:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    evals = {}
    for row in rows:
        evals.update({k: v for k, v in row.items() if k.startswith("eval/")})
    return evals


def _train(config, workdir, steps, *overrides):
    out = run_trainer(["--config", config, "--workdir", str(workdir), f"--config.total_steps={steps}", *SHORT,
                       *overrides])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    evals = _final_eval(workdir)
    print(config, {k: round(v, 3) for k, v in evals.items() if not k.endswith("seconds")})
    return evals


def test_vilt_tiny_learns_itm_and_mlm(tmp_path):
    # ITM takes off abruptly between steps 200 and 600 depending on the draws (benchmarks/RESULTS.md):
    # 800 steps clear the bar on every seed tried (0.89 and 0.85 on seeds 0 and 1).
    r = _train("configs/vilt_tiny.py", tmp_path, 800, "--config.optimizer.lr.warmup_steps=50",
               "--config.evals.itm.every=800", "--config.evals.mlm.every=800")
    assert r["eval/itm/accuracy"] > 0.7, r  # chance 0.5
    assert r["eval/mlm/accuracy"] > 3 * r["eval/mlm/unigram_baseline"], r


def test_meter_tiny_learns_itm_and_mlm(tmp_path):
    r = _train("configs/meter_tiny.py", tmp_path, 700, "--config.optimizer.lr.warmup_steps=50",
               "--config.evals.itm.every=700", "--config.evals.mlm.every=700")
    assert r["eval/itm/accuracy"] > 0.7, r
    assert r["eval/mlm/accuracy"] > 3 * r["eval/mlm/unigram_baseline"], r


def test_vilt_tiny_vqa_beats_the_answer_prior(tmp_path):
    r = _train("configs/vilt_tiny_vqa.py", tmp_path, 300, "--config.optimizer.lr.warmup_steps=50",
               "--config.evals.vqa.every=300", "--config.data.num_examples=5000")
    assert r["eval/vqa/accuracy"] > 2 * r["eval/vqa/prior_baseline"], r
