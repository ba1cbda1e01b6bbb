"""Where a set of weights came from: the code's commit and version, recorded beside every export so a
checkpoint handed to another tool can be traced back to the code and config that made it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
from typing import Any, Mapping

EXPORT_RECORD = "vlfm_export.json"


def code_commit() -> str:
    """The git commit of the checkout vlfm is imported from ("unknown" outside a git checkout)."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def code_version() -> str:
    """The installed vlfm package version ("unknown" when vlfm runs from a tree that is not installed)."""
    try:
        return importlib.metadata.version("vlfm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def write_export_record(directory: str | os.PathLike, model_config: Mapping[str, Any],
                        run_record: Mapping[str, Any] | None = None) -> str:
    """Writes ``directory/vlfm_export.json``: the model config, the exporting code's commit and version
    and, when the weights come from a training run, that run's own record (config, commit, version)."""
    record = {"model_config": model_config, "commit": code_commit(), "vlfm_version": code_version()}
    if run_record is not None:
        record["run"] = dict(run_record)
    path = os.path.join(directory, EXPORT_RECORD)
    with open(path, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    return path
