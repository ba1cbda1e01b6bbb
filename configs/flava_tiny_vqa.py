"""Fine-tuning a tiny FLAVA for VQA on the built-in shapes questions (``shapes_vqa``).

Command:
    python -m vlfm.train --config configs/flava_tiny.py --workdir workdirs/flava_tiny
    python -m vlfm.train --config configs/flava_tiny_vqa.py --workdir workdirs/flava_tiny_vqa \\
        --config.init_from.params=workdirs/flava_tiny/params

The model is ``configs/flava_tiny.py``'s: the question and the image go through the text and image
encoders, then the multimodal encoder; the VQA head (dense 2x width, LayerNorm, GELU, dense over 28
answers) reads its pooled [CLS_M], trained with binary cross-entropy against the VQAv2-style soft
scores. ``init_from`` loads the pretrained encoders and projections; the pretraining heads (MIM, MLM,
MMM, ITM) are left out and the VQA head starts fresh. Without it the model trains from scratch.
Metric: VQA accuracy on 500 held-out questions (the commonest answer scores 0.18).

Measured on 2 shared CPU cores (load average 15-22), configs as at this commit, 361,885 parameters, 500
of the 1,000 steps, one seed each. From the 1,500-step flava_tiny run (its command is in
``configs/flava_tiny.py``; 80 tensors load, the VQA head starts fresh), 18.6 min wall:
    python -m vlfm.train --config configs/flava_tiny_vqa.py --workdir workdirs/flava_tiny_vqa \\
        --config.total_steps=500 --config.checkpoint_every=500 --config.init_from.params=workdirs/flava_tiny/params
VQA accuracy 0.509. From scratch, 14 min wall:
    python -m vlfm.train --config configs/flava_tiny_vqa.py --workdir workdirs/flava_tiny_vqa_scratch \\
        --config.total_steps=500 --config.checkpoint_every=500
VQA accuracy 0.434 (prior baseline 0.18). The 1,000-step runs were not made.
"""

import os

import ml_collections

from vlfm.train.config import load_config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = load_config_file(os.path.join(os.path.dirname(__file__), "flava_tiny.py"))
    c.total_steps = 1000
    c.model.update(dict(mim=False, mlm=False, mmm=False, itm=False, vqa_answers=28))
    c.tasks = ml_collections.ConfigDict()
    c.losses = ml_collections.ConfigDict(dict(vqa_bce=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes_vqa", num_examples=20_000, image_size=32, max_objects=2,
                                            max_len=16, batch_size=64, num_workers=0, train_split="train"))
    c.optimizer.lr = dict(name="cosine", peak=1e-3, warmup_steps=100)
    c.evals = ml_collections.ConfigDict(dict(
        vqa=dict(type="vqa", every=500, split="validation", num_examples=500)))
    c.checkpoint_every = 1000
    return c
