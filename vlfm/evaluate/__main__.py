"""``python -m vlfm.evaluate [--config configs/NAME.py[:arg]] [--config.a.b=value ...]
(--workdir DIR | --params DIR | --checkpoint DIR | --hf DIR | --open_clip DIR) [--evals name,...]
[--json OUT] [--format json|table] [--progress auto|bar|log|off]``.

Without ``--config`` the run's saved config (``WORKDIR/config.json``) of ``--workdir`` is used.

Prints the metrics as one JSON object, or with ``--format table`` as a markdown table (one row per
evaluator and metric), and writes the JSON to ``--json``. ``--progress`` reports the evaluation
batches on stderr (``vlfm.evaluate.progress``; ``auto``: a bar on a terminal, nothing otherwise).
Exit status 2 for a bad command line, config or weights.
"""

from __future__ import annotations

import json
import logging
import sys

from vlfm.evaluate.flags import parse_flags

USAGE = ("usage: python -m vlfm.evaluate [--config configs/NAME.py[:arg]] [--config.a.b=value ...] "
         "(--workdir DIR | --params DIR | --checkpoint DIR | --hf DIR | --open_clip DIR) [--evals name,...] [--json OUT] "
         "[--format json|table] [--progress auto|bar|log|off]\n"
         "  without --config, --workdir's saved config (WORKDIR/config.json) is used")
FORMATS = ("json", "table")
WEIGHT_FLAGS = ("--workdir", "--params", "--checkpoint", "--hf", "--open_clip")
VALUE_FLAGS = ("--config", "--evals", "--json", "--format", "--progress") + WEIGHT_FLAGS


def parse_args(argv: list[str]) -> dict:
    args = parse_flags(argv, VALUE_FLAGS, USAGE)
    weights = [f for f in WEIGHT_FLAGS if f in args]
    if len(weights) != 1:
        raise SystemExit(f"give exactly one of {', '.join(WEIGHT_FLAGS)} (got {', '.join(weights) or 'none'})\n"
                         f"{USAGE}")
    args["weights"] = (weights[0][2:], args[weights[0]])
    if args.setdefault("--format", "json") not in FORMATS:
        raise SystemExit(f"--format must be one of {', '.join(FORMATS)}, got {args['--format']!r}\n{USAGE}")
    from vlfm.evaluate.progress import MODES

    if args.setdefault("--progress", "auto") not in MODES:
        raise SystemExit(f"--progress must be one of {', '.join(MODES)}, got {args['--progress']!r}\n{USAGE}")
    return args


def metrics_table(metrics: dict[str, float]) -> str:
    """``eval/<name>/<metric>`` -> a markdown table, one row per evaluator and metric, in key order."""
    rows = ["| eval | metric | value |", "|---|---|---|"]
    for key in sorted(metrics):
        _, name, metric = key.split("/", 2)
        value = metrics[key]
        text = f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4f}"
        rows.append(f"| {name} | {metric} | {text} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("absl", "jax", "orbax", "tensorflow_datasets", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from vlfm.train import distributed

    distributed.initialize()  # before any other JAX call; a no-op for single-process runs
    import jax

    from vlfm.evaluate import WeightsError, evaluate, obtain_config, weights_source
    from vlfm.evaluate.progress import ProgressReport
    from vlfm.train.config import ConfigError

    names = [n for n in args.get("--evals", "").split(",") if n]
    try:
        config = obtain_config(args.get("--config"), args["overrides"], workdir=args.get("--workdir"))
        source = weights_source(*args["weights"])
        progress = ProgressReport(args["--progress"]) if jax.process_index() == 0 else None
        metrics = evaluate(config, source, names, progress=progress)
    except (ConfigError, FileNotFoundError, WeightsError) as e:  # anything else keeps its traceback
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    text = json.dumps(metrics, indent=2, sort_keys=True)
    if jax.process_index() == 0:
        print(metrics_table(metrics) if args["--format"] == "table" else text)
        if "--json" in args:
            with open(args["--json"], "w") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
