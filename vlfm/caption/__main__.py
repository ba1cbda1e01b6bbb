"""``python -m vlfm.caption --config configs/NAME.py[:arg] [--config.a.b=value ...] --params DIR
[--method=beam --beam_size=4 ...] [--seed N] IMAGE [IMAGE ...]``.

Prints one line per image: its path, a tab, its caption. Decoding options are the ``GenerateConfig`` fields
(``--method``, ``--max_length``, ``--beam_size``, ``--length_penalty``, ``--temperature``, ``--top_k``,
``--top_p``, ...); they override the config's captioning eval's ``generate`` options. Exit status 2 for a
bad command line, config, weights or image file.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import sys

from vlfm.models.decoding import GenerateConfig

OPTIONS = tuple(f.name for f in dataclasses.fields(GenerateConfig))
USAGE = ("usage: python -m vlfm.caption --config configs/NAME.py[:arg] [--config.a.b=value ...] --params DIR "
         "[--OPTION=VALUE ...] [--seed N] IMAGE [IMAGE ...]\n"
         f"  decoding options: {', '.join('--' + o for o in OPTIONS)}")


def _value(text: str):
    """``beam`` stays a string; ``4``, ``0.9``, ``None`` become Python values."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_args(argv: list[str]) -> dict:
    args: dict = {"overrides": [], "options": {}, "images": [], "seed": 0}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        if not arg.startswith("--"):
            args["images"].append(arg)
            i += 1
            continue
        name, eq, value = arg.partition("=")
        flag = name[2:]
        if name not in ("--config", "--params", "--seed") and not name.startswith("--config.") and flag not in OPTIONS:
            raise SystemExit(f"unknown argument {arg!r}; valid decoding options: {', '.join(OPTIONS)}\n{USAGE}")
        if not eq:
            if i + 1 >= len(argv):
                raise SystemExit(f"{name} needs a value\n{USAGE}")
            value, i = argv[i + 1], i + 1
        if name.startswith("--config."):
            args["overrides"].append(f"{name[len('--config.'):]}={value}")
        elif flag in OPTIONS:
            args["options"][flag] = _value(value)
        elif flag == "seed":
            args["seed"] = int(value)
        else:
            if name in args:
                raise SystemExit(f"{name} is given twice\n{USAGE}")
            args[name] = value
        i += 1
    for required in ("--config", "--params"):
        if required not in args:
            raise SystemExit(f"{required} is required\n{USAGE}")
    if not args["images"]:
        raise SystemExit(f"give at least one image file\n{USAGE}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("absl", "jax", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from vlfm.caption import ImageFileError, caption_images
    from vlfm.train.config import ConfigError, load_config

    try:
        GenerateConfig.from_dict(args["options"])  # a bad value fails before anything is loaded
    except ValueError as e:
        print(f"error: decoding options: {e}", file=sys.stderr)
        return 2
    try:
        config = load_config(args["--config"], args["overrides"])
        captions = caption_images(config, args["--params"], args["images"], args["options"], seed=args["seed"])
    except (ConfigError, FileNotFoundError, ImageFileError) as e:  # anything else keeps its traceback
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    for path, caption in zip(args["images"], captions):
        print(f"{path}\t{caption}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
