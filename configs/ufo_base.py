"""UFO at the paper's size: a ViT-B/16-shaped shared encoder (12 layers, width 768, 12 heads, MLP 3072)
with a BERT-base vocabulary (30,522 word pieces, 512 positions) and an untied MLM head; with an
ImageNet-1k classifier (``--config.model.num_classes=1000``) 134,466,850 parameters, with the
56-class head of the built-in data 133,740,914.

Data: ImageNet (TFDS ``imagenet2012``) for the image task and a text corpus for MLM, each with a KD
teacher (a ViT-B/16 and a BERT-base trained or converted by vlfm: ``configs/vit_b16.py``,
``configs/bert_base.py`` or ``python -m vlfm.convert import``). Until the TFDS/text sources land,
the tasks read the built-in shapes data at 224 px (56 classes, matching ``configs/vit_b16.py``'s
teacher head) so the config runs end to end.

Command (accelerators):
    python -m vlfm.train --config configs/ufo_base.py --workdir workdirs/ufo_base \\
        --config.teachers.vit.params=workdirs/vit_b16/params --config.teachers.bert.params=workdirs/bert_base/params
Expected runtime: not measured (needs accelerators); use ``--dry_run`` for memory.
"""

import ml_collections

from vlfm.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 100_000
    c.model = ml_collections.ConfigDict(dict(
        name="ufo", width=768, depth=12, num_heads=12, mlp_dim=3072, image_size=224, patch_size=16, num_classes=56,
        vocab_size=30522, max_len=512, ln_eps=1e-6, dtype="bfloat16", attention="auto", remat="dots_no_batch"))
    images = dict(name="shapes", num_examples=10_000, image_size=224, view="image_label", batch_size=1024)
    text = dict(name="shapes", num_examples=50_000, view="text", max_len=128, mlm_prob=0.15, batch_size=1024)
    c.tasks = ml_collections.ConfigDict(dict(
        image=dict(data=images, teachers=("vit",), losses=dict(
            softmax_xent=dict(weight=0.5), kd_image=dict(fn="kd_logits", teacher="vit", temperature=2.0, weight=0.5))),
        text=dict(data=text, teachers=("bert",), losses=dict(
            masked_xent=dict(weight=0.5),
            kd_text=dict(fn="kd_logits", teacher="bert", student_key="mlm_logits", mask_key="mlm_targets",
                         temperature=2.0, weight=0.5))),
    ))
    c.teachers = ml_collections.ConfigDict(dict(
        vit=dict(config="configs/vit_b16.py", params="workdirs/vit_b16/params"),
        bert=dict(config="configs/bert_base.py", params="workdirs/bert_base/params")))
    c.schedule = "accumulate"
    c.gradient_combiner = ml_collections.ConfigDict(dict(
        name="gradient_masking", first="text", second="image", shared=(r"encoder/.*", r"ln_final/.*"),
        strategy="random", ratio=0.5, refresh_every=0, seed=0))
    c.optimizer = ml_collections.ConfigDict(dict(name="adamw", lr=dict(name="cosine", peak=1e-3, warmup_steps=10_000),
                                                 weight_decay=0.05, clip_norm=1.0))
    c.log_every = 100
    c.checkpoint_every = 2000
    return c
