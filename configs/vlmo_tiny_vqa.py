"""Fine-tuning a tiny VLMo for VQA on the built-in shapes questions (``shapes_vqa``), in fused mode.

Command:
    python -m vlfm.train --config configs/vlmo_tiny.py --workdir workdirs/vlmo_tiny
    python -m vlfm.train --config configs/vlmo_tiny_vqa.py --workdir workdirs/vlmo_tiny_vqa \\
        --config.init_from.params=workdirs/vlmo_tiny/params

The model is ``configs/vlmo_tiny.py``'s MoME transformer run on ``[question; image]`` (the fused pass,
VL-FFN in the top layer); the VQA head (dense 2x width, LayerNorm, GELU, dense over 28 answers) reads
the pooled first token, trained with binary cross-entropy against the VQAv2-style soft scores.
``init_from`` loads the pretrained backbone; the pretraining heads (MLM, ITM, the contrastive
projections and temperatures) are left out, the VQA head starts fresh. Without it the model trains
from scratch. Metric: VQA accuracy on 500 held-out questions (the commonest answer scores 0.18).
The relative position table and the text positions keep ``vlmo_tiny``'s 24 text slots (questions are
at most 16 tokens), so every backbone parameter keeps its shape.

Measured (2-core CPU, shared; entry in ``benchmarks/RESULTS.md``), from the 1,500-step ``vlmo_tiny`` run
whose ITM learns (the three overrides of ``configs/vlmo_tiny.py``'s docstring; its checkpoint, so the
fine-tune keeps ``image_abs_pos``):
    python -m vlfm.train --config configs/vlmo_tiny.py --workdir workdirs/vlmo_tiny_1500 \\
        --config.total_steps=1500 --config.model.image_abs_pos=True \\
        "--config.optimizer.lr_multipliers=(('(transformer/vl_layer.*|pooler|itm_head)/.*', 5.0),)"
    python -m vlfm.train --config configs/vlmo_tiny_vqa.py --workdir workdirs/vlmo_tiny_vqa \\
        --config.model.image_abs_pos=True --config.init_from.checkpoint=workdirs/vlmo_tiny_1500/checkpoints
    python -m vlfm.train --config configs/vlmo_tiny_vqa.py --workdir workdirs/vlmo_tiny_vqa_scratch \\
        --config.model.image_abs_pos=True
VQA accuracy at steps 500 / 1,000: pretrained 0.558 / 0.607, from scratch 0.475 / 0.521 (prior 0.18).
"""

import os

import ml_collections

from vlfm.train.config import load_config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = load_config_file(os.path.join(os.path.dirname(__file__), "vlmo_tiny.py"))
    c.total_steps = 1000
    c.model.update(dict(mlm=False, itm="none", contrastive_dim=0, vl_contrastive=False, vqa_answers=28))
    c.losses = ml_collections.ConfigDict(dict(vqa_bce=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes_vqa", num_examples=20_000, image_size=32, max_objects=2,
                                            max_len=16, batch_size=64, num_workers=0, train_split="train"))
    c.optimizer.lr = dict(name="cosine", peak=5e-4, warmup_steps=100)
    c.evals = ml_collections.ConfigDict(dict(
        vqa=dict(type="vqa", every=500, split="validation", num_examples=500)))
    return c
