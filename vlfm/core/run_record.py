"""Reading the record a run writes (``WORKDIR/config.json``, checkpoint metadata): JSON that decodes to
the run's exact config (tuples stay tuples, placeholders keep their type, ConfigDicts inside tuples stay
ConfigDicts). Here, below every package, so tools that read a run (conversion, evaluation) need nothing
of the trainer; ``vlfm.train.config`` writes the records."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from etils import epath
from ml_collections import ConfigDict

CONFIG_FILE = "config.json"  # WORKDIR/config.json: the resolved config of the run, with code version
TYPES = {t.__name__: t for t in (bool, int, float, str, tuple, list, dict)}  # placeholder types a record keeps


class RecordError(KeyError, ValueError):
    """A record without a config; its message prints as is."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def decode(value: Any) -> Any:
    """The config value an encoded record value stands for."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"__tuple__"}:
        return tuple(decode(v) for v in value["__tuple__"])
    if set(value) == {"__dict__"}:
        return {k: decode(v) for k, v in value["__dict__"].items()}
    if set(value) == {"__configdict__"}:
        return ConfigDict(decode(value["__configdict__"]))
    if set(value) == {"__placeholder__", "value"}:
        return ml_collections.FieldReference(decode(value["value"]), field_type=TYPES[value["__placeholder__"]])
    return ConfigDict({k: decode(v) for k, v in value.items()})


def config_from_record(record: Mapping[str, Any]) -> ConfigDict:
    """The config of a run's record (as read back from JSON or checkpoint metadata)."""
    if "config" not in record:
        raise RecordError(f"no 'config' in the record (keys: {', '.join(sorted(record))})")
    return decode(record["config"])


def read_run_record(workdir: str | os.PathLike) -> dict:
    """``WORKDIR/config.json`` as written: the run's encoded config, its commit and the vlfm version."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {workdir} (a run writes it when it starts training)")
    return json.loads(path.read_text())


def load_workdir_config(workdir: str | os.PathLike) -> ConfigDict:
    """The resolved config a run wrote into ``workdir``, exactly."""
    return config_from_record(read_run_record(workdir))
