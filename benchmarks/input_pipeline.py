"""Measures the host side of training on the built-in CLIP data and prints JSON.

    python benchmarks/input_pipeline.py [--batch 128] [--seconds 10] [--steps 60] [--workdir DIR]

Reports, for ``configs/clip_tiny.py``'s data (the built-in shapes pairs, 32 px, 24 tokens):

- ``examples_per_s_per_core``: batches of the train iterator per CPU second of this process (what one
  core does, so a busy machine does not distort it), with images left uint8 for the step to normalise
  (``uint8_on_device``: the default) and normalised to float32 on the host (``float32_on_host``:
  ``data.normalize_on_device=False``);
- ``bytes_per_batch``: what one batch sends to the devices: uint8 images and only the keys the dual
  encoder and its loss read (the default), float32 images with every key the data gives (as before);
- ``clip_tiny_run``: a short ``clip_tiny`` training run in this process (``--steps`` steps, evaluations
  off), with the training log's ``data_wait_fraction`` (share of the step time the loop spent getting
  batches) and ``data_wait_s`` averaged over its logged intervals, and its ``step_time``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import ml_collections
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's configs/

from vlfm.data import build_dataset, train_iterator  # noqa: E402
from vlfm.losses import combined_loss  # noqa: E402
from vlfm.models import build_model  # noqa: E402
from vlfm.train.batch_keys import needed_keys, select  # noqa: E402
from vlfm.train.config import load_config  # noqa: E402


def iterator_rate(data: dict, batch: int, seconds: float, normalize: bool) -> float:
    """Examples per CPU second of the in-process train iterator, after one warm-up batch."""
    it = train_iterator(build_dataset(data, "train"), global_batch_size=batch, seed=0, normalize=normalize)
    next(it)
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        next(it)
        done += batch
    return done / max(time.process_time() - cpu, 1e-9)


def batch_bytes(config, batch: int) -> dict[str, int]:
    """Bytes one batch sends to the devices: the default (uint8, read keys) and the old float32 / all keys."""
    data = dict(config.data)
    bundle = build_dataset(data, "train")
    raw = next(train_iterator(bundle, global_batch_size=batch, seed=0, normalize=False))
    full = next(train_iterator(bundle, global_batch_size=batch, seed=0, normalize=True))
    keys = needed_keys(build_model(config.model), None, combined_loss(config.losses))
    return {"uint8_read_keys": int(sum(v.nbytes for v in select(raw, keys).values())),
            "float32_all_keys": int(sum(v.nbytes for v in full.values())),
            "image_uint8": int(raw["image"].nbytes), "image_float32": int(full["image"].nbytes),
            "keys_sent": sorted(keys or raw), "keys_left_on_host": sorted(set(raw) - set(keys or raw))}


def training_run(steps: int, workdir: str) -> dict[str, float]:
    from vlfm.train.trainer import train

    log_every = max(steps // 4, 1)
    config = load_config("configs/clip_tiny.py", [f"total_steps={steps}", f"log_every={log_every}",
                                                   "evals.retrieval.every=0", "evals.zeroshot.every=0",
                                                   f"checkpoint_every={steps}", "export_params=False"])
    config.evals = ml_collections.ConfigDict()  # no evaluation at all (every=0 would still run at the end)
    train(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        logged = [m for m in map(json.loads, f) if "train/data_wait_fraction" in m]
    mean = lambda key: sum(m[f"train/{key}"] for m in logged) / len(logged)  # noqa: E731
    return {"steps": steps, "batch": int(config.data.batch_size), "intervals": len(logged),
            "data_wait_fraction": round(mean("data_wait_fraction"), 4), "data_wait_s": round(mean("data_wait_s"), 5),
            "step_time_s": round(mean("step_time"), 4)}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    flags.FLAGS.mark_as_parsed()
    config = load_config("configs/clip_tiny.py", [])
    data = dict(config.data)
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "data": {k: data[k] for k in ("name", "image_size", "max_len")},
        "examples_per_s_per_core": {
            "uint8_on_device": round(iterator_rate(data, args.batch, args.seconds, normalize=False), 1),
            "float32_on_host": round(iterator_rate(data, args.batch, args.seconds, normalize=True), 1)},
        "bytes_per_batch": dict(batch=args.batch, **batch_bytes(config, args.batch)),
    }
    workdir = args.workdir or tempfile.mkdtemp(prefix="input_pipeline_")
    result["clip_tiny_run"] = training_run(args.steps, workdir)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
