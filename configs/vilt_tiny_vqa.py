"""Fine-tuning a tiny ViLT for VQA on the built-in shapes questions (``shapes_vqa``).

Command:
    python -m vlfm.train --config configs/vilt_tiny_vqa.py --workdir workdirs/vilt_tiny_vqa

Questions ask for the main object's colour, shape, size or position or check it ("is there a red
star at the top"); 28 answers with VQAv2-style soft scores from 10 simulated annotators. Head: ViLT's
VQA classifier (dense 2x width, LayerNorm, GELU, dense) on the pooled token; loss: binary
cross-entropy against the soft scores (summed over answers); metric: VQA accuracy on 500 held-out
questions against the always-the-commonest-answer baseline. The model is ``configs/vilt_tiny.py``'s:
fine-tune a pretrained one with ``--config.init_from.params=workdirs/vilt_tiny/params`` (its MLM and
ITM heads are left out, the VQA head starts fresh); without it the model trains from scratch.

Expected result (2 CPU cores, about 2 minutes, 1,000 steps): VQA accuracy 0.562 from a 1,500-step
``vilt_tiny`` run, 0.528 from scratch (0.531 / 0.458 after 500 steps); answer prior 0.18.
"""

import os

import ml_collections

from vlfm.train.config import load_config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = load_config_file(os.path.join(os.path.dirname(__file__), "vilt_tiny.py"))
    c.total_steps = 1000
    c.model.update(dict(mlm=False, itm="none", vqa_answers=28, max_text_len=16))
    c.losses = ml_collections.ConfigDict(dict(vqa_bce=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes_vqa", num_examples=20_000, image_size=32, max_objects=2,
                                            max_len=16, batch_size=64, num_workers=0, train_split="train"))
    c.evals = ml_collections.ConfigDict(dict(
        vqa=dict(type="vqa", every=500, split="validation", num_examples=500)))
    return c
