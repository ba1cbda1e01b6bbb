"""CLIP ViT-B/16 at open_clip's ``ViT-B-16`` sizes (149,620,737 parameters).

Image tower: ViT-B/16 at 224 px with ``ln_pre``, no patch bias, QuickGELU-free GELU (open_clip's
default for models trained from scratch); text tower: 12 layers, width 512, 8 heads, 77 tokens,
vocabulary 49,408, causal, pooled at the end token. Softmax contrastive loss over the global batch.

Command (GPU/TPU; on the built-in data as a smoke test, real corpora come from the data configs):
    python -m vlfm.train --config configs/clip_b16.py --workdir workdirs/clip_b16

Expected: 149,620,737 parameters (equal to open_clip ViT-B-16 and HF CLIPModel at patch 16). On the
built-in 32 px shapes the images are upsampled to 224 px; the loss falls within a few hundred steps.
Runtime: measure with ``benchmarks/train_step.py``; not run on CPU.
"""

import ml_collections

from vlfm.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 10_000
    c.model = ml_collections.ConfigDict(dict(
        name="dual_encoder",
        embed_dim=512,
        image=dict(name="vit", image_size=224, patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072,
                   pre_norm=True, patch_bias=False, ln_eps=1e-5, dtype="bfloat16", remat="none",
                   attention="auto"),
        text=dict(name="text_transformer", vocab_size=49408, max_len=77, width=512, depth=12, num_heads=8,
                  mlp_dim=2048, pool="eos", eos_id=3, ln_eps=1e-5, dtype="bfloat16", attention="auto"),
        dtype="bfloat16",
    ))
    c.losses = ml_collections.ConfigDict(dict(softmax_contrastive=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes", num_examples=10_000, image_size=224, max_len=77,
                                            batch_size=256, num_workers=0, train_split="train"))
    c.optimizer.update(dict(name="adamw", lr=dict(name="cosine", peak=5e-4, warmup_steps=2000),
                        weight_decay=0.2, b2=0.98, eps=1e-6, clip_norm=1.0))
    c.evals = ml_collections.ConfigDict(dict(
        retrieval=dict(every=1000, split="validation", num_examples=1000),
        zeroshot=dict(type="zeroshot_classification", every=1000, split="validation", num_examples=1000),
    ))
    c.log_every = 100
    c.checkpoint_every = 1000
    return c
