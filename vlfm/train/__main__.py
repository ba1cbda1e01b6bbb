"""``python -m vlfm.train --config configs/NAME.py[:arg] --workdir DIR [--config.a.b=value ...] [--dry_run]``."""

from __future__ import annotations

import logging
import sys

USAGE = ("usage: python -m vlfm.train --config configs/NAME.py[:arg] --workdir DIR [--config.a.b=value ...] "
         "[--dry_run]")
HELP = f"""{USAGE}

Trains (or resumes) the model of a config file in a workdir.

options:
  --config PATH.py[:ARG]  the config file (its get_config(ARG)); starts from vlfm.train.config.base_config()
  --workdir DIR           where the run lives: config.json (the resolved config and code version),
                          metrics.jsonl, tensorboard/, checkpoints/, params/; running again resumes
  --config.a.b=VALUE      overrides one field (repeatable); any key the section's code accepts may be set,
                          also one the config file leaves at its default (e.g. --config.model.image.remat=full);
                          VALUE is parsed as the field's type (Python literals for tuples and dicts)
  --dry_run               only compiles the train step for the configured mesh and logs the parameter
                          count and per-device memory and FLOPs (exit status 4 if it will not fit)
  -h, --help              this text; with --config (and overrides): the resolved config's fields with
                          their values and the other keys each section accepts

exit status: 0 done, 2 config error, 3 NaN/Inf loss, 4 the step will not fit (--dry_run),
             5 another run holds the workdir, 6 a checkpoint could not be written (e.g. a full disk)"""


def parse_args(argv: list[str]) -> tuple[str | None, str | None, list[str], bool, bool]:
    """-> (config spec, workdir, overrides, dry_run, help)."""
    config, workdir, overrides, dry_run, want_help = None, None, [], False, False
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
            want_help = True
        else:
            raise SystemExit(f"unknown argument {arg!r}\n{USAGE}")
        i += 1
    if not want_help and (not config or not workdir):
        raise SystemExit(USAGE)
    return config, workdir, overrides, dry_run, want_help


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    for noisy in ("absl", "jax", "orbax", "tensorflow_datasets", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config_spec, workdir, overrides, dry_run, want_help = parse_args(sys.argv[1:] if argv is None else argv)
    if want_help and not config_spec:
        print(HELP)
        return 0
    # Imported here, not at the top: distributed.initialize must run before any other JAX call.
    from vlfm.train import distributed

    if not want_help:
        distributed.initialize()  # a no-op for single-process runs
    from vlfm.core.checkpoint import CheckpointWriteError
    from vlfm.core.workdir_lock import WorkdirInUseError
    from vlfm.train.aot import WillNotFitError
    from vlfm.train.config import ConfigError, describe_config, load_config
    from vlfm.train.trainer import NonFiniteLossError, train

    try:
        config = load_config(config_spec, overrides)
        if want_help:
            print(f"{USAGE}\n\nfields of {config_spec} (after overrides) and the keys each section accepts:\n")
            print(describe_config(config))
            return 0
        logging.getLogger("vlfm").info("config:\n%s", config)
        train(config, workdir, dry_run=dry_run)
    except ConfigError as e:  # loading or validating the config; any other error keeps its traceback
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except WillNotFitError as e:
        logging.getLogger("vlfm").error("%s", e)
        return 4
    except NonFiniteLossError as e:
        logging.getLogger("vlfm").error("%s", e)
        return 3
    except WorkdirInUseError as e:
        logging.getLogger("vlfm").error("%s", e)
        return 5
    except CheckpointWriteError as e:
        # The storage's own error first (with its traceback), then the one line that ends the run.
        logging.getLogger("vlfm").error("the checkpoint write failed with:", exc_info=e.__cause__ or e)
        logging.getLogger("vlfm").error("%s", e)
        return 6
    return 0


if __name__ == "__main__":
    sys.exit(main())
