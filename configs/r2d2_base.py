"""R2D2-Base (Xie et al., 2023): ViT-B/16 + BERT-base + two 6-layer cross encoders, 303,264,773 parameters.

Towers as yuxie11/R2D2's base model: a CLIP ViT-B/16 at 224 px (``ln_pre``, QuickGELU, no patch bias) and
BERT-base with the Chinese RoBERTa-wwm-ext vocabulary (21,128 tokens, 512 positions, two token types),
text at most 64 tokens. Each tower's tokens are projected to the cross width (768; the image side is
R2D2's ``img_joint_proj``); the text-image cross encoder (6 BERT layers with cross-attention: text queries
over the image tokens) and the image-text cross encoder (image queries over the text tokens) are
independent (``exchange=False``), each with its ITM head (768 -> 2) on its first token. Parameters:
image tower 85,799,424, text tower 101,677,056, cross encoders 113,421,312, projections and heads the
rest; vlfm's text-side projection and token-type embeddings (592,128) have no counterpart in R2D2, whose
text tokens enter the cross encoder as they are. Contrastive
head: 768-d projections of the two class tokens, temperature initialised at 0.07 (R2D2 clamps it to
[0.001, 0.5], vlfm caps ``logit_scale`` at 100).

Losses: GCPR with target-guided distillation (``multi_positive_contrastive`` with ``alpha`` and a
momentum teacher, ``config.momentum.decay``; ``label_key`` an image id where several captions share an
image) and FGR (two ``itm`` losses on the hard-negative pairs, class weights (1, 2)). Fine-tuning as R2D2's
retrieval config: lr 1e-5 with 500 warm-up steps, weight decay 0.05, the image tower frozen
(``freeze``), top-k 128 re-ranking (``evals.rerank.k``).

Parameter count (the figure above): ``python -c "import jax, jax.numpy as jnp, flax, numpy as np;
from vlfm.models import build_model; from vlfm.train.config import load_config;
m = build_model(load_config('configs/r2d2_base.py').model);
s = jax.eval_shape(lambda: m.init(jax.random.key(0), {'image': jnp.zeros((1, 224, 224, 3)),
'text': jnp.zeros((1, 64), jnp.int32)}))['params'];
print(sum(int(np.prod(v.shape)) for v in jax.tree.leaves(flax.linen.unbox(s))))"``
(also ``tests/test_r2d2.py``).

Command (GPU/TPU; on the built-in data as a smoke test):
    python -m vlfm.train --config configs/r2d2_base.py --workdir workdirs/r2d2_base
Runtime: not run on CPU. The paper's data (Zero-Corpus, 23M-250M Chinese pairs) is not public as files
vlfm reads; any webdataset of image-text pairs works (README, "Data").
"""

import ml_collections

from vlfm.train.config import base_config

CROSS_AND_HEADS = ((r"(fusion_layers|text_transform|image_transform|type_embed)/.*", 5.0),
                   (r"(itm|itm_image)_head/.*", 5.0))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 100_000
    c.model = ml_collections.ConfigDict(dict(
        name="r2d2",
        image=dict(name="vit", image_size=224, patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072,
                   pre_norm=True, patch_bias=False, ln_eps=1e-5, act="quick_gelu", dtype="bfloat16",
                   attention="auto"),
        text=dict(name="bert", vocab_size=21128, max_len=512, type_vocab_size=2, width=768, depth=12,
                  num_heads=12, mlp_dim=3072, ln_eps=1e-12, pooler=False, dtype="bfloat16", attention="auto"),
        width=768, depth=6, num_heads=12, mlp_dim=3072, ln_eps=1e-12, contrastive_dim=768, itm="hard",
        dtype="bfloat16", attention="auto",
    ))
    # Each loss its own class_weights tuple, built at run time (one object in two places, a shared dict or
    # an interned constant, would print as a YAML alias and the saved config.json would not round-trip).
    itm = lambda **extra: dict(fn="itm", class_weights=tuple([1.0, 2.0]), weight=0.5, **extra)  # noqa: E731
    c.losses = ml_collections.ConfigDict(dict(
        multi_positive_contrastive=dict(alpha=0.4, weight=1.0),
        itm=itm(),
        itm_image=itm(logits_key="itm_image_logits"),
    ))
    c.momentum.decay = 0.995
    c.data = ml_collections.ConfigDict(dict(name="shapes_vl", num_examples=4_000, image_size=224, max_len=64,
                                            mlm_prob=0.0, batch_size=256, num_workers=0, train_split="train"))
    c.optimizer.update(dict(name="adamw", lr=dict(name="cosine", peak=1e-4, warmup_steps=2_000), weight_decay=0.05,
                            clip_norm=1.0, lr_multipliers=CROSS_AND_HEADS))
    c.evals = ml_collections.ConfigDict(dict(
        itm=dict(type="itm_accuracy", every=5000, split="validation", num_examples=1000),
        rerank=dict(type="itm_rerank_retrieval", every=5000, split="validation", num_examples=1000, k=128),
    ))
    c.log_every = 100
    c.checkpoint_every = 5000
    return c
