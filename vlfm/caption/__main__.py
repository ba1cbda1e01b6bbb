"""``python -m vlfm.caption [--config configs/NAME.py[:arg]] [--config.a.b=value ...] (--params DIR |
--workdir DIR) [--decode key=value ...] [--seed N] [--batch_size N] IMAGE [IMAGE ...]``.

Prints one line per image, in the order given: its path, a tab, its caption. The weights are a params
export (``--params``) or a training workdir's latest checkpoint, else its params export (``--workdir``,
as ``python -m vlfm.evaluate`` reads it); without ``--config`` the workdir's saved config is used.
``--decode`` sets one ``GenerateConfig`` field (``method=beam``, ``beam_size=4``, ``max_length=12``,
``temperature=0.7``, ...; repeat it for several); it overrides the config's captioning eval's
``generate`` options. Greedy by default. Exit status 2, with nothing printed, for a bad command line,
config, decoding option, weights or image file (a missing or undecodable one is named).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any

from vlfm.caption import ImageFileError, OptionError, caption_images
from vlfm.evaluate import WeightsError, obtain_config, weights_source
from vlfm.evaluate.flags import parse_flags
from vlfm.models.decoding import GenerateConfig
from vlfm.train.config import ConfigError

FIELDS = {f.name: f.type for f in dataclasses.fields(GenerateConfig)}
USAGE = ("usage: python -m vlfm.caption [--config configs/NAME.py[:arg]] [--config.a.b=value ...] "
         "(--params DIR | --workdir DIR) [--decode key=value ...] [--seed N] [--batch_size N] IMAGE [IMAGE ...]\n"
         "  without --config, --workdir's saved config (WORKDIR/config.json) is used\n"
         f"  decoding options (--decode): {', '.join(FIELDS)}")
VALUE_FLAGS = ("--config", "--params", "--workdir", "--decode", "--seed", "--batch_size")


def parse_decode(items: list[str]) -> dict[str, Any]:
    """``["method=beam", "beam_size=4"]`` -> ``{"method": "beam", "beam_size": 4}``, typed as the
    ``GenerateConfig`` fields (``None`` for an optional one); an unknown key fails naming the valid ones."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq:
            raise OptionError(f"--decode {item!r}: expected key=value")
        if key not in FIELDS:
            raise OptionError(f"unknown decoding option {key!r}; valid: {', '.join(FIELDS)}")
        kind = str(FIELDS[key])
        try:
            if "None" in kind and text.lower() in ("none", "null"):
                out[key] = None
            elif kind.startswith("int"):
                out[key] = int(text)
            elif kind.startswith("float"):
                out[key] = float(text)
            else:
                out[key] = text
        except ValueError:
            raise OptionError(f"--decode {item!r}: {key} must be of type {kind}") from None
    return out


def parse_args(argv: list[str]) -> dict:
    args = parse_flags(argv, VALUE_FLAGS, USAGE, repeated=("--decode",), positional=True)
    args["decode"], args["images"] = args.pop("--decode"), args.pop("positional")
    weights = [f for f in ("--params", "--workdir") if f in args]
    if len(weights) != 1:
        raise SystemExit(f"give exactly one of --params, --workdir (got {', '.join(weights) or 'none'})\n{USAGE}")
    if "--config" not in args and "--workdir" not in args:
        raise SystemExit(f"give --config (or --workdir, whose saved config is used)\n{USAGE}")
    if not args["images"]:
        raise SystemExit(f"give at least one image file\n{USAGE}")
    for flag in ("--seed", "--batch_size"):
        try:
            args[flag] = int(args.get(flag, 0 if flag == "--seed" else 8))
        except ValueError:
            raise SystemExit(f"{flag} takes an integer, got {args[flag]!r}\n{USAGE}") from None
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("absl", "jax", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:  # a bad option fails before anything is loaded
        options = parse_decode(args["decode"])
        GenerateConfig.from_dict(options)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        config = obtain_config(args.get("--config"), args["overrides"], workdir=args.get("--workdir"))
        weights = weights_source(*(("params", args["--params"]) if "--params" in args
                                   else ("workdir", args["--workdir"])))
        captions = caption_images(config, weights, args["images"], options, seed=args["--seed"],
                                  batch_size=args["--batch_size"])
    except (ConfigError, FileNotFoundError, ImageFileError, OptionError, WeightsError) as e:
        # anything else keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, caption in zip(args["images"], captions):
        print(f"{path}\t{caption}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
