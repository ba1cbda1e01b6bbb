"""A tiny R2D2 on the built-in shapes pairs: global contrastive pre-ranking (GCPR) with target-guided
distillation from a momentum teacher, and fine-grained ranking (FGR) by two independent cross encoders
on [positive; hard-negative image; hard-negative text] with class weights (1, 2).

Command:
    python -m vlfm.train --config configs/r2d2_tiny.py --workdir workdirs/r2d2_tiny
    python -m vlfm.train --config configs/r2d2_tiny.py:plain --workdir workdirs/r2d2_tiny_plain   # no TgD
    python -m vlfm.train --config configs/r2d2_tiny.py:fgd --workdir workdirs/r2d2_tiny_fgd       # TgD + FgD
    python -m vlfm.train --config configs/r2d2_tiny.py:tgd_gcpr --workdir workdirs/r2d2_tiny_gcpr # TgD on GCPR only

Model: a CLIP-style ViT (32 px, 8 px patches) and a BERT text tower (3 layers, width 64 each), a
contrastive head (64-d), and two 2-layer cross encoders of width 64 (text queries over the image tokens;
image queries over the text tokens), one ITM head each. Data: pairs with one or two objects whose
captions bind colour and size to each shape. GCPR is ``multi_positive_contrastive`` (every pair its own
positive here; give ``label_key`` an image id where captions share images), with ``alpha=0.4``
momentum distillation (``config.momentum.decay=0.995``): the teacher's softmax over the batch mixes into
the targets. Evaluated on 500 held-out pairs: retrieval by the dual encoder alone (``dual_*``) and
re-ranked over its top 10 by both cross encoders (``rerank``), by the text-image encoder alone
(``rerank_text``) and by the image-text encoder alone (``rerank_image``); ITM accuracy. TgD on the ranking
losses: the momentum model's two cross encoders score the student's own [positive; hard-negative] pairs
(``config.momentum.from_student`` hands them the student's draws) and ``itm`` with ``alpha=0.4`` mixes
their softmax into the one-hot targets. ``:tgd_gcpr`` keeps TgD on the pre-ranking only. ``:fgd`` adds
feature-guided distillation: the student encodes the caption with 15% of its words masked and
``kd_hidden`` (cosine) pulls that embedding onto the momentum teacher's embedding of the full caption.

Measured (800 of the 1,500 steps, 2-core CPU, shared; ``--config.total_steps=800``; entries in
``benchmarks/RESULTS.md``), R@1 image->text / text->image on 500 held-out pairs (chance 0.002), the dual
encoder alone -> re-ranked by both cross encoders:
- ``:fgd`` (TgD on both losses and FgD): 0.412 / 0.388 -> 0.442 / 0.446, ITM 0.965;
- this config (TgD on both losses): 0.408 / 0.394 -> 0.432 / 0.420, ITM 0.964;
- ``:tgd_gcpr`` (TgD on the pre-ranking only): 0.316 / 0.308 -> 0.356 / 0.336, ITM 0.944;
- ``:plain`` (no distillation): 0.380 / 0.370 -> 0.386 / 0.364, ITM 0.919.
One seed each.
"""

import ml_collections

from vlfm.train.config import base_config

TOWER = dict(width=64, depth=3, num_heads=4, mlp_dim=256)
CROSS_AND_HEADS = ((r"(fusion_layers|text_transform|image_transform|type_embed)/.*", 5.0),
                   (r"(itm|itm_image)_head/.*", 5.0))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "plain", "fgd", "tgd_gcpr"):
        raise ValueError(f"configs/r2d2_tiny.py takes no argument, 'plain' (no momentum distillation), 'fgd' "
                         f"(feature-guided distillation too) or 'tgd_gcpr' (TgD on the pre-ranking only), got {arg!r}")
    tgd, fgd, tgd_ranking = arg != "plain", arg == "fgd", arg not in ("plain", "tgd_gcpr")
    c = base_config()
    c.total_steps = 1500
    c.model = ml_collections.ConfigDict(dict(
        name="r2d2",
        image=dict(name="vit", image_size=32, patch_size=8, pre_norm=True, patch_bias=False, ln_eps=1e-5, **TOWER),
        text=dict(name="bert", vocab_size=96, max_len=24, ln_eps=1e-5, dropout_rate=0.0, attn_dropout_rate=0.0,
                  pooler=False, init_std=None, **TOWER),
        width=64, depth=2, num_heads=4, mlp_dim=256, dropout_rate=0.0, attn_dropout_rate=0.0, init_std=None,
        contrastive_dim=64, itm="hard", fgd=fgd,
    ))
    # Each loss its own class_weights tuple, built at run time (one object in two places, a shared dict or
    # an interned constant, would print as a YAML alias and the saved config.json would not round-trip).
    itm = lambda **extra: dict(fn="itm", class_weights=tuple([1.0, 2.0]), weight=1.0, **extra)  # noqa: E731
    c.losses = ml_collections.ConfigDict(dict(
        multi_positive_contrastive=dict(alpha=0.4 if tgd else 0.0, weight=1.0),
        itm=itm(alpha=0.4 if tgd_ranking else 0.0),
        itm_image=itm(logits_key="itm_image_logits", alpha=0.4 if tgd_ranking else 0.0),
    ))
    if fgd:
        c.losses.kd_hidden = dict(teacher="momentum", student_key="fgd_text_embed", teacher_key="text_embed",
                                  distance="cosine", weight=1.0)
    if tgd:
        c.momentum.decay = 0.995
    if tgd_ranking:  # the momentum cross encoders score the student's hard-negative pairs
        c.momentum.from_student = tuple(["itm_neg_image", "itm_neg_text"])
    c.data = ml_collections.ConfigDict(dict(name="shapes_vl", num_examples=20_000, image_size=32, max_objects=2,
                                            max_len=24, mlm_prob=0.15 if fgd else 0.0, batch_size=64, num_workers=0,
                                            train_split="train"))
    c.optimizer.lr = dict(name="cosine", peak=5e-4, warmup_steps=100)
    c.optimizer.weight_decay = 0.01
    c.optimizer.lr_multipliers = CROSS_AND_HEADS
    rerank = dict(type="itm_rerank_retrieval", every=500, split="validation", num_examples=500, k=10)
    c.evals = ml_collections.ConfigDict(dict(
        itm=dict(type="itm_accuracy", every=500, split="validation", num_examples=500),
        rerank=dict(rerank),
        rerank_text=dict(rerank, score="itm_score_text"),
        rerank_image=dict(rerank, score="itm_score_image"),
    ))
    c.log_every = 50
    c.checkpoint_every = 500
    return c
