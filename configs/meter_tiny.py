"""A tiny METER pretrained on the built-in shapes pairs: MLM + ITM with random negatives (METER's
``task_mlm_itm``) through co-attention on the last uni-modal layer.

Command:
    python -m vlfm.train --config configs/meter_tiny.py --workdir workdirs/meter_tiny

Model: a CLIP-style ViT (32 px, 8 px patches) and a BERT text tower (3 layers, width 64 each), then 2
co-attention layers per modality (``--config.model.fusion=merged`` for merged attention), on
single-object pairs. Cross-modal layers and heads learn 5x faster. Evaluated on 500 held-out pairs:
ITM accuracy and masked-token accuracy with the image.

Expected result (measured on 2 shared CPU cores): 4 minutes 15 s in all (1,500 steps at batch 64,
about 0.13 s/step), 615,586 parameters; ITM accuracy 0.93 (0.83 after 500 steps), MLM accuracy 0.72
(unigram baseline 0.14). The co-attention model needs the lower learning rate: at 1e-3 (5e-3 for the
fusion layers) its ITM stays at chance for 1,500 steps.
"""

import os

import ml_collections

from vlfm.train.config import load_config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``configs/bridgetower_tiny.py``'s towers, fusion width and optimizer on single-object pairs at
    lr 3e-4; no bridges, no contrastive head, random ITM negatives."""
    del arg
    c = load_config_file(os.path.join(os.path.dirname(__file__), "bridgetower_tiny.py"))
    c.model.name = "meter"
    c.model.update(dict(bridge="none", input_norm=False, fusion="co_attention", contrastive_dim=0, itm="random"))
    c.model.text.max_len = 16
    c.data.update(dict(max_objects=1, max_len=16))  # single-object pairs, as measured below
    c.optimizer.lr.peak = 3e-4
    c.losses = ml_collections.ConfigDict(dict(masked_xent=dict(weight=1.0), itm=dict(weight=1.0)))
    del c.evals["retrieval"], c.evals["retrieval_sum"]
    return c
