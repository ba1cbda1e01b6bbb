"""Wheels for an accelerator node without a package index: download here, install there.

    python benchmarks/wheels.py download DIR [--python 3.12] [--platform manylinux_2_28_x86_64 ...]
    python benchmarks/wheels.py install DIR TARGET      # then: export PYTHONPATH=TARGET
    python benchmarks/sweep.py --wheels DIR ...          # installs DIR into a temporary TARGET itself

GPU images usually bring jax, flax, optax, orbax and chex but not vlfm's data stack. ``RUNTIME`` lists what
``python -m vlfm.train`` (and so ``benchmarks/train_step.py``) imports beyond such an image: grain and its
``array-record``/``portpicker`` dependencies, and ml-collections. Wheels are fetched without their
dependencies (``--no-deps``), for the node's Python and platform, so nothing already installed there is
replaced; ``install`` uses ``--no-index --no-deps --target``, touching no site-packages.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys

RUNTIME = ("grain", "array-record", "portpicker", "ml-collections")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")


def download_command(folder: str, python: str = "3.12", platforms: tuple[str, ...] = PLATFORMS,
                     packages: tuple[str, ...] = RUNTIME) -> list[str]:
    """The ``pip download`` command for binary wheels of ``packages`` for another interpreter and platform."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
           "--implementation", "cp", "-d", folder]
    for platform in platforms:
        cmd += ["--platform", platform]
    return cmd + list(packages)


def install(folder: str, target: str) -> list[str]:
    """Installs every wheel in ``folder`` into ``target`` (offline, no dependencies); returns their names."""
    found = sorted(glob.glob(os.path.join(folder, "*.whl")))
    if not found:
        raise FileNotFoundError(f"no wheels in {folder}: fill it with `python benchmarks/wheels.py download {folder}`")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", target, *found], check=True)
    return [os.path.basename(f) for f in found]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="fetch the wheels into DIR (needs a package index)")
    dl.add_argument("folder")
    dl.add_argument("--python", default="3.12", help="the node's Python version")
    dl.add_argument("--platform", action="append", default=None, help="repeatable; default: manylinux x86_64 tags")
    inst = sub.add_parser("install", help="install DIR's wheels into TARGET (no index needed)")
    inst.add_argument("folder")
    inst.add_argument("target")
    args = parser.parse_args(argv)
    if args.command == "download":
        subprocess.run(download_command(args.folder, args.python, tuple(args.platform or PLATFORMS)), check=True)
    else:
        names = install(args.folder, args.target)
        print(f"installed {', '.join(names)}; export PYTHONPATH={args.target}")


if __name__ == "__main__":
    main(sys.argv[1:])
