"""Fine-tuning a tiny FLAVA for visual entailment (``shapes_snli_ve``: entailment / neutral /
contradiction of a hypothesis about an image).

Command:
    python -m vlfm.train --config configs/flava_tiny.py --workdir workdirs/flava_tiny
    python -m vlfm.train --config configs/flava_tiny_snli_ve.py --workdir workdirs/flava_tiny_snli_ve \\
        --config.init_from.params=workdirs/flava_tiny/params

Head: a 3-way classifier (dense 2x width, LayerNorm, GELU, dense) on the multimodal encoder's pooled
[CLS_M] of the unmasked pair. Metric: accuracy on 500 held-out examples (chance 1/3). From scratch
without ``init_from``.

Measured (2-core CPU, shared; entry in ``benchmarks/RESULTS.md``), 500 of the 1,000 steps, 358,660
parameters, from the 1,500-step ``flava_tiny`` run (the first command) and from scratch:
    python -m vlfm.train --config configs/flava_tiny_snli_ve.py --workdir workdirs/flava_tiny_snli_ve \\
        --config.total_steps=500 --config.checkpoint_every=500 --config.init_from.params=workdirs/flava_tiny/params
    python -m vlfm.train --config configs/flava_tiny_snli_ve.py --workdir workdirs/flava_tiny_snli_ve_scratch \\
        --config.total_steps=500 --config.checkpoint_every=500
Accuracy 0.674 both ways: the plateau a from-scratch ViLT also reaches on this task (``configs/dide_tiny.py``);
the pretrained flava_tiny, whose ITM had not learned, passes nothing on here.
"""

import os

import ml_collections

from vlfm.train.config import load_config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = load_config_file(os.path.join(os.path.dirname(__file__), "flava_tiny.py"))
    c.total_steps = 1000
    c.model.update(dict(mim=False, mlm=False, mmm=False, itm=False, num_classes=3))
    c.tasks = ml_collections.ConfigDict()
    c.losses = ml_collections.ConfigDict(dict(softmax_xent=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes_snli_ve", num_examples=20_000, image_size=32, max_len=16,
                                            batch_size=64, num_workers=0, train_split="train"))
    c.optimizer.lr = dict(name="cosine", peak=1e-3, warmup_steps=100)
    c.evals = ml_collections.ConfigDict(dict(
        accuracy=dict(type="classification", every=500, split="validation", num_examples=500)))
    c.checkpoint_every = 1000
    return c
