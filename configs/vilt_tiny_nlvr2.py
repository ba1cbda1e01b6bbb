"""Fine-tuning a tiny ViLT for NLVR2-style reasoning over two images (``shapes_nlvr2``).

Command:
    python -m vlfm.train --config configs/vilt_tiny_nlvr2.py --workdir workdirs/vilt_tiny_nlvr2

A statement about a pair of images ("the left image has a red star", "both images have a blue
object", "the two images show the same shape") is true or false (half each). As in ViLT, the text is
fused with each image separately (modality types 1 and 2), the two pooled vectors are concatenated
and classified (dense, LayerNorm, GELU, dense). Metric: accuracy on 500 held-out pairs (chance 0.5).
Fine-tunes a ``configs/vilt_tiny.py`` run with ``--config.init_from.params=workdirs/vilt_tiny/params``
(the modality-type embedding grows a third row, initialised from the image row, as in ViLT); from
scratch without it.

Expected result (2 CPU cores, about 3.5 minutes, 1,000 steps): accuracy 0.736 from a 1,500-step
``vilt_tiny`` run, 0.542 from scratch (chance 0.5): pretraining is what makes the two-image task learnable
at this size.
"""

import os

import ml_collections

from vlfm.train.config import load_config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = load_config_file(os.path.join(os.path.dirname(__file__), "vilt_tiny.py"))
    c.total_steps = 1000
    c.model.update(dict(mlm=False, itm="none", num_types=3, pair_classes=2, max_text_len=16))
    c.init_from.grow_rows = (r"modality_embed/.*",)  # 2 pretrained type rows -> 3
    c.losses = ml_collections.ConfigDict(dict(softmax_xent=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes_nlvr2", num_examples=20_000, image_size=32, max_len=16,
                                            batch_size=64, num_workers=0, train_split="train"))
    c.evals = ml_collections.ConfigDict(dict(
        accuracy=dict(type="classification", every=500, split="validation", num_examples=500)))
    return c
