"""BridgeTower-Base at HF ``BridgeTowerConfig()`` sizes: 326,347,008 parameters without heads (equal to
HF ``BridgeTowerModel``), pretrained with MLM + ITM (random negatives), the paper's
``task_mlm_itm_clip_bert``.

Uni-modal towers: CLIP ViT-B/16 at 288 px (``ln_pre``, QuickGELU, no patch bias, eps 1e-5) and
RoBERTa-base (vocabulary 50,265, positions from 2, one token type). Cross-modal encoder: 6
co-attention layers per modality (width 768, 12 heads), fed by the top 6 uni-modal layers through
``add`` bridge layers ``LN(T̃_l + X_{l-1})``; the vision tower's ``ln_post`` is shared by every bridged
layer. Heads: MLM (untied, 39,245,913 with the decoder) and ITM on the 1,536-wide pooled pair (3,074).
Learning rate 1e-5 for the towers and x5 for the cross-modal layers and the heads
(``optimizer.lr_multipliers``), as in microsoft/BridgeTower. ``itm="hard"`` with
``contrastive_dim=256`` gives the paper's ``itm_itc_hard`` variant (add ``softmax_contrastive``).

Command (GPU/TPU; on the built-in data as a smoke test):
    python -m vlfm.train --config configs/bridgetower_base.py --workdir workdirs/bridgetower_base

Import HF checkpoints with ``python -m vlfm.convert import``. Runtime: not run on CPU.
"""

import ml_collections

from vlfm.train.config import base_config

FUSION_AND_HEADS = ((r"(fusion_layers|text_transform|image_transform|type_embed|text_pooler|image_pooler)/.*", 5.0),
                    (r"(mlm|itm|vqa|cls|pair)_head/.*", 5.0))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 100_000
    c.model = ml_collections.ConfigDict(dict(
        name="bridgetower",
        image=dict(name="vit", image_size=288, patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072,
                   pre_norm=True, patch_bias=False, ln_eps=1e-5, act="quick_gelu", dtype="bfloat16",
                   attention="auto"),
        text=dict(name="bert", vocab_size=50265, max_len=514, type_vocab_size=1, pos_offset=2, width=768, depth=12,
                  num_heads=12, mlp_dim=3072, ln_eps=1e-5, dtype="bfloat16", attention="auto"),
        width=768, depth=6, num_heads=12, mlp_dim=3072, ln_eps=1e-5, bridge="add", input_norm=True,
        mlm=True, itm="random", dtype="bfloat16", attention="auto",
    ))
    c.losses = ml_collections.ConfigDict(dict(masked_xent=dict(weight=1.0), itm=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes_vl", num_examples=4_000, image_size=288, max_len=50,
                                            mlm_prob=0.15, whole_word=False, batch_size=256, num_workers=0,
                                            train_split="train"))
    c.optimizer.update(dict(
        name="adamw", lr=dict(name="linear", peak=1e-5, warmup_steps=10_000), weight_decay=0.01, clip_norm=1.0,
        lr_multipliers=FUSION_AND_HEADS))
    c.evals = ml_collections.ConfigDict(dict(
        itm=dict(type="itm_accuracy", every=5000, split="validation", num_examples=1000),
        mlm=dict(type="vl_mlm_accuracy", every=5000, split="validation", num_examples=1000),
    ))
    c.log_every = 100
    c.checkpoint_every = 5000
    return c
