"""CPU train-step time of a CLIP: vlfm's step (scanned vs unrolled layers, each attention kernel)
against a peer implementation of the same shapes, runs interleaved; prints JSON.

    python benchmarks/cpu_step.py [--shapes tiny,clip13m] [--rounds 5] [--steps 3]
        [--variants scan/xla,unrolled/xla,...] [--big_vision_dir DIR]

Shapes (float32, one process, AdamW with global-norm clipping 1.0 on both sides):

- ``tiny``: ``configs/clip_tiny.py`` (ViT 32 px / 4, width 64, 3 layers; text 24 tokens, width 64,
  2 layers; 271,425 parameters), batch 128;
- ``clip13m``: ViT-256 at 112 px / 16 (50 tokens), 8 layers, MLP 1024; text 32 tokens, vocabulary
  8,192, width 256, 6 layers; embedding 256 (about 13.5M parameters), batch 64.

vlfm variants are ``{scan|unrolled}/{attention}[/{remat}]``: ``attention`` is a tower's ``attention``
field (``vlfm.models.attention.ATTENTION_IMPLEMENTATIONS``: ``xla`` vlfm's own einsum kernel, the
default; ``jax_xla`` ``jax.nn.dot_product_attention``'s XLA path; ``recompute`` the ``xla`` kernel with its
probabilities recomputed in the backward pass), ``remat`` the towers' checkpoint policy (``none`` or a name of
``vlfm.models.stack.REMAT_POLICIES``; left out: the towers' default ``auto``, which is
``dots_no_batch`` for scanned layers on CPU, ``none`` unrolled). The step is the
trainer's own (``vlfm.train.step.make_train_step``, the config's optimizer), on random batches.

The peer is big_vision's ``proj.image_text.two_towers`` (ViT + text transformer, its defaults:
unscanned, flax ``MultiHeadDotProductAttention``, tanh GELU, no text mask) when ``--big_vision_dir``
points at a big_vision checkout; its ``big_vision.utils`` imports ``tensorflow.io.gfile`` at module
level, which the model never calls, so when TensorFlow is absent an empty stand-in module is put in
its place (said in the output). Without ``--big_vision_dir`` the peer is ``reference``: a plain-flax
CLIP written here in big_vision's style (unscanned, flax attention, tanh GELU, no mask) with the
same token counts, widths and depths (271,297 parameters at ``tiny``, 128 fewer than vlfm's and big_vision's
271,425). Both use ``optax.adamw`` after clipping, with vlfm's
hyper-parameters, and a softmax contrastive loss.

Each round runs ``--steps`` steps of every variant (the order rotates each round), so a
contended machine slows all of them alike; ``step_ms`` is the median over all rounds, ``ratio``
that over the peer's. ``temp_mib`` is XLA's temporary buffer size of the compiled step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import synthetic_batch  # noqa: E402  (the sibling benchmark's random batches)

from vlfm.core.sharding import make_mesh, rules_from_config, to_global_batch
from vlfm.core.tree import count_params
from vlfm.models import build_model
from vlfm.optim import build_optimizer
from vlfm.optim.combine import build_combiner
from vlfm.train.config import load_config
from vlfm.train.state import TaskInit, init_batch, sharded_init, state_initializer
from vlfm.train.step import make_train_step
from vlfm.train.tasks import build_tasks

CLIP_TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "clip_tiny.py")

# name -> (config overrides on configs/clip_tiny.py, tower shapes shared with the peer)
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(batch=128, overrides=[], image=dict(size=32, patch=4, width=64, depth=3, heads=4, mlp=256),
                 text=dict(len=24, vocab=64, width=64, depth=2, heads=4, mlp=256), embed=64),
    "clip13m": dict(
        batch=64,
        overrides=["model.image.image_size=112", "model.image.patch_size=16", "model.image.width=256",
                   "model.image.depth=8", "model.image.num_heads=4", "model.image.mlp_dim=1024",
                   "model.text.vocab_size=8192", "model.text.max_len=32", "model.text.width=256",
                   "model.text.depth=6", "model.text.num_heads=4", "model.text.mlp_dim=1024",
                   "model.embed_dim=256", "data.image_size=112", "data.max_len=32"],
        image=dict(size=112, patch=16, width=256, depth=8, heads=4, mlp=1024),
        text=dict(len=32, vocab=8192, width=256, depth=6, heads=4, mlp=1024), embed=256),
}
DEFAULT_VARIANTS = ("scan/xla", "unrolled/xla", "scan/jax_xla", "unrolled/jax_xla", "scan/recompute",
                    "scan/xla/none", "scan/jax_xla/none", "scan/recompute/none")


def _temp_mib(compiled: Any) -> float | None:
    try:
        return round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 2)
    except (AttributeError, NotImplementedError, TypeError):
        return None


class Runner:
    """A compiled step and its state: ``run()`` does one step to completion."""

    def __init__(self, name: str, step: Callable, state: Any, batch: Any, params: int, compile_s: float,
                 temp_mib: float | None):
        self.name, self.step, self.state, self.batch = name, step, state, batch
        self.params, self.compile_s, self.temp_mib = params, compile_s, temp_mib
        self.times: list[float] = []

    def run(self) -> float:
        start = time.perf_counter()
        self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready(metrics)
        return time.perf_counter() - start


def vlfm_runner(shape: str, variant: str) -> Runner:
    """vlfm's trainer step on ``configs/clip_tiny.py`` with the shape's and the variant's overrides."""
    parts = variant.split("/")
    if len(parts) not in (2, 3) or parts[0] not in ("scan", "unrolled"):
        raise ValueError(f"variant {variant!r}: expected {{scan|unrolled}}/{{attention}}[/{{remat}}]")
    scan, attention = parts[0] == "scan", parts[1]
    spec = SHAPES[shape]
    overrides = list(spec["overrides"]) + ["data.num_examples=4"]
    for tower in ("image", "text"):
        overrides += [f"model.{tower}.scan={scan}", f"model.{tower}.attention={attention}"]
        if len(parts) == 3:
            overrides.append(f"model.{tower}.remat={parts[2]}")
    config = load_config(CLIP_TINY, overrides)
    task = build_tasks(config)[0]
    example = task.example()
    mesh = make_mesh(config.mesh.shape)
    rules = rules_from_config(config.mesh.get("rules", ()))
    model = build_model(config.model)
    base_tx, schedule = build_optimizer(config.optimizer, config.total_steps)
    tx = optax.chain(build_combiner(config.get("gradient_combiner"), {task.name: task.weight}), base_tx)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        init = state_initializer(model, tx, ema=config.ema_decay is not None,
                                 tasks=[TaskInit(task.name, init_batch(example, 1), task.forward)])
        state, shardings, _ = sharded_init(init, jax.random.key(0), mesh, rules)
        step_fn = make_train_step(model, [task], tx, schedule, seed=0, prefix_metrics=False)
        jitted = jax.jit(step_fn, in_shardings=(shardings, None, None), out_shardings=(shardings, None),
                         donate_argnums=0)
        batch = {task.name: to_global_batch(synthetic_batch(example, spec["batch"]), mesh)}
        start = time.perf_counter()
        compiled = jitted.lower(state, batch, {}).compile()
        compile_s = time.perf_counter() - start
    params = count_params(state["params"])

    def step(state, batch):
        with jax.set_mesh(mesh):
            return compiled(state, batch, {})

    return Runner(f"vlfm:{variant}", step, state, batch, params, compile_s, _temp_mib(compiled))


# ----------------------------------------------------------------------------------------------
# Peers: big_vision's two towers, or a plain-flax reference in its style.


class _RefBlock(nn.Module):
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, kernel_init=nn.initializers.xavier_uniform())(
            y, y)
        y = nn.LayerNorm()(x)
        y = nn.Dense(self.mlp)(y)
        y = nn.gelu(y)  # flax's default: the tanh approximation (as big_vision)
        return x + nn.Dense(x.shape[-1])(y)


class _RefTower(nn.Module):
    width: int
    depth: int
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x):
        for i in range(self.depth):
            x = _RefBlock(self.heads, self.mlp, name=f"block{i}")(x)
        return nn.LayerNorm(name="ln_final")(x)


class ReferenceClip(nn.Module):
    """A plain-flax CLIP in big_vision's style: unscanned, flax attention, tanh GELU, no text mask."""

    spec: dict

    @nn.compact
    def __call__(self, image, text):
        im, tx = self.spec["image"], self.spec["text"]
        x = nn.Conv(im["width"], (im["patch"],) * 2, strides=(im["patch"],) * 2, use_bias=False, name="patch")(image)
        x = x.reshape(x.shape[0], -1, im["width"])
        cls = self.param("cls", nn.initializers.zeros, (1, 1, im["width"]))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, im["width"])), x], axis=1)
        x = x + self.param("pos_img", nn.initializers.normal(0.02), (1, x.shape[1], im["width"]))
        x = _RefTower(im["width"], im["depth"], im["heads"], im["mlp"], name="img")(x)
        zimg = nn.Dense(self.spec["embed"], use_bias=False, name="img_head")(x[:, 0])
        t = nn.Embed(tx["vocab"], tx["width"], name="embed")(text)
        t = t + self.param("pos_txt", nn.initializers.normal(0.01), (1, t.shape[1], tx["width"]))
        t = _RefTower(tx["width"], tx["depth"], tx["heads"], tx["mlp"], name="txt")(t)
        ztxt = nn.Dense(self.spec["embed"], use_bias=False, name="txt_head")(t[:, -1])
        scale = self.param("t", nn.initializers.constant(np.log(10.0)), (1,))
        return zimg, ztxt, jnp.exp(scale)


def _import_big_vision(path: str) -> tuple[Any, bool]:
    """big_vision's two_towers module; a stand-in for ``tensorflow.io.gfile`` when TensorFlow is absent."""
    import importlib
    import importlib.util

    import flax.jax_utils  # noqa: F401  (flax looks for tensorflow itself: import its modules first)
    import flax.training.checkpoints  # noqa: F401

    stubbed = importlib.util.find_spec("tensorflow") is None
    if stubbed:
        tf, tf_io, gfile = (types.ModuleType(n) for n in ("tensorflow", "tensorflow.io", "tensorflow.io.gfile"))
        tf.io, tf_io.gfile = tf_io, gfile
        sys.modules.update({"tensorflow": tf, "tensorflow.io": tf_io, "tensorflow.io.gfile": gfile})
    sys.path.insert(0, os.path.abspath(path))
    try:
        return importlib.import_module("big_vision.models.proj.image_text.two_towers"), stubbed
    finally:
        if stubbed:  # out of sys.modules again: einops takes any imported "tensorflow" for the real one
            for name in ("tensorflow", "tensorflow.io", "tensorflow.io.gfile"):
                sys.modules.pop(name, None)


def peer_runner(shape: str, big_vision_dir: str | None, vlfm_optimizer: Any) -> tuple[Runner, dict]:
    spec = SHAPES[shape]
    im, tx = spec["image"], spec["text"]
    note: dict[str, Any] = {}
    if big_vision_dir:
        two_towers, stubbed = _import_big_vision(big_vision_dir)
        model = two_towers.Model(
            out_dim=spec["embed"], temperature_init=10.0,
            image=dict(variant=None, patch_size=(im["patch"],) * 2, width=im["width"], depth=im["depth"],
                       mlp_dim=im["mlp"], num_heads=im["heads"], pool_type="tok", posemb="learn"),
            text=dict(vocab_size=tx["vocab"], width=tx["width"], depth=tx["depth"], mlp_dim=tx["mlp"],
                      num_heads=tx["heads"], pool_type="last"))
        name = "big_vision:two_towers"
        note = {"peer": "big_vision two_towers (vit + text_transformer, defaults: unscanned)",
                "tensorflow_stubbed": stubbed}

        def forward(params, image, text):
            zimg, ztxt, out = model.apply({"params": params}, image, text, train=True)
            return zimg, ztxt, out["t"]
    else:
        model = ReferenceClip(spec)
        name = "reference:plain_flax"
        note = {"peer": "reference: plain-flax CLIP in big_vision's style, written in this benchmark"}

        def forward(params, image, text):
            return model.apply({"params": params}, image, text)

    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.normal(size=(spec["batch"], im["size"], im["size"], 3)).astype(np.float32))
    text = jnp.asarray(rng.integers(4, tx["vocab"], size=(spec["batch"], tx["len"])).astype(np.int32))
    params = model.init(jax.random.key(0), image[:1], text[:1])["params"]
    opt = vlfm_optimizer
    schedule = optax.warmup_cosine_decay_schedule(0.0, opt.lr.peak, opt.lr.warmup_steps, 1000)
    tx_ = optax.chain(optax.clip_by_global_norm(opt.clip_norm), optax.adamw(schedule, weight_decay=opt.weight_decay))

    def loss_fn(p, image, text):
        zimg, ztxt, t = forward(p, image, text)
        zimg = zimg / jnp.linalg.norm(zimg, axis=-1, keepdims=True)
        ztxt = ztxt / jnp.linalg.norm(ztxt, axis=-1, keepdims=True)
        logits = t.reshape(()) * zimg @ ztxt.T
        labels = jnp.arange(logits.shape[0])
        return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                      + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())

    def step_fn(state, batch):
        p, o = state
        loss, grads = jax.value_and_grad(loss_fn)(p, *batch)
        updates, o = tx_.update(grads, o, p)
        return (optax.apply_updates(p, updates), o), {"loss": loss}

    state = (params, tx_.init(params))
    start = time.perf_counter()
    compiled = jax.jit(step_fn, donate_argnums=0).lower(state, (image, text)).compile()
    compile_s = time.perf_counter() - start
    return Runner(name, compiled, state, (image, text), count_params(params), compile_s, _temp_mib(compiled)), note


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="tiny,clip13m")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each variant per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each variant after compiling")
    parser.add_argument("--big_vision_dir", default=None, help="a big_vision checkout (the peer); default: reference")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
                              "device": jax.devices()[0].device_kind, "cpus": os.cpu_count(),
                              "rounds": args.rounds, "steps_per_round": args.steps, "shapes": {}}
    optimizer = load_config(CLIP_TINY, []).optimizer
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            parser.error(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")
        peer, note = peer_runner(shape, args.big_vision_dir, optimizer)
        runners = [peer] + [vlfm_runner(shape, v) for v in args.variants.split(",") if v]
        for r in runners:
            for _ in range(args.warmup):
                r.run()
        for round_ in range(args.rounds):
            k = round_ % len(runners)
            for r in runners[k:] + runners[:k]:
                r.times += [r.run() for _ in range(args.steps)]
        base = statistics.median(peer.times)
        rows = {}
        for r in runners:
            med = statistics.median(r.times)
            rows[r.name] = {"step_ms": round(1e3 * med, 2), "ratio": round(med / base, 3), "params": r.params,
                            "compile_s": round(r.compile_s, 2), "temp_mib": r.temp_mib}
        result["shapes"][shape] = {"batch": SHAPES[shape]["batch"], **note, "runs": rows}
        print(json.dumps({shape: result["shapes"][shape]}), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
