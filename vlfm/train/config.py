"""Configs: the base config every experiment starts from, loading config files, overrides, and the
resolved config a run writes into its workdir.

A config file defines ``get_config(arg: str | None = None) -> ml_collections.ConfigDict``; the
command line names it ``--config path.py[:arg]`` and overrides any field with ``--config.a.b=value``.
Config files and overrides are checked against the schema of what reads each section
(``vlfm.train.schema``: model and tower fields, dataset and preprocessing parameters, optimizer,
losses, evaluators, ...), so a typo fails at once with the valid keys, and an override may set any
field the code accepts, also one the config file leaves at its default.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from etils import epath
from ml_collections import ConfigDict

import vlfm
from vlfm.core import run_record
from vlfm.core.provenance import code_commit
from vlfm.core.run_record import CONFIG_FILE
from vlfm.train.config_values import check_values
from vlfm.train.schema import MISSING, ConfigError, Key, Section, config_schema, is_section, unknown_key_error, validate

__all__ = ["ConfigError", "apply_override", "apply_overrides", "base_config", "config_from_record", "config_record",
           "describe_config", "load_config", "load_config_file", "load_workdir_config", "save_workdir_config",
           "validate_config"]



def base_config() -> ConfigDict:
    """Defaults shared by every experiment; a config file updates what it needs."""
    c = ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.grad_accum_steps = 1
    c.ema_decay = ml_collections.config_dict.placeholder(float)
    c.eval_with_ema = False
    # Momentum (EMA) encoders and queues seen by the losses (vlfm.train.momentum); off while decay is None.
    c.momentum = ConfigDict(dict(decay=ml_collections.config_dict.placeholder(float), queue_size=0, queue_keys=(),
                                 tasks=(), from_student=()))
    c.model = ConfigDict()
    c.losses = ConfigDict()
    # Several objectives / data streams (vlfm.train.tasks); empty = one task from `data` and `losses`.
    c.tasks = ConfigDict()
    c.schedule = "round_robin"  # round_robin, uniform, weighted, accumulate, stages
    # The tasks' order (the `stages` schedule runs its stages in it); empty = by name, as ConfigDict keeps them.
    c.task_order = ()
    c.gradient_combiner = ConfigDict(dict(name="sum"))  # or gradient_masking (vlfm.optim.combine)
    c.teachers = ConfigDict()  # name -> config/model/workdir + params/checkpoint, or hf (vlfm.train.teachers)
    # Fine-tuning: start from another run's params (vlfm.train.init_from); one of params/checkpoint/hf,
    # or `sources`: a list of such dicts (each with its own skip/rename/grow_rows), merged in order.
    c.init_from = ConfigDict(dict(params=None, checkpoint=None, hf=None, open_clip=None, skip=(), rename=(), grow_rows=(), resample=(),
                                  inflate=(), sources=()))
    c.data = ConfigDict(dict(name="shapes", batch_size=256, num_workers=0, train_split="train"))
    # Batches put on the devices ahead of the step that reads them (vlfm.train.input_feed); 0 = off.
    c.data.prefetch_to_device = 2
    # Images leave the host uint8 and the train step normalises them (vlfm.data.normalization); False: float32.
    c.data.normalize_on_device = True
    # mu_dtype / lr_multipliers / layer_decay: None = off (vlfm.optim.optimizers.build_optimizer lists every key).
    c.optimizer = ConfigDict(dict(name="adamw", lr=dict(name="cosine", peak=1e-3, warmup_steps=100), weight_decay=0.1,
                                  clip_norm=1.0, mu_dtype=None, lr_multipliers=None, layer_decay=None))
    c.mesh = ConfigDict(dict(shape=(-1, 1, 1), rules=(), dcn_shape=None))  # dcn_shape: vlfm.core.sharding
    c.evals = ConfigDict()
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.async_checkpoints = True
    c.export_params = True
    c.peak_tflops = ml_collections.config_dict.placeholder(float)
    c.flops = "traced"  # model FLOPs for MFU: "traced" (any model) or "analytic" (vlfm.core.flops)
    c.profile_steps = ""  # "a,b": write a jax.profiler trace of steps a..b-1 into workdir/profile
    return c


def schema() -> Section:
    """The top-level schema (keys of ``base_config`` and the schemas of its sections)."""
    return config_schema(base_config())


def validate_config(config: ConfigDict) -> None:
    """Fails (ConfigError, naming the valid keys) on any key no schema accepts, in every section, and
    (naming the key) on any value outside its key's range (``vlfm.train.config_values``)."""
    validate(config, schema())
    check_values(config)


check_keys = validate_config  # the name the trainer used before the schema covered every section


def load_config_file(spec: str) -> ConfigDict:
    """``path.py`` or ``path.py:arg`` -> the file's ``get_config(arg)``, validated."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"vlfm_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    validate_config(config)
    return config


def _annotation_names(annotation: Any) -> tuple[set[str], bool]:
    """``"float | None"`` -> ({"float"}, True): the type names of an annotation and whether None is allowed."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [p.strip() for p in text.replace("Optional[", "").split("|")]
    names = {p.split("[")[0] for p in parts if p not in ("None", "")}
    return names, "None" in parts or "Optional[" in text


def _parse_like(text: str, current: Any) -> Any:
    """Parses ``text`` as a value of ``current``'s type (None: any Python literal, else the string)."""
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"expected a boolean, got {text!r}")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text
        raise ConfigError(f"cannot parse {text!r} as a {type(current).__name__}") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, (int, float)) and not isinstance(value, (int, float)):
        raise ConfigError(f"expected a {type(current).__name__}, got {text!r}")
    return value


_EXAMPLES = {"bool": False, "int": 0, "float": 0.0, "str": ""}


def _parse_value(text: str, current: Any, key: Key | None = None) -> Any:
    """A command-line string as the field's type: its current value's, else the schema default's or annotation's."""
    names, optional = _annotation_names(key.annotation) if key is not None and key.annotation else (set(), False)
    if optional and text in ("None", "none", "null"):
        return None
    if current is not None:
        return _parse_like(text, current)
    if key is not None and key.default not in (None, MISSING):
        return _parse_like(text, key.default)
    if names:
        if len(names) == 1 and next(iter(names)) in _EXAMPLES:
            return _parse_like(text, _EXAMPLES[next(iter(names))])
        if names <= {"int", "float"}:
            return _parse_like(text, 0.0 if "." in text or "e" in text.lower() else 0)
    return _parse_like(text, None)


def apply_override(config: ConfigDict, dotted: str, text: str) -> None:
    """Sets ``a.b.c`` from a command-line string. Any key the section's schema accepts may be set (added
    when the config leaves it out, its type from the schema); unknown keys fail with the valid names."""
    parts = dotted.split(".")
    node, section = config, schema()
    for i, key in enumerate(parts):
        path = ".".join(parts[:i])
        last = i == len(parts) - 1
        if section is None:  # a free mapping (e.g. lr_multipliers): only the keys it has
            if key not in node:
                raise ConfigError(f"unknown config key {dotted!r}: {path} has no {key!r}; "
                                  f"valid keys: {', '.join(sorted(node.keys()))}")
            spec, child = None, None
        elif section.entries is not None:  # a collection (tasks, losses, evals, teachers, ...)
            if key not in node and not last:
                raise ConfigError(f"unknown config key {dotted!r}: {path} has no entry {key!r}; entries: "
                                  f"{', '.join(sorted(node.keys())) or '(none)'} (add one whole: "
                                  f"--config.{path}.{key}='{{...}}')")
            spec, child = Key(), (lambda k, v, s=section: s.entries(k, v))
        else:
            if key not in section.keys and not section.open:
                raise unknown_key_error(path, section, key)
            spec, child = section.keys.get(key), section.children
        if last:
            try:
                node[key] = _parse_value(text, node.get(key), spec)
            except (ConfigError, TypeError) as e:
                raise ConfigError(f"override {dotted}={text}: {e}") from None
            return
        if node.get(key) is None:  # a section the schema knows but the config leaves out: start it empty
            if child is None or child(key, ConfigDict()) is None:
                raise ConfigError(f"config key {'.'.join(parts[:i + 1])!r} is not set; set it whole "
                                  f"(--config.{'.'.join(parts[:i + 1])}='{{...}}')")
            node[key] = ConfigDict()
        if not is_section(node[key]):
            raise ConfigError(f"config key {'.'.join(parts[:i + 1])!r} is a value, not a section")
        section = child(key, node[key]) if child is not None else None
        node = node[key]


def load_config(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """A config file plus ``a.b=value`` overrides, validated."""
    return apply_overrides(load_config_file(spec), overrides)


def apply_overrides(config: ConfigDict, overrides: Sequence[str] = ()) -> ConfigDict:
    """``a.b=value`` overrides applied to ``config`` (in place), then the whole config validated."""
    with config.unlocked():
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            apply_override(config, key, value)
    validate_config(config)
    return config


# ----------------------------------------------------------------------------------------------------
# The resolved config in the workdir and in checkpoints: JSON that round-trips exactly (tuples stay
# tuples, placeholders keep their type, ConfigDicts inside tuples stay ConfigDicts).

_TYPES = run_record.TYPES


def _encode(value: Any, path: str) -> Any:
    if isinstance(value, ConfigDict):
        return {k: _encode_field(value, k, f"{path}.{k}" if path else k) for k in value.keys()}
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ConfigError(f"config value {path} has non-string keys; it cannot be written as JSON")
        return {"__dict__": {k: _encode(v, f"{path}.{k}") for k, v in value.items()}}
    if isinstance(value, (tuple, list)):
        items = [{"__configdict__": _encode(v, path)} if isinstance(v, ConfigDict) else _encode(v, path)
                 for v in value]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"config value {path} = {value!r} ({type(value).__name__}) cannot be written as JSON")


def _encode_field(config: ConfigDict, key: str, path: str) -> Any:
    ref = config._fields.get(key)
    if isinstance(ref, ml_collections.FieldReference):  # a placeholder (or a link): its type and value
        type_name = ref.get_type().__name__
        if type_name not in _TYPES:
            raise ConfigError(f"config value {path} is a reference of type {type_name}; it cannot be written")
        return {"__placeholder__": type_name, "value": _encode(ref.get(), path)}
    return _encode(config[key], path)


def config_record(config: ConfigDict) -> dict:
    """JSON-ready ``{"config", "commit", "vlfm_version"}``: what a run writes to its workdir and checkpoints."""
    return {"config": _encode(config, ""), "commit": code_commit(), "vlfm_version": vlfm.__version__}


def config_from_record(record: Mapping[str, Any]) -> ConfigDict:
    """The config of a ``config_record`` (as read back from JSON or checkpoint metadata)."""
    try:
        return run_record.config_from_record(record)
    except run_record.RecordError as e:
        raise ConfigError(str(e)) from None


def save_workdir_config(config: ConfigDict, workdir: str | os.PathLike) -> epath.Path:
    """Writes ``WORKDIR/config.json`` (the resolved config, the code's commit and the vlfm version)."""
    path = epath.Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config_record(config), indent=1))
    return path


def load_workdir_config(workdir: str | os.PathLike) -> ConfigDict:
    """The resolved config a run wrote into ``workdir`` (``save_workdir_config``), exactly."""
    return config_from_record(run_record.read_run_record(workdir))


# ----------------------------------------------------------------------------------------------------
# ``python -m vlfm.train --config X --help``: the resolved fields and what each section accepts.

def describe_config(config: ConfigDict) -> str:
    """Every section of ``config``: its set fields with their values and the other keys its schema accepts."""
    lines: list[str] = []
    _describe(config, schema(), "", lines)
    return "\n".join(lines)


def _describe(node: Any, section: Section | None, path: str, lines: list[str]) -> None:
    title = path or "top level"
    if section is not None and section.entries is not None:
        lines.append(f"[{title}] entries: {', '.join(node.keys()) or '(none)'}")
        for name in node.keys():
            value = node[name] or ConfigDict()
            _describe(value, section.entries(name, value), f"{path}.{name}", lines)
        return
    what = "(free mapping)" if section is None else "" if not path else section.what
    lines.append(f"[{title}] {what}".rstrip())
    nested = []
    for key in node.keys():
        value = node[key]
        child = section.children(key, value) if section is not None else None
        if is_section(value):
            nested.append((key, value, child))
        else:
            lines.append(f"  {key} = {value!r}")
    if section is not None:
        unset = [f"{k}={v.default!r}" if v.default is not MISSING else k for k, v in section.keys.items()
                 if k not in node.keys()]
        if unset:
            lines.append(f"  also accepts: {', '.join(unset)}" + (" (and any other key)" if section.open else ""))
    for key, value, child in nested:
        _describe(value, child, f"{path}.{key}" if path else key, lines)
