"""CoCa ViT-B/32 at open_clip's ``coca_ViT-B-32`` sizes: 253,560,065 parameters.

Image tower: ViT-B/32 at 224 px (``ln_pre``, no patch bias, GELU), its 50 tokens read by one
attentional pooler of 256 queries (8 heads, width 512; open_clip's default layout: query 0 is the
contrastive embedding, queries 1..255 the captioning context). Unimodal text: 12 causal layers,
width 512, 8 heads, 76 tokens plus the appended CLS, vocabulary 49,408. Multimodal decoder: 12
layers of causal self-attention + cross-attention to the image tokens, then the vocabulary
projection. Loss: softmax contrastive over the global batch + 2.0 x caption cross-entropy (pads
ignored). ``model.pooler="parallel"`` gives the paper's poolers instead (a 1-query contrastive and a
256-query captioning pooler, both reading the LayerNorm'd ViT output): 254,876,417 parameters.

Parameters by part: image tower 87,454,464, attentional pooler 1,446,400, ``ln_post`` 1,024, image
projection 262,144, text tower 63,166,464, text projection 262,144, decoder 100,967,424, logit scale 1
(open_clip: visual 89,164,032, text 63,428,608, text_decoder 100,967,424, logit_scale 1).
Weights convert to and from open_clip state dicts (``vlfm.convert.open_clip``).

Command (GPU/TPU; on the built-in data as a smoke test, real corpora come from the data configs):
    python -m vlfm.train --config configs/coca_b32.py --workdir workdirs/coca_b32

Runtime: measure with ``benchmarks/train_step.py``; not run on CPU.
"""

import ml_collections

from vlfm.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 10_000
    c.model = ml_collections.ConfigDict(dict(
        name="coca",
        embed_dim=512,
        pooler="open_clip",
        n_queries=256,
        pooler_heads=8,
        image=dict(name="vit", image_size=224, patch_size=32, width=768, depth=12, num_heads=12, mlp_dim=3072,
                   pre_norm=True, patch_bias=False, ln_eps=1e-5, dtype="bfloat16", attention="auto"),
        text=dict(name="coca_text", vocab_size=49408, max_len=76, width=512, depth=12, num_heads=8, mlp_dim=2048,
                  dtype="bfloat16", attention="auto"),
        decoder=dict(name="multimodal_decoder", vocab_size=49408, max_len=76, depth=12, num_heads=8, mlp_dim=2048,
                     dtype="bfloat16", attention="auto"),
        dtype="bfloat16",
    ))
    c.losses = ml_collections.ConfigDict(dict(softmax_contrastive=dict(weight=1.0), caption_ce=dict(weight=2.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes", num_examples=10_000, image_size=224, max_len=76,
                                            batch_size=256, num_workers=0, train_split="train"))
    c.optimizer.update(dict(name="adamw", lr=dict(name="cosine", peak=5e-4, warmup_steps=2000),
                        weight_decay=0.2, b2=0.98, eps=1e-6, clip_norm=1.0))
    c.evals = ml_collections.ConfigDict(dict(
        retrieval=dict(every=1000, split="validation", num_examples=1000),
        captioning=dict(every=1000, split="validation", num_examples=1000, batch_size=250),
    ))
    c.log_every = 100
    c.checkpoint_every = 1000
    return c
