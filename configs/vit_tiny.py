"""A tiny ViT classifier on the built-in image-label view (56 colour-shape classes); UFO's image teacher.

Command:
    python -m vlfm.train --config configs/vit_tiny.py --workdir workdirs/vit_tiny

Expected result (2 CPU cores): about 1 minute for 400 steps at batch 128; held-out accuracy well above
chance (1/56; one object per image, so the label is unambiguous). Its ``workdirs/vit_tiny/params`` export is the image teacher of ``configs/ufo_tiny.py``.
"""

import ml_collections

from vlfm.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 400
    c.model = ml_collections.ConfigDict(dict(
        name="image_classifier",
        image=dict(name="vit", image_size=32, patch_size=4, width=64, depth=3, num_heads=4, mlp_dim=256,
                   num_classes=56)))
    c.losses = ml_collections.ConfigDict(dict(softmax_xent=dict()))
    c.data = ml_collections.ConfigDict(dict(name="shapes", num_examples=20_000, image_size=32, max_objects=1,
                                            view="image_label",
                                            batch_size=128, num_workers=0, train_split="train"))
    c.optimizer.lr = dict(name="cosine", peak=2e-3, warmup_steps=50)
    c.optimizer.weight_decay = 0.05
    c.evals = ml_collections.ConfigDict(dict(
        accuracy=dict(type="classification", every=200, split="validation", num_examples=500)))
    c.log_every = 50
    c.checkpoint_every = 400
    return c
