"""``python -m vlfm.train.inspect_data --config configs/x.py [--config.a.b=value ...] [--split train] [--num 4]``:
prints the shapes and dtypes of a few examples of a training config's dataset and the bad-data counters.

It lives with the trainer because it reads a training config (its overrides and schema); the data
package below it knows nothing of configs.
"""

from __future__ import annotations

import argparse
import json
import sys

from absl import flags

from vlfm.data import build_dataset
from vlfm.data.pipeline import pipeline_stats
from vlfm.train.config import load_config


def inspect_data(config_spec: str, overrides: list[str], split: str = "train", num: int = 4) -> None:
    flags.FLAGS.mark_as_parsed()  # grain reads absl flags
    config = load_config(config_spec, overrides)
    bundle = build_dataset(config.data, split)
    it = iter(bundle.example_stream(seed=0, num_epochs=1, shuffle=False))
    for i in range(num):
        try:
            example = next(it)
        except StopIteration:
            break
        print(i, {k: (list(getattr(v, "shape", ())), str(getattr(v, "dtype", type(v).__name__)))
                  for k, v in example.items()})
    print(json.dumps(pipeline_stats(it.get_state())))
    it.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m vlfm.train.inspect_data")
    parser.add_argument("--config", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--num", type=int, default=4)
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    inspect_data(args.config, [a[len("--config."):] for a in rest], args.split, args.num)


if __name__ == "__main__":
    main(sys.argv[1:])
