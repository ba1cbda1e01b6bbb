"""UFO on the built-in data: one shared encoder trained on unpaired images and text at once.

Two tasks run every step (schedule ``accumulate``): image classification of the 56 colour-shape
classes, and masked language modelling of the captions. Each has a hard-label loss and a
distillation loss from a separately trained teacher (``configs/vit_tiny.py``,
``configs/bert_tiny.py``); their gradients meet in UFO's gradient masking over the shared encoder.

Commands (teachers first; each about a minute on 2 CPU cores):
    python -m vlfm.train --config configs/vit_tiny.py --workdir workdirs/vit_tiny
    python -m vlfm.train --config configs/bert_tiny.py --workdir workdirs/bert_tiny
    python -m vlfm.train --config configs/ufo_tiny.py --workdir workdirs/ufo_tiny
Ablations: ``--config configs/ufo_tiny.py:no_mask`` (gradients summed), ``:no_kd`` (no teachers),
``:no_mask,no_kd``. Teacher exports elsewhere: ``--config.teachers.vit.params=DIR``.

Expected result: see the README's UFO section (measured image accuracy and MLM accuracy against chance
and the unigram baseline, for the full recipe and each ablation).
"""

import ml_collections

from vlfm.train.config import base_config

IMAGES = dict(name="shapes", num_examples=20_000, image_size=32, max_objects=1, view="image_label", batch_size=64)
TEXT = dict(name="shapes", num_examples=20_000, view="text", max_len=24, mlm_prob=0.15, batch_size=64)
ABLATIONS = ("no_mask", "no_kd")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = {a for a in (arg or "").split(",") if a}
    if flags - set(ABLATIONS):
        raise ValueError(f"unknown ufo_tiny options {sorted(flags - set(ABLATIONS))}; valid: {', '.join(ABLATIONS)}")
    kd = "no_kd" not in flags
    c = base_config()
    c.total_steps = 600
    c.model = ml_collections.ConfigDict(dict(
        name="ufo", width=64, depth=4, num_heads=4, mlp_dim=256, image_size=32, patch_size=4, num_classes=56,
        vocab_size=57, max_len=24, ln_eps=1e-6))
    image_losses = dict(softmax_xent=dict(weight=0.5 if kd else 1.0))
    text_losses = dict(masked_xent=dict(weight=0.5 if kd else 1.0))
    if kd:
        image_losses["kd_image"] = dict(fn="kd_logits", teacher="vit", temperature=2.0, weight=0.5)
        text_losses["kd_text"] = dict(fn="kd_logits", teacher="bert", student_key="mlm_logits",
                                      mask_key="mlm_targets", temperature=2.0, weight=0.5)
        c.teachers = ml_collections.ConfigDict(dict(
            vit=dict(config="configs/vit_tiny.py", params="workdirs/vit_tiny/params"),
            bert=dict(config="configs/bert_tiny.py", params="workdirs/bert_tiny/params")))
    c.tasks = ml_collections.ConfigDict(dict(
        image=dict(data=IMAGES, losses=image_losses, teachers=("vit",) if kd else ()),
        text=dict(data=TEXT, losses=text_losses, teachers=("bert",) if kd else ()),
    ))
    c.schedule = "accumulate"
    if "no_mask" in flags:
        c.gradient_combiner = ml_collections.ConfigDict(dict(name="sum"))
    else:
        c.gradient_combiner = ml_collections.ConfigDict(dict(
            name="gradient_masking", first="text", second="image", shared=(r"encoder/.*", r"ln_final/.*"),
            strategy="random", ratio=0.5, refresh_every=0, seed=0))
    c.optimizer.lr = dict(name="cosine", peak=2e-3, warmup_steps=60)
    c.optimizer.weight_decay = 0.05
    c.evals = ml_collections.ConfigDict(dict(
        image=dict(type="classification", data=IMAGES, every=300, split="validation", num_examples=500),
        text=dict(type="mlm_accuracy", data=TEXT, every=300, split="validation", num_examples=500),
    ))
    c.log_every = 50
    c.checkpoint_every = 300
    return c
