"""Which keys each config section accepts, derived from the code that reads the section.

A section's schema comes from what builds it: the model's and towers' dataclass fields (``MODELS``,
``TOWERS``), the dataset factory's and preprocessing fields' parameters (``DATASETS``, ``FIELDS``),
the losses' and evaluators' keyword arguments, the optimizer's and schedule's key tuples. So a key
the code would not read fails when the config is loaded, naming the valid keys, and an override may
set any key the code accepts, also one the config file leaves at its default.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from vlfm.data.pipeline import DATASETS, PIPELINE_KEYS
from vlfm.data.preprocess import FIELDS
from vlfm.evaluators import EVALUATORS
from vlfm.losses import LOSSES
from vlfm.models import MODELS, TOWERS
from vlfm.optim.combine import gradient_masking
from vlfm.optim.layer_decay import layerwise_lr_decay
from vlfm.optim.optimizers import OPTIMIZER_KEYS
from vlfm.optim.schedules import SCHEDULE_KEYS
from vlfm.registry import Registry

MISSING = inspect.Parameter.empty
# ``config.teachers.NAME``: a model from a config file / model config / training workdir, its params from a
# params export / checkpoint, or an HF directory (vlfm.train.teachers).
# ``config.tasks.NAME`` (vlfm.train.tasks).
TASK_KEYS = ("data", "losses", "weight", "lr_multiplier", "freeze", "teachers", "steps", "stage", "forward")
TEACHER_KEYS = ("config", "model", "workdir", "params", "checkpoint", "hf", "forward")
EVAL_KEYS = ("type", "every")  # read by the trainer; the rest are the evaluator's arguments
LOSS_KEYS = ("weight", "fn")  # read by combined_loss; the rest are the loss function's arguments
MIXTURE_ENTRY_KEYS = ("weight", "split")  # read by the mixture for each of its datasets
COMBINERS: dict[str, Callable | None] = {"sum": None, "gradient_masking": gradient_masking}


class ConfigError(KeyError, ValueError):
    """A config key or override that does not exist, or a value that cannot be parsed.

    A KeyError (like the registries' unknown-name errors it replaces) whose message prints as is."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class Key:
    """One accepted key: its default (``MISSING`` when required) and type annotation (for parsing overrides)."""

    default: Any = MISSING
    annotation: Any = None


@dataclasses.dataclass
class Section:
    """The keys one config section accepts.

    ``children(key, value)`` gives the schema of a nested section (None: a plain value or free mapping);
    ``entries(name, value)`` makes this a collection of named sections (tasks, losses, evals, ...);
    ``open`` accepts any key (a factory taking ``**kwargs``)."""

    what: str
    keys: dict[str, Key] = dataclasses.field(default_factory=dict)
    children: Callable[[str, Any], Section | None] = lambda key, value: None
    entries: Callable[[str, Any], Section] | None = None
    open: bool = False


def is_section(value: Any) -> bool:
    """A nested config section: a mapping or a ConfigDict (which is not a ``Mapping``)."""
    return isinstance(value, (Mapping, ml_collections.ConfigDict))


def _params(fn: Callable, skip: int = 0, exclude: tuple[str, ...] = ()) -> tuple[dict[str, Key], bool]:
    """A callable's keyword parameters as Keys (after ``skip`` leading ones), and whether it takes ``**kwargs``."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    keys = {p.name: Key(p.default, p.annotation if p.annotation is not MISSING else None) for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in exclude}
    return keys, any(p.kind == p.VAR_KEYWORD for p in params)


def _fields(cls: type) -> dict[str, Key]:
    """A dataclass's configurable fields (a flax module's without ``parent`` and ``name``)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.init and f.name not in ("parent", "name"):
            default = f.default if f.default is not dataclasses.MISSING else MISSING
            out[f.name] = Key(default, f.type)
    return out


def _get(registry: Registry, name: Any, where: str) -> Any:
    if name not in registry:
        raise ConfigError(f"{where}: unknown {registry.kind} {name!r}; valid names: {', '.join(registry.names())}")
    return registry.get(name)


def _named(registry: Registry, cfg: Mapping, where: str, default: str | None = None) -> tuple[str | None, Any]:
    name = cfg.get("name", default)
    if name is None:
        return None, None
    return name, _get(registry, name, f"{where}.name")


def _unnamed(what: str, registry: Registry) -> Section:
    """A section that has no ``name`` yet: only ``name`` is known."""
    return Section(f"{what} (no name; set {what}.name to one of {', '.join(registry.names())})", {"name": Key()})


def tower_schema(cfg: Mapping, where: str) -> Section:
    name, cls = _named(TOWERS, cfg, where)
    if cls is None:
        return _unnamed(where, TOWERS)
    return Section(f"{where} (tower {name})", {"name": Key(), **_fields(cls)})


def model_schema(cfg: Mapping, where: str = "model") -> Section:
    """The model class's fields; sub-sections naming a tower are checked against that tower's fields."""
    name, cls = _named(MODELS, cfg, where)
    if cls is None:
        return _unnamed(where, MODELS)

    def children(key: str, value: Any) -> Section | None:
        if is_section(value) and "name" in value:
            return tower_schema(value, f"{where}.{key}")
        return None

    return Section(f"{where} (model {name})", {"name": Key(), **_fields(cls)}, children)


def schedule_schema(cfg: Mapping, where: str) -> Section:
    return Section(f"{where} (learning-rate schedule)", {k: Key() for k in SCHEDULE_KEYS})


def optimizer_schema(cfg: Mapping, where: str = "optimizer") -> Section:
    layer_decay, _ = _params(layerwise_lr_decay)

    def children(key: str, value: Any) -> Section | None:
        if key == "lr":
            return schedule_schema(value, f"{where}.lr")
        if key == "layer_decay":
            return Section(f"{where}.layer_decay (layerwise_lr_decay arguments)", layer_decay)
        return None  # lr_multipliers: a free mapping of path regex -> multiplier

    return Section(f"{where} (optimizer)", {k: Key() for k in OPTIMIZER_KEYS}, children)


def field_schema(kind: str, where: str) -> Section:
    keys, takes_kwargs = _params(FIELDS.get(kind).__init__, skip=1, exclude=("train",))
    return Section(f"{where} (preprocessing field {kind})", keys, open=takes_kwargs)


def data_schema(cfg: Mapping, where: str = "data", default_name: str | None = None,
                extra: tuple[str, ...] = ()) -> Section:
    """The pipeline's keys plus the dataset factory's parameters; preprocessing fields (``image``,
    ``text``, ...) are checked against their field class, a mixture's datasets as data sections."""
    name, factory = _named(DATASETS, cfg, where, default_name)
    if factory is None:
        return _unnamed(where, DATASETS)
    params, takes_fields = _params(factory, exclude=("split",))
    keys = {"name": Key(), **{k: Key() for k in PIPELINE_KEYS + extra}, **params}
    if takes_fields:  # ``**fields``: any registered preprocessing field
        keys.update({kind: Key(None) for kind in FIELDS.names() if kind not in keys})

    def children(key: str, value: Any) -> Section | None:
        if key in FIELDS and is_section(value):
            return field_schema(key, f"{where}.{key}")
        if key == "source" and is_section(value):  # a dataset wrapping another (label_text, unique_labels)
            return data_schema(value, f"{where}.source")
        if name == "mixture" and key == "datasets":
            return Section(f"{where}.datasets", entries=lambda entry, sub: data_schema(
                sub, f"{where}.datasets.{entry}", default_name=entry, extra=MIXTURE_ENTRY_KEYS))
        return None

    return Section(f"{where} (dataset {name})", keys, children)


def loss_schema(name: str, cfg: Mapping | None, where: str) -> Section:
    fn_name = (cfg or {}).get("fn", name)
    params, takes_kwargs = _params(_get(LOSSES, fn_name, where if fn_name == name else f"{where}.fn"), skip=2)
    return Section(f"{where} (loss {fn_name})", {**{k: Key() for k in LOSS_KEYS}, **params}, open=takes_kwargs)


def losses_schema(where: str) -> Section:
    return Section(where, entries=lambda name, cfg: loss_schema(name, cfg, f"{where}.{name}"))


def eval_schema(name: str, cfg: Mapping, where: str) -> Section:
    """The evaluator's keyword arguments; ``data`` is a data section, and an argument the evaluator lists in
    ``CONFIG_SECTIONS`` (name -> dataclass, e.g. the captioning evaluator's ``generate`` options) is a
    section with that dataclass's fields, so a typo in it fails at load and overrides are typed."""
    kind = cfg.get("type", name)
    cls = _get(EVALUATORS, kind, f"{where}.type" if "type" in cfg else where)
    params, takes_kwargs = _params(cls.__init__, skip=2)  # self, predict_fns
    sections = dict(getattr(cls, "CONFIG_SECTIONS", {}))

    def children(key: str, value: Any) -> Section | None:
        if key == "data":
            if isinstance(value, str):  # "task:NAME": a task's data, checked against the tasks when built
                if not value.startswith("task:"):
                    raise ConfigError(f"{where}.data: {value!r} is neither a data config nor 'task:NAME'")
                return None
            return data_schema(value, f"{where}.data")
        if key in sections:
            return Section(f"{where}.{key} ({sections[key].__name__} fields)", _fields(sections[key]))
        return None

    return Section(f"{where} (evaluator {kind})", {**{k: Key() for k in EVAL_KEYS}, **params}, children,
                   open=takes_kwargs)


def task_schema(name: str, cfg: Mapping, where: str) -> Section:
    def children(key: str, value: Any) -> Section | None:
        if key == "data":
            return data_schema(value, f"{where}.data")
        if key == "losses":
            return losses_schema(f"{where}.losses")
        return None

    return Section(f"{where} (task)", {k: Key() for k in TASK_KEYS}, children)


def teacher_schema(name: str, cfg: Mapping, where: str) -> Section:
    children = lambda key, value: model_schema(value, f"{where}.model") if key == "model" else None  # noqa: E731
    return Section(f"{where} (teacher)", {k: Key() for k in TEACHER_KEYS}, children)


def combiner_schema(cfg: Mapping, where: str = "gradient_combiner") -> Section:
    name = cfg.get("name", "sum")
    if name not in COMBINERS:
        raise ConfigError(f"{where}.name: unknown gradient combiner {name!r}; valid names: {', '.join(COMBINERS)}")
    keys = _params(COMBINERS[name])[0] if COMBINERS[name] else {}
    return Section(f"{where} (combiner {name})", {"name": Key(), **keys})


def _collection(where: str, entry: Callable[[str, Any, str], Section]) -> Section:
    return Section(where, entries=lambda name, cfg: entry(name, cfg, f"{where}.{name}"))


def _fixed(where: str, base: Any) -> Section:
    """A section whose keys are those of the base config's section (``mesh``, ``init_from``)."""
    return Section(where, {k: _base_key(base, k) for k in base.keys()})


def _base_key(base: ml_collections.ConfigDict, key: str) -> Key:
    ref = base._fields.get(key) if hasattr(base, "_fields") else None
    if isinstance(ref, ml_collections.FieldReference):  # a placeholder: None now, its type for overrides
        return Key(ref.get(), ref.get_type())
    return Key(base[key])


SECTIONS: dict[str, Callable[[Any], Section]] = {
    "model": model_schema,
    "optimizer": optimizer_schema,
    "data": data_schema,
    "losses": lambda cfg: losses_schema("losses"),
    "tasks": lambda cfg: _collection("tasks", task_schema),
    "evals": lambda cfg: _collection("evals", eval_schema),
    "teachers": lambda cfg: _collection("teachers", teacher_schema),
    "gradient_combiner": combiner_schema,
}


def config_schema(base: ml_collections.ConfigDict) -> Section:
    """The top level: the base config's keys; its sections through ``SECTIONS`` or the base's own keys."""

    def children(key: str, value: Any) -> Section | None:
        if not is_section(value):
            return None
        if key in SECTIONS:
            return SECTIONS[key](value)
        base_value = base.get(key)
        return _fixed(key, base_value) if is_section(base_value) else None

    return Section("the top level", {k: _base_key(base, k) for k in base.keys()}, children)


def unknown_key_error(path: str, section: Section, key: str) -> ConfigError:
    full = f"{path}.{key}" if path else key
    return ConfigError(f"unknown config key {full!r}: {section.what} has no {key!r}; "
                       f"valid keys: {', '.join(sorted(section.keys))}")


def validate(node: Mapping, section: Section, path: str = "") -> None:
    """Raises ConfigError on the first key (depth first) that ``section`` (recursively) does not accept."""
    if section.entries is not None:
        for name, value in node.items():
            if value is not None and not is_section(value):
                raise ConfigError(f"config key {path}.{name} must be a section (a mapping), got {value!r}")
            validate(value or {}, section.entries(name, value or {}), f"{path}.{name}")
        return
    for key, value in node.items():
        if not section.open and key not in section.keys:
            raise unknown_key_error(path, section, key)
        child = section.children(key, value)
        if child is not None and is_section(value):
            validate(value, child, f"{path}.{key}" if path else key)
