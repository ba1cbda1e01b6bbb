"""DiDE on the built-in data: a dual-encoder student distilled from a ViLT teacher on visual
entailment (``shapes_snli_ve``: entailment / neutral / contradiction of a hypothesis about an image).

The student encodes image and hypothesis apart (a ViT and a bidirectional text transformer, each the
teacher's size: width 64, 4 layers, 4 heads, so its 17 image and 16 text tokens match the teacher's)
and classifies through the interaction head ``[u; v; |u-v|; u*v] -> MLP`` on the pooled vectors.
Losses: cross-entropy on the labels, soft-label distillation of the teacher's logits (``kd_logits``,
tau 1) and cross-modal attention distillation (``kd_cross_attention``): the student's last-layer
image-to-text and text-to-image attention, formed from its two towers' queries and keys, against the
teacher's last-layer scores cut into those blocks and re-normalised over the other modality.

Commands (teacher first: ``configs/vilt_tiny_snli_ve.py``):
    python -m vlfm.train --config configs/vilt_tiny_snli_ve.py --workdir workdirs/vilt_tiny_snli_ve
    python -m vlfm.train --config configs/dide_tiny.py --workdir workdirs/dide_tiny
Ablation, the same student and steps without the teacher (cross-entropy only):
    python -m vlfm.train --config configs/dide_tiny.py:no_kd --workdir workdirs/dide_tiny_no_kd
Options (comma-separated): ``no_kd``, ``no_attention`` (soft labels only), ``no_labels`` (attention only).
Another teacher run: ``--config.teachers.vilt.params=DIR/params``.

Measured (2026-12-06, 2 CPU cores shared with other jobs; 462,532 parameters, 1,000 steps at batch 64,
500 held-out examples, chance 1/3):

- teacher fine-tuned from a ``vilt_tiny`` run (``configs/vilt_tiny.py --config.total_steps=500``, then
  ``configs/vilt_tiny_snli_ve.py --config.total_steps=500 --config.init_from.params=<it>/params``):
  teacher 0.764; distilled student 0.776 (0.778 at step 500); the same student without the teacher
  (``:no_kd``) 0.674, and with soft labels alone (``:no_attention``) also 0.674: the gain comes with
  the attention distillation. Attention KL(teacher || student) from 0.290 (image to text) / 0.156 (text to
  image) at step 50 to 0.071 / 0.054 at step 1,000; the student agrees with the teacher's class on
  0.97 of the training batch.
- teacher trained from scratch by the command above (0.674, the plateau a from-scratch ViLT reaches):
  the distilled student also 0.674; this teacher has nothing beyond the plateau to pass on.

Retrieval over the 500 held-out examples: ``benchmarks/dide_retrieval_time.py`` (the student 250-600x
faster than the teacher's one fused pass per pair).
"""

import os

import ml_collections

from vlfm.train.config import base_config, load_config_file

OPTIONS = ("no_kd", "no_attention", "no_labels")
DATA = dict(name="shapes_snli_ve", num_examples=20_000, image_size=32, max_len=16, batch_size=64, num_workers=0,
            train_split="train")
TOWER = dict(width=64, depth=4, num_heads=4, mlp_dim=256, ln_eps=1e-6)


def teacher_model() -> dict:
    """``configs/vilt_tiny_snli_ve.py``'s model, sowing its last layer's attention scores."""
    here = os.path.dirname(__file__)
    model = load_config_file(os.path.join(here, "vilt_tiny_snli_ve.py")).model.to_dict()
    return dict(model, attention_layers=(model["depth"] - 1,), attention_outputs=("logits",))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = {a for a in (arg or "").split(",") if a}
    if flags - set(OPTIONS):
        raise ValueError(f"unknown dide_tiny options {sorted(flags - set(OPTIONS))}; valid: {', '.join(OPTIONS)}")
    kd = "no_kd" not in flags
    c = base_config()
    c.total_steps = 1000
    c.model = ml_collections.ConfigDict(dict(
        name="dide", num_classes=3, embed_dim=64, distill_attention=kd and "no_attention" not in flags,
        image=dict(name="vit", image_size=32, patch_size=8, **TOWER),
        text=dict(name="text_transformer", vocab_size=96, max_len=16, causal=False, pool="first", **TOWER),
    ))
    losses = dict(softmax_xent=dict(weight=1.0))
    if kd and "no_labels" not in flags:
        losses["kd_logits"] = dict(teacher="vilt", temperature=1.0, weight=1.0)
    if kd and "no_attention" not in flags:
        losses["kd_cross_attention"] = dict(teacher="vilt", weight=1.0)
    task = dict(data=DATA, losses=losses)
    if kd:
        # Each its own tuple (built at run time): one object in two places would print as a YAML alias.
        task.update(teachers=("vilt",), forward=dict(mutable=tuple(["attention"])))
        c.teachers = ml_collections.ConfigDict(dict(vilt=dict(
            model=teacher_model(), params="workdirs/vilt_tiny_snli_ve/params", forward=dict(mutable=tuple(["attention"])))))
    c.tasks = ml_collections.ConfigDict(dict(ve=task))
    c.optimizer.lr = dict(name="cosine", peak=2e-3, warmup_steps=100)
    c.optimizer.weight_decay = 0.01
    c.evals = ml_collections.ConfigDict(dict(
        accuracy=dict(type="classification", data=DATA, every=500, split="validation", num_examples=500)))
    c.log_every = 50
    c.checkpoint_every = 500
    return c
