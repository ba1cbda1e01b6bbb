"""METER-CLIP16-RoBERTa (co-attention fusion), pretrained with MLM + ITM: 326,328,576 parameters
without heads.

The best METER of Dou et al. (2022): CLIP ViT-B/16 (288 px, the released checkpoint's size) and
RoBERTa-base, projected to 768 and fused by 6 co-attention layers per modality that read the *last*
uni-modal layer. No public HF class exists, so the count is derived: it is HF ``BridgeTowerModel``'s
326,347,008 without BridgeTower's additions (10 bridge LayerNorms and the 2 input LayerNorms, 18,432),
the same towers, projections, cross layers and poolers. ``fusion="merged"`` gives the paper's merged
attention alternative. Learning rate 1e-5, x5 for the cross-modal layers and heads.

Command (GPU/TPU; on the built-in data as a smoke test):
    python -m vlfm.train --config configs/meter_clip16_roberta.py --workdir workdirs/meter
"""

import os

import ml_collections

from vlfm.train.config import load_config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """BridgeTower-Base's towers, cross layers, heads, data and optimizer, without the bridges."""
    del arg
    c = load_config_file(os.path.join(os.path.dirname(__file__), "bridgetower_base.py"))
    c.model.name = "meter"
    c.model.bridge = "none"
    c.model.input_norm = False
    c.model.fusion = "co_attention"
    return c
