"""VLMo-Base: a 12-layer, 768-wide mixture-of-modality-experts transformer (VL-FFN in the top 2 layers),
pretrained with image-text contrast (ITC: the image-only / text-only passes, and the same passes
through the VL experts), ITM with hard negatives drawn from the contrastive similarities, and MLM on
the fused pass (weight 0.25, as microsoft/unilm ``vlmo``).

Parameters (``tests/test_vlmo.py`` checks them with ``jax.eval_shape``): 175,430,496 for the backbone
(text embeddings 23,474,688, patch embeddings and class token 591,360, modality types 1,536, the MoME
transformer 151,362,912 with its relative-position table of 162,144), 202,445,470 with the heads (MLM
24,063,546 untied, four 768x768 contrastive projections, pooler, ITM, two temperatures). The paper
reports 175M. As the public VLMo table, the relative-position table keeps rows for 196 text positions
(``relative_text_len``, the public ``max_text_len_of_initckpt``) while text is 40 tokens long.

Layout (microsoft/unilm ``vlmo_base_patch16``): pre-LN, LayerNorm eps 1e-6 (BERT embeddings 1e-12),
exact GELU, q and v bias without k bias, layer scale 0.1, BEiT relative position bias (one table for
all layers; no absolute image positions), 224 px images in 16 px patches, 40 text tokens, drop-path
0.1. Optimizer as the public code: AdamW (0.9, 0.98), eps 1e-8, weight decay 0.01 (none on biases,
norms, embeddings, layer scales, the relative-position table), lr 2e-4, 10% warm-up then linear decay
to 0, batch 1024, 200k steps.

Command (GPU/TPU; on the built-in data as a smoke test, real corpora come from the data configs):
    python -m vlfm.train --config configs/vlmo_base.py --workdir workdirs/vlmo_base

The stagewise recipe (image-only BEiT MIM, then text-only MLM with attention and V-FFN frozen) and a
VLMo-Base starting checkpoint are not provided here: this config is the image-text stage from scratch.
Runtime: measure with ``benchmarks/train_step.py``; not run on CPU.
"""

import ml_collections

from vlfm.optim.optimizers import DEFAULT_NO_DECAY
from vlfm.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 200_000
    c.model = ml_collections.ConfigDict(dict(
        name="vlmo", vocab_size=30522, max_text_len=40, relative_text_len=196, image_size=224, patch_size=16, width=768, depth=12,
        num_heads=12, mlp_dim=3072, vl_depth=2, qkv_bias="qv", layer_scale=0.1, relative_position=True,
        ln_eps=1e-6, text_ln_eps=1e-12, act="gelu", init_std=0.02, drop_path_rate=0.1, contrastive_dim=768,
        vl_contrastive=True, mlm=True, itm="hard", dtype="bfloat16", attention="auto",
    ))
    c.losses = ml_collections.ConfigDict(dict(
        softmax_contrastive=dict(weight=0.5),
        itc_vl=dict(fn="softmax_contrastive", prefix="vl_", weight=0.5),
        itm=dict(weight=1.0),
        masked_xent=dict(weight=0.25),
    ))
    c.data = ml_collections.ConfigDict(dict(name="shapes_vl", num_examples=4_000, image_size=224, max_len=40,
                                            mlm_prob=0.15, batch_size=1024, num_workers=0, train_split="train"))
    c.optimizer.update(dict(name="adamw", lr=dict(name="linear", peak=2e-4, warmup_steps=20_000, end=0.0),
                            weight_decay=0.01, b1=0.9, b2=0.98, eps=1e-8,
                            no_decay=DEFAULT_NO_DECAY + (r".*rel_pos/table$",)))
    c.evals = ml_collections.ConfigDict(dict(
        itm=dict(type="itm_accuracy", every=10_000, split="validation", num_examples=1000),
        mlm=dict(type="vl_mlm_accuracy", every=10_000, split="validation", num_examples=1000),
        retrieval=dict(type="retrieval", every=10_000, split="validation", num_examples=1000),
    ))
    c.log_every = 100
    c.checkpoint_every = 10_000
    return c
