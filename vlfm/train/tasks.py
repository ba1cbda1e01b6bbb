"""Tasks and task schedules: several objectives and data streams trained into one model.

A task bundles a data stream, its losses (with weights), the teachers its losses read, a learning-
rate multiplier, the parameters it freezes and its ``forward`` (how the model is called for it:
method, random streams, mutable collections, constants; ``vlfm.train.forward``). The schedule
decides which tasks run at each step:

- ``round_robin``: task ``step % n`` (FLAVA-style alternation);
- ``uniform``: a seeded uniform draw per step;
- ``weighted``: PolyViT's rule: each task appears ``steps`` times (its single-task budget) in one
  seeded permutation, walked step by step, so the proportions are exact;
- ``accumulate``: every task every step; their gradients go to the optimizer's combiner (summed, or
  UFO gradient masking) as one update;
- ``stages``: task by task, each for its ``steps`` (VLMo's image -> text -> image-text stages),
  each stage with its own freezing. Consecutive tasks with the same ``stage`` name form one stage of
  their summed steps, inside which they alternate by the ``weighted`` rule (OmniVL's image stage, then
  image and video tasks jointly); after the last stage its tasks go on alternating. Tasks are in
  ``config.task_order`` where it is set, else sorted by name (``task_names``).

Schedules are pure functions of the step, so a resumed run picks the same tasks as an uninterrupted
one without any saved schedule state. Task data iterators are saved together (``TaskIterators``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from vlfm.core.flops import TRAIN_FACTOR, traced_flops
from vlfm.data.pipeline import DatasetBundle, build_dataset, train_iterator
from vlfm.losses import combined_loss
from vlfm.models.flops import flops_per_example as analytic_flops_per_example
from vlfm.train.forward import Forward, parse_forward
from vlfm.train.momentum import Momentum
from vlfm.train.schema import TASK_KEYS
from vlfm.train.teachers import Teacher, teacher_outputs

SCHEDULES = ("round_robin", "uniform", "weighted", "accumulate", "stages")
FLOP_METHODS = ("traced", "analytic")  # config.flops


@dataclasses.dataclass
class Task:
    name: str
    bundle: DatasetBundle
    batch_size: int
    loss_fn: Callable
    weight: float = 1.0
    lr_multiplier: float = 1.0
    freeze: tuple[str, ...] = ()
    teachers: tuple[str, ...] = ()
    steps: int = 0
    stage: str = ""  # the ``stages`` schedule: consecutive tasks of one stage name alternate within it
    data_cfg: dict = dataclasses.field(default_factory=dict)
    forward: Forward = dataclasses.field(default_factory=Forward)

    @property
    def normalization(self) -> dict:
        """The uint8 image keys of this task's batches and their statistics (``vlfm.data.normalization``)."""
        return dict(getattr(self.bundle, "normalization", None) or {})

    def normalizes_on_device(self, default: bool = True) -> bool:
        """Whether this task's images leave the host uint8 (its ``data.normalize_on_device``, else ``default``)."""
        return bool(self.data_cfg.get("normalize_on_device", default))

    def example(self, normalize: bool = True) -> dict:
        """One transformed example's numeric leaves as arrays, numpy scalars (labels) included as 0-d
        arrays: the keys and shapes a batch of this task carries (init, dry run and FLOP count); images
        as the model reads them (float32), or as the train iterator yields them (``normalize=False``:
        uint8, normalised in the step)."""
        example = self.bundle.example(normalize)  # first usable example (map and stream datasets alike)
        if not isinstance(example, dict):
            return example
        return {k: np.asarray(v) for k, v in example.items()
                if isinstance(v, (np.ndarray, np.generic)) and np.asarray(v).dtype.kind in "biuf"}

    def step_flops(self, model: nn.Module, model_cfg: Mapping[str, Any], params: Any, method: str = "traced",
                   teachers: Mapping[str, Teacher] | None = None, teacher_params: Mapping[str, Any] | None = None,
                   momentum: Momentum | None = None, momentum_state: Any = None) -> float:
        """Model FLOPs of one training step of this task (its batch, its inputs): what the log, the dry
        run and the benchmark report. ``method`` (``config.flops``): ``traced`` counts the matmuls of
        the traced forward pass and loss, x3 for training, plus its teachers' forward passes (x1);
        ``analytic`` uses the model family's formula (``vlfm.models.flops``). See ``vlfm.core.flops``. The
        momentum model's forward pass (``momentum``, ``vlfm.train.momentum``) counts like a teacher's."""
        example = self.example()
        if method == "analytic":
            per_example = analytic_flops_per_example(model_cfg, text_len=self.bundle.info.get("max_len"),
                                                     global_batch=self.batch_size, inputs=tuple(example))
            return TRAIN_FACTOR * self.batch_size * per_example
        if method != "traced":
            raise KeyError(f"unknown config.flops {method!r}; valid: {', '.join(FLOP_METHODS)}")
        batch = {k: jax.ShapeDtypeStruct((self.batch_size, *v.shape), v.dtype) for k, v in example.items()}
        use_momentum = momentum is not None and momentum.runs_for(self.name)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                (params, teacher_params or {}, momentum_state if use_momentum else {}))
        rng = jax.random.key(0)

        def student(p, b):
            return self.forward.apply(model, p, b, task=self.name, train=True, rng=rng)

        def frozen(tp, ms, b, student_out):
            outputs = teacher_outputs(teachers, self.teachers, tp, b, task=self.name) if self.teachers else {}
            if use_momentum:  # with from_student it scores what the student drew (vlfm.train.momentum)
                outputs.update(momentum.outputs(model, self.forward, self.name, ms["params"], ms, b,
                                                student=student_out))
            return outputs

        def loss(p, tp, ms, b):
            out = student(p, b)
            return self.loss_fn(dict(out, **frozen(tp, ms, b, out)), b)[0]

        total = traced_flops(loss, *abstract, batch)
        if not self.teachers and not use_momentum:
            return TRAIN_FACTOR * total
        student_out = jax.eval_shape(student, abstract[0], batch) if use_momentum and momentum.from_student else None
        forward_only = traced_flops(frozen, *abstract[1:], batch, student_out)
        return TRAIN_FACTOR * (total - forward_only) + forward_only


def task_names(config: ml_collections.ConfigDict) -> list[str]:
    """``config.tasks``' names in ``config.task_order`` (which must name each task once), else by name: a
    ConfigDict keeps its keys sorted, not in the order they were written, so the ``stages`` schedule needs
    the order said where the stages' names do not sort into it."""
    names = list(config.tasks.keys())
    order = [str(n) for n in (config.get("task_order") or ())]
    if not order:
        return names
    if sorted(order) != sorted(names):
        raise ValueError(f"config.task_order {order} must name every task exactly once; the tasks: "
                         f"{', '.join(names)}")
    return order


def build_tasks(config: ml_collections.ConfigDict) -> list[Task]:
    """``config.tasks`` (name -> task config), or one implicit task from ``config.data`` / ``config.losses``."""
    if not config.get("tasks"):
        data = dict(config.data)
        return [Task("main", build_dataset(data, data.get("train_split", "train")), int(data["batch_size"]),
                     combined_loss(config.losses), data_cfg=data)]
    tasks = []
    for name in task_names(config):
        cfg = dict(config.tasks[name])
        unknown = sorted(set(cfg) - set(TASK_KEYS))
        if unknown:
            raise KeyError(f"task {name!r} has unknown keys {unknown}; valid keys: {', '.join(TASK_KEYS)}")
        if "data" not in cfg or "losses" not in cfg:
            raise KeyError(f"task {name!r} needs 'data' and 'losses'")
        data = dict(cfg["data"])
        if "batch_size" not in data:
            raise KeyError(f"task {name!r}: data needs a batch_size")
        if "prefetch_to_device" in data:  # one input feed serves every task
            raise KeyError(f"task {name!r}: prefetch_to_device is a setting of the run, not of a task; set "
                           "config.data.prefetch_to_device")
        tasks.append(Task(
            name=name, bundle=build_dataset(data, data.get("train_split", "train")), batch_size=int(data["batch_size"]),
            loss_fn=combined_loss(cfg["losses"]), weight=float(cfg.get("weight", 1.0)),
            lr_multiplier=float(cfg.get("lr_multiplier", 1.0)), freeze=tuple(cfg.get("freeze", ())),
            teachers=tuple(cfg.get("teachers", ())), steps=int(cfg.get("steps", 0)), stage=str(cfg.get("stage", "")),
            data_cfg=data,
            forward=parse_forward(cfg.get("forward"), f"task {name!r}")))
    return tasks


class TaskSchedule:
    """Which task names run at each step; a pure function of (step, seed)."""

    def __init__(self, name: str, tasks: Sequence[Task], seed: int = 0):
        if name not in SCHEDULES:
            raise KeyError(f"unknown task schedule {name!r}; valid: {', '.join(SCHEDULES)}")
        self.name, self.names, self.seed = name, [t.name for t in tasks], seed
        budgets = [t.steps for t in tasks]
        if name in ("weighted", "stages") and len(tasks) > 1 and min(budgets) <= 0:
            raise ValueError(f"schedule {name!r} needs steps > 0 for every task; got {dict(zip(self.names, budgets))}")
        if name == "weighted":
            order = np.repeat(np.arange(len(tasks)), budgets)
            self._order = np.random.default_rng(seed).permutation(order)
        if name == "stages":
            self._stages = _stage_orders(tasks, seed)
            self._ends = np.cumsum([len(order) for order in self._stages])

    def tasks_at(self, step: int) -> tuple[str, ...]:
        n = len(self.names)
        if n == 1 or self.name == "accumulate":
            return tuple(self.names)
        if self.name == "round_robin":
            return (self.names[step % n],)
        if self.name == "uniform":
            return (self.names[int(np.random.default_rng([self.seed, step]).integers(n))],)
        if self.name == "weighted":
            return (self.names[int(self._order[step % len(self._order)])],)
        stage = min(int(np.searchsorted(self._ends, step, side="right")), len(self._stages) - 1)
        order = self._stages[stage]
        start = int(self._ends[stage - 1]) if stage else 0
        return (self.names[int(order[(step - start) % len(order)])],)

    def step_kinds(self) -> list[tuple[str, ...]]:
        """Every distinct set of tasks a step can run (one compiled step function each)."""
        if len(self.names) == 1 or self.name == "accumulate":
            return [tuple(self.names)]
        return [(n,) for n in self.names]


def _stage_orders(tasks: Sequence[Task], seed: int) -> list[np.ndarray]:
    """Per stage (consecutive tasks of one ``stage`` name; a task without one is a stage of its own), the
    task indices of its steps: each task ``steps`` times, in one seeded permutation (the ``weighted`` rule)."""
    groups: list[tuple[str, list[int]]] = []
    for i, task in enumerate(tasks):
        key = getattr(task, "stage", "") or f"task:{task.name}"
        if groups and groups[-1][0] == key:
            groups[-1][1].append(i)
        elif any(key == g for g, _ in groups):
            raise ValueError(f"schedule 'stages': the tasks of stage {task.stage!r} must be consecutive in "
                             f"config.tasks; task {task.name!r} follows another stage")
        else:
            groups.append((key, [i]))
    orders = []
    for number, (_, members) in enumerate(groups):
        order = np.repeat(np.asarray(members), [max(tasks[i].steps, 1) for i in members])
        orders.append(order if len(members) == 1 else np.random.default_rng([seed, number]).permutation(order))
    return orders


class TaskIterators:
    """The data iterators of all tasks, checkpointed as one item (a JSON dict of their states)."""

    def __init__(self, iterators: Mapping[str, Any]):
        self.iterators = dict(iterators)

    def next(self, name: str) -> Any:
        return next(self.iterators[name])

    def get_state(self) -> bytes:
        states = {}
        for name, it in self.iterators.items():
            state = it.get_state()
            states[name] = state.decode() if isinstance(state, bytes) else state
        return json.dumps(states).encode()

    def set_state(self, state: bytes) -> None:
        states = json.loads(state.decode() if isinstance(state, bytes) else state)
        missing = set(self.iterators) - set(states)
        if missing:
            raise ValueError(f"checkpoint has no data state for tasks {sorted(missing)}")
        for name, it in self.iterators.items():
            it.set_state(states[name])

    def start_prefetch(self) -> None:
        for it in self.iterators.values():
            if hasattr(it, "start_prefetch"):
                it.start_prefetch()


def build_iterators(tasks: Sequence[Task], seed: int, num_workers: int = 0,
                    normalize_on_device: bool = True) -> TaskIterators:
    """One seeded, host-sharded iterator per task (different seeds per task); a task's own
    ``data.num_workers`` wins over ``num_workers`` (the run's default). With ``normalize_on_device``
    images stay uint8 on the host and the train step normalises them (``vlfm.data.normalization``); a
    task's own ``data.normalize_on_device`` wins."""
    return TaskIterators({t.name: train_iterator(t.bundle, global_batch_size=t.batch_size, seed=seed + 1000 * i,
                                                 num_workers=int(t.data_cfg.get("num_workers", num_workers)),
                                                 normalize=not t.normalizes_on_device(normalize_on_device))
                          for i, t in enumerate(tasks)})
