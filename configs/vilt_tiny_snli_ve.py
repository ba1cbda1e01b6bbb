"""Fine-tuning a tiny ViLT for visual entailment (``shapes_snli_ve``: entailment / neutral /
contradiction of a hypothesis about an image).

Command:
    python -m vlfm.train --config configs/vilt_tiny_snli_ve.py --workdir workdirs/vilt_tiny_snli_ve

Contradictions change one attribute the hypothesis names; neutral hypotheses wrap true attributes in
a claim the image cannot settle ("a child drew the red star"), as do half of the contradictions, so the
text alone does not decide. Head: a 3-way classifier on the pooled token. Metric: accuracy on 500
held-out examples (chance 1/3). Fine-tunes a ``configs/vilt_tiny.py`` run with
``--config.init_from.params=workdirs/vilt_tiny/params``; from scratch without it.

Expected result (2 CPU cores, about 2 minutes, 1,000 steps): accuracy 0.804 from a 1,500-step
``vilt_tiny`` run, 0.674 from scratch (chance 1/3).
"""

import os

import ml_collections

from vlfm.train.config import load_config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = load_config_file(os.path.join(os.path.dirname(__file__), "vilt_tiny.py"))
    c.total_steps = 1000
    c.model.update(dict(mlm=False, itm="none", num_classes=3, max_text_len=16))
    c.losses = ml_collections.ConfigDict(dict(softmax_xent=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes_snli_ve", num_examples=20_000, image_size=32, max_len=16,
                                            batch_size=64, num_workers=0, train_split="train"))
    c.evals = ml_collections.ConfigDict(dict(
        accuracy=dict(type="classification", every=500, split="validation", num_examples=500)))
    return c
