"""ViT-B/16 image classifier (HF ``ViTModel`` sizes plus a classifier head).

Backbone: 86,389,248 parameters including the tanh pooler, equal to HF ``ViTModel`` (vit-base-patch16-224);
the classifier over the 56 colour-shape classes of the built-in data adds 43,064.

Command:
    python -m vlfm.train --config configs/vit_b16.py --workdir workdirs/vit_b16

Expected: on the built-in data (upsampled to 224 px) held-out accuracy far above chance (1/56) within
1,000 steps on one GPU. Runtime on CPU is impractical; use ``configs/vit_b16.py`` on an accelerator.
"""

import ml_collections

from vlfm.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 2000
    c.model = ml_collections.ConfigDict(dict(
        name="image_classifier",
        image=dict(name="vit", image_size=224, patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072,
                   pooler="dense_tanh", ln_eps=1e-12, num_classes=56, dtype="bfloat16", attention="auto"),
    ))
    c.losses = ml_collections.ConfigDict(dict(softmax_xent=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes", num_examples=10_000, image_size=224, view="image_label",
                                            batch_size=256, num_workers=0, train_split="train"))
    c.optimizer.update(dict(name="adamw", lr=dict(name="cosine", peak=1e-3, warmup_steps=200),
                        weight_decay=0.05, clip_norm=1.0))
    c.evals = ml_collections.ConfigDict(dict(
        accuracy=dict(type="classification", every=500, split="validation", num_examples=1000)))
    return c
