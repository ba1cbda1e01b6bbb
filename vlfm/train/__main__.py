"""``python -m vlfm.train --config configs/NAME.py[:arg] --workdir DIR [--config.a.b=value ...]``."""

from __future__ import annotations

import logging
import sys

USAGE = ("usage: python -m vlfm.train --config configs/NAME.py[:arg] --workdir DIR [--config.a.b=value ...] "
         "[--dry_run]")


def parse_args(argv: list[str]) -> tuple[str, str, list[str], bool]:
    config, workdir, overrides, dry_run = None, None, [], False
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in ("--config", "--workdir") and not eq:
            if i + 1 >= len(argv):
                raise SystemExit(f"{name} needs a value\n{USAGE}")
            value, i = argv[i + 1], i + 1
        if name == "--config":
            config = value
        elif name == "--workdir":
            workdir = value
        elif name.startswith("--config."):
            if not eq:
                if i + 1 >= len(argv):
                    raise SystemExit(f"{name} needs a value\n{USAGE}")
                value, i = argv[i + 1], i + 1
            overrides.append(f"{name[len('--config.'):]}={value}")
        elif arg == "--dry_run":
            dry_run = True
        elif arg in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        else:
            raise SystemExit(f"unknown argument {arg!r}\n{USAGE}")
        i += 1
    if not config or not workdir:
        raise SystemExit(USAGE)
    return config, workdir, overrides, dry_run


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    for noisy in ("absl", "jax", "orbax", "tensorflow_datasets", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config_spec, workdir, overrides, dry_run = parse_args(sys.argv[1:] if argv is None else argv)
    # The package is imported only now (no cycle involved): a dependency installs a root log handler on import,
    # which would turn the basicConfig above into a no-op if it came first.
    from vlfm.train import distributed

    distributed.initialize()  # before any other JAX call; a no-op for single-process runs
    from vlfm.train.aot import WillNotFitError
    from vlfm.train.config import ConfigError, load_config
    from vlfm.train.trainer import NonFiniteLossError, train

    try:
        config = load_config(config_spec, overrides)
    except (ConfigError, KeyError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    logging.getLogger("vlfm").info("config:\n%s", config)
    try:
        train(config, workdir, dry_run=dry_run)
    except WillNotFitError as e:
        logging.getLogger("vlfm").error("%s", e)
        return 4
    except NonFiniteLossError as e:
        logging.getLogger("vlfm").error("%s", e)
        return 3
    except KeyError as e:
        print(f"config error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
