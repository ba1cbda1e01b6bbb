"""Fine-tuning a tiny FLAVA for NLVR2-style reasoning over two images (``shapes_nlvr2``).

Command:
    python -m vlfm.train --config configs/flava_tiny.py --workdir workdirs/flava_tiny
    python -m vlfm.train --config configs/flava_tiny_nlvr2.py --workdir workdirs/flava_tiny_nlvr2 \\
        --config.init_from.params=workdirs/flava_tiny/params

A statement about a pair of images is true or false (half each). As the fusion models do it, the
statement is fused with each image separately by the multimodal encoder, the two pooled [CLS_M]
vectors are concatenated and classified (dense, LayerNorm, GELU, dense). FLAVA's multimodal encoder has
no modality-type embedding, so nothing grows: the pretrained encoders load as they are. Metric:
accuracy on 500 held-out pairs (chance 0.5). From scratch without ``init_from``.

Measured (2-core CPU, shared; entry in ``benchmarks/RESULTS.md``), 500 of the 1,000 steps, 366,723
parameters, from the 1,500-step ``flava_tiny`` run (the first command) and from scratch:
    python -m vlfm.train --config configs/flava_tiny_nlvr2.py --workdir workdirs/flava_tiny_nlvr2 \\
        --config.total_steps=500 --config.checkpoint_every=500 --config.init_from.params=workdirs/flava_tiny/params
    python -m vlfm.train --config configs/flava_tiny_nlvr2.py --workdir workdirs/flava_tiny_nlvr2_scratch \\
        --config.total_steps=500 --config.checkpoint_every=500
Accuracy 0.642 from flava_tiny, 0.526 from scratch (chance 0.5).
"""

import os

import ml_collections

from vlfm.train.config import load_config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = load_config_file(os.path.join(os.path.dirname(__file__), "flava_tiny.py"))
    c.total_steps = 1000
    c.model.update(dict(mim=False, mlm=False, mmm=False, itm=False, pair_classes=2))
    c.tasks = ml_collections.ConfigDict()
    c.losses = ml_collections.ConfigDict(dict(softmax_xent=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes_nlvr2", num_examples=20_000, image_size=32, max_len=16,
                                            batch_size=64, num_workers=0, train_split="train"))
    c.optimizer.lr = dict(name="cosine", peak=1e-3, warmup_steps=100)
    c.evals = ml_collections.ConfigDict(dict(
        accuracy=dict(type="classification", every=500, split="validation", num_examples=500)))
    c.checkpoint_every = 1000
    return c
