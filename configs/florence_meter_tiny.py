"""Florence's vision-language adapter at tiny size: METER's co-attention fusion on a CoSwin image tower and a
BERT text tower, pretrained with MLM + ITM on the built-in shapes pairs (``configs/meter_tiny.py``'s model,
data, losses and evaluations with the ViT replaced by CoSwin).

Florence (Yuan et al. 2021) adapts its image encoder to VQA and captioning with METER (CoSwin + RoBERTa
and a 6-layer co-attention fusion, trained with MLM + ITM). Here: a 2-stage CoSwin (convolutional stem,
kernel 7 stride 4, then 4 blocks of windowed attention on the 8x8 grid, a convolutional merge to 4x4, 2
more blocks), width 32 -> 64, whose token 0 is the average of its tokens (``prepend_pooled``, as METER's
Swin: the fusion model's image pooler reads token 0); a 3-layer BERT; 2 co-attention layers per modality.

Command:
    python -m vlfm.train --config configs/florence_meter_tiny.py --workdir workdirs/florence_meter_tiny
"""

import os

import ml_collections

from vlfm.train.config import load_config_file

COSWIN = dict(name="coswin", image_size=32, patch_size=4, embed_dim=32, depths=(4, 2), num_heads=(2, 4),
              window_size=4, prepend_pooled=True)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = load_config_file(os.path.join(os.path.dirname(__file__), "meter_tiny.py"))
    c.model.image = ml_collections.ConfigDict(COSWIN)
    return c
