"""The command lines of the commands that run saved weights (``vlfm.evaluate``, ``vlfm.caption``):
``--flag value`` / ``--flag=value`` pairs, ``--config.a.b=value`` overrides, and positional arguments."""

from __future__ import annotations

from collections.abc import Sequence


def parse_flags(argv: Sequence[str], value_flags: Sequence[str], usage: str, *, repeated: Sequence[str] = (),
                positional: bool = False) -> dict:
    """``{"--flag": value, ..., "overrides": ["a.b=v", ...], "positional": [...]}``; a ``repeated`` flag
    collects a list. ``-h`` prints ``usage`` and exits 0; an unknown flag, a missing value, a flag given
    twice or an unwanted positional argument exits with the problem and ``usage``."""
    args: dict = {"overrides": [], "positional": [], **{flag: [] for flag in repeated}}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(usage)
            raise SystemExit(0)
        if not arg.startswith("--"):
            if not positional:
                raise SystemExit(f"unexpected argument {arg!r}\n{usage}")
            args["positional"].append(arg)
            i += 1
            continue
        name, eq, value = arg.partition("=")
        if name not in value_flags and not name.startswith("--config."):
            raise SystemExit(f"unknown argument {arg!r}\n{usage}")
        if not eq:
            if i + 1 >= len(argv):
                raise SystemExit(f"{name} needs a value\n{usage}")
            value, i = argv[i + 1], i + 1
        if name.startswith("--config."):
            args["overrides"].append(f"{name[len('--config.'):]}={value}")
        elif name in repeated:
            args[name].append(value)
        elif name in args:
            raise SystemExit(f"{name} is given twice\n{usage}")
        else:
            args[name] = value
        i += 1
    return args
