"""The trainer on webdataset shards: worker processes, a held-out split for retrieval, and the bad-data
counters in metrics.jsonl."""

import json
import os
import subprocess
import sys

import pytest

from vlfm.data import synthetic
from vlfm.data.webdataset import write_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = '''
import ml_collections
from vlfm.train.config import load_config_file


def get_config(arg=None):
    c = load_config_file({clip_tiny!r})
    c.total_steps = 6
    c.model.image.update(depth=1, width=32, mlp_dim=64, patch_size=8)
    c.model.text.update(depth=1, width=32, mlp_dim=64)
    c.model.embed_dim = 32
    c.log_every = 3
    c.checkpoint_every = 3
    c.data = ml_collections.ConfigDict(dict(
        name="webdataset", urls={urls!r}, batch_size=16, num_workers=2, train_split="train", shuffle_buffer=32,
        image=dict(size=32, scale=(0.5, 1.0), flip=True),
        text=dict(tokenizer=dict(kind="wordpiece", path={vocab!r}), max_len=24)))
    c.evals = ml_collections.ConfigDict(dict(retrieval=dict(every=6, split="validation", num_examples=32)))
    return c
'''


@pytest.mark.slow
def test_trainer_on_webdataset_shards_with_workers(tmp_path):
    samples = [synthetic.sample(i, 32) for i in range(160)]
    samples[7]["jpg"] = b"corrupt"
    write_shards(samples[:128], str(tmp_path / "train-%05d.tar"), 32)
    write_shards(samples[128:], str(tmp_path / "val-%05d.tar"), 32)
    words = ["a", "and", "picture", "number", *synthetic.COLOURS, *"0123456789", *[f"##{d}" for d in "0123456789"]]
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    urls = {"train": str(tmp_path / "train-{00000..00003}.tar"), "validation": str(tmp_path / "val-00000.tar")}
    config = tmp_path / "config.py"
    config.write_text(CONFIG.format(clip_tiny=os.path.join(REPO, "configs", "clip_tiny.py"), urls=urls,
                                    vocab=str(tmp_path / "vocab.txt")))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "vlfm.train", "--config", str(config), "--workdir",
                          str(tmp_path / "run")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        metrics = [json.loads(line) for line in f]
    train = [m for m in metrics if "train/loss" in m]
    assert [m["step"] for m in train] == [3, 6]
    # By step 6 each worker has delivered 48 pairs, past its first shuffle window of 32 raw samples, which
    # holds the corrupt one (4 shards interleaved, the 8th sample of each); it is counted, not fatal.
    assert train[-1].get("train/data/bad/corrupt_image", 0) >= 1, train[-1]
    assert "skipping bad data" in out.stdout + out.stderr
    assert any("eval/retrieval/i2t_r1" in m for m in metrics)
