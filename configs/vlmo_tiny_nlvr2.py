"""Fine-tuning a tiny VLMo for NLVR2-style reasoning over two images (``shapes_nlvr2``), in fused mode.

Command:
    python -m vlfm.train --config configs/vlmo_tiny.py --workdir workdirs/vlmo_tiny
    python -m vlfm.train --config configs/vlmo_tiny_nlvr2.py --workdir workdirs/vlmo_tiny_nlvr2 \\
        --config.init_from.params=workdirs/vlmo_tiny/params

A statement about a pair of images is true or false (half each). As VLMo (and ViLT) do, the statement
is fused with each image separately on the one MoME transformer, the second image with a third
modality type (``num_types=3``; its row grows from the pretrained image row, ``init_from.grow_rows``),
and the two pooled vectors are concatenated and classified (dense, LayerNorm, GELU, dense).
``init_from`` loads ``configs/vlmo_tiny.py``'s backbone; its pretraining heads are left out. Metric:
accuracy on 500 held-out pairs (chance 0.5).

Measured (2-core CPU, shared; entry in ``benchmarks/RESULTS.md``), from the 1,500-step ``vlmo_tiny`` run
(commands in ``configs/vlmo_tiny_vqa.py``'s docstring):
    python -m vlfm.train --config configs/vlmo_tiny_nlvr2.py --workdir workdirs/vlmo_tiny_nlvr2 \\
        --config.model.image_abs_pos=True --config.init_from.checkpoint=workdirs/vlmo_tiny_1500/checkpoints
    python -m vlfm.train --config configs/vlmo_tiny_nlvr2.py --workdir workdirs/vlmo_tiny_nlvr2_scratch \\
        --config.model.image_abs_pos=True
Accuracy at steps 500 / 1,000: pretrained 0.774 / 0.784, from scratch 0.516 / 0.522 (chance 0.5): the
pair task needs what pretraining taught the backbone.
"""

import os

import ml_collections

from vlfm.train.config import load_config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = load_config_file(os.path.join(os.path.dirname(__file__), "vlmo_tiny.py"))
    c.total_steps = 1000
    c.model.update(dict(mlm=False, itm="none", contrastive_dim=0, vl_contrastive=False, num_types=3,
                        pair_classes=2))
    c.init_from.grow_rows = (r"modality_embed/.*",)  # 2 pretrained type rows -> 3
    c.losses = ml_collections.ConfigDict(dict(softmax_xent=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes_nlvr2", num_examples=20_000, image_size=32, max_len=16,
                                            batch_size=64, num_workers=0, train_split="train"))
    c.optimizer.lr = dict(name="cosine", peak=5e-4, warmup_steps=100)
    c.evals = ml_collections.ConfigDict(dict(
        accuracy=dict(type="classification", every=500, split="validation", num_examples=500)))
    return c
