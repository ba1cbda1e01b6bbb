"""ViLT-B/32 at HF ``ViltConfig()`` sizes: 111,595,008 parameters without heads (equal to HF
``ViltModel``), pretrained with MLM (whole-word masking) + ITM + word-patch alignment (weight 0.1).

ViLT-B/32 is a ViT-B/32 transformer (12 layers, width 768, pre-LN, LayerNorm eps 1e-12) over
[40 BERT word-piece positions; 12x12 patches of a 384 px image + class token], with modality-type
embeddings. Heads: MLM (transform + untied decoder: 24,063,546 with the 30,522-word vocabulary, as the
original ViLT), ITM (1,538). Start it from ViT-B/32 weights at 384 px, as ViLT does:
``--config.init_from.hf=<HF google/vit-base-patch32-384 directory>`` (or ``init_from.params`` of a vlfm
ViT run); ``init_from.rename`` maps the ViT's patch/position embeddings, class token, encoder, final
LayerNorm and pooler onto ViLT's, the text embeddings and heads start fresh. HF ViLT checkpoints
import with ``python -m vlfm.convert import``.

Command (GPU/TPU; on the built-in data as a smoke test, real corpora come from the data configs):
    python -m vlfm.train --config configs/vilt_b32.py --workdir workdirs/vilt_b32

Hyperparameters follow dandelin/ViLT: AdamW lr 1e-4, weight decay 0.01, 10% warm-up then linear
decay, batch 4096 in the paper (256 here). Runtime: measure with ``benchmarks/train_step.py``; not
run on CPU.
"""

import ml_collections

from vlfm.convert.hf_fusion import VIT_TO_VILT
from vlfm.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 100_000
    c.model = ml_collections.ConfigDict(dict(
        name="vilt", vocab_size=30522, max_text_len=40, type_vocab_size=2, image_size=384, patch_size=32,
        num_types=2, width=768, depth=12, num_heads=12, mlp_dim=3072, ln_eps=1e-12, act="gelu", init_std=0.02,
        dropout_rate=0.1, mlm=True, itm="random", dtype="bfloat16", attention="auto",
    ))
    c.init_from.rename = VIT_TO_VILT  # used when init_from names a ViT
    c.losses = ml_collections.ConfigDict(dict(
        masked_xent=dict(weight=1.0), itm=dict(weight=1.0), wpa=dict(weight=0.1)))
    c.data = ml_collections.ConfigDict(dict(name="shapes_vl", num_examples=4_000, image_size=384, max_len=40,
                                            mlm_prob=0.15, batch_size=256, num_workers=0, train_split="train"))
    c.optimizer.update(dict(name="adamw", lr=dict(name="linear", peak=1e-4, warmup_steps=10_000),
                        weight_decay=0.01, clip_norm=1.0))
    c.evals = ml_collections.ConfigDict(dict(
        itm=dict(type="itm_accuracy", every=5000, split="validation", num_examples=1000),
        mlm=dict(type="vl_mlm_accuracy", every=5000, split="validation", num_examples=1000),
    ))
    c.log_every = 100
    c.checkpoint_every = 5000
    return c
