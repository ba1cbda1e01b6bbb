r"""A tiny VLMo pretrained on the built-in shapes pairs: image-text contrast through the V/L experts and
through the VL experts, ITM with hard negatives from the contrastive similarities, and MLM on the fused
pass, all on one mixture-of-modality-experts transformer (the image-text stage of VLMo at toy size).

Command:
    python -m vlfm.train --config configs/vlmo_tiny.py --workdir workdirs/vlmo_tiny

Model: 4 MoME layers (width 64, 4 heads, MLP 256), VL-FFN in the top one, layer scale 0.1, q/v bias
without k bias, relative position bias (4x4 grid of 8 px patches of 32 px images + class token, 24
text tokens); pairs with one or two objects whose captions bind colour and size to each shape.
Losses: ITC 0.5 + VL-expert ITC 0.5 (VLMo's average of the two), ITM 1, MLM 1 (VLMo weighs MLM 0.25;
at this size and length the higher weight lets MLM learn within the run). Evaluated on 500 held-out
pairs: retrieval R@1/5/10 in dual-encoder mode (image-only and text-only passes, ``retrieval``), the
same ranking re-ranked over its top 10 by the fused pass's ITM (``rerank``), ITM accuracy (chance 0.5)
and masked-token accuracy with the image (against the unigram baseline).

Measured on 2 shared CPU cores (heavily loaded; 14 minutes in all, about 2 minutes of it compiling,
1.1-2.4 s/step), 500 steps at batch 64, 419,716 parameters, on 500 held-out pairs:
- dual-encoder retrieval R@1 image->text / text->image 0.248 / 0.256 (chance 0.002), R@5 0.766 / 0.746,
  R@10 0.94 / 0.906;
- MLM accuracy with the image 0.450 (unigram baseline 0.122);
- ITM accuracy 0.5 (ranking accuracy 0.562): ITM has NOT learned here (it predicts "no match", the 2:1
  prior of the hard-negative pairs, throughout), so re-ranking by it lowers R@1 to 0.100 / 0.098.
  Open: why the fused pass's ITM does not learn while MLM on the same pass does. What is known: the
  gradient path is sound (the fused ITM fits 32 fixed pairs in 20 steps); ITM alone with random
  negatives (no ITC, no MLM) only starts to learn after about 160 steps (train loss 0.60-0.67 at
  160-200); in the full recipe the hard-negative ITM loss sits at the 1:2 prior's entropy (0.637) from
  step 40 on. The relative position bias alone makes the image-only pass nearly blind to where an
  object is (shifting every image by one patch moves the image embedding by 0.0004, another image by
  1.1, at initialisation), while the captions name positions: the ITC-drawn hard negatives are then
  images the model cannot tell apart. ``model.image_abs_pos=True`` adds learned absolute patch
  positions (BEiT / VLMo ``use_abs_pos_emb``); with it the ITM loss was still at the prior after 130
  steps (the run was cut there), so whether it fixes ITM is not yet measured.
ITM does learn with three overrides (2-core CPU, 10.5 minutes; entry in ``benchmarks/RESULTS.md``):
    python -m vlfm.train --config configs/vlmo_tiny.py --workdir workdirs/vlmo_tiny_1500 \
        --config.total_steps=1500 --config.model.image_abs_pos=True \
        "--config.optimizer.lr_multipliers=(('(transformer/vl_layer.*|pooler|itm_head)/.*', 5.0),)"
ITM 0.507 at step 750, 0.831 at step 1,500 (ranking 0.99); dual-encoder R@1 0.654 / 0.642; MLM 0.681;
re-ranking by ITM still lowers R@1 (0.362 / 0.366). Which override it needs is not separated.
With ``init_std=0.02`` (BERT's) instead of the default initialisation the contrastive losses sit at
log(batch) for 450 steps: after 1,000 steps R@1 is only 0.028 / 0.026, MLM 0.516, ITM 0.5.
"""

import ml_collections

from vlfm.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 500
    c.model = ml_collections.ConfigDict(dict(
        name="vlmo", vocab_size=96, max_text_len=24, image_size=32, patch_size=8, width=64, depth=4, num_heads=4,
        mlp_dim=256, vl_depth=1, layer_scale=0.1, qkv_bias="qv", relative_position=True, dropout_rate=0.0,
        init_std=None, contrastive_dim=64, vl_contrastive=True, mlm=True, itm="hard",
    ))
    c.losses = ml_collections.ConfigDict(dict(
        softmax_contrastive=dict(weight=0.5),
        itc_vl=dict(fn="softmax_contrastive", prefix="vl_", weight=0.5),
        itm=dict(weight=1.0),
        masked_xent=dict(weight=1.0),
    ))
    c.data = ml_collections.ConfigDict(dict(name="shapes_vl", num_examples=20_000, image_size=32, max_objects=2,
                                            max_len=24, mlm_prob=0.15, batch_size=64, num_workers=0,
                                            train_split="train"))
    c.optimizer.lr = dict(name="cosine", peak=1e-3, warmup_steps=100)
    c.optimizer.weight_decay = 0.01
    c.optimizer.b2 = 0.98
    c.evals = ml_collections.ConfigDict(dict(
        retrieval=dict(type="retrieval", every=250, split="validation", num_examples=500),
        rerank=dict(type="itm_rerank_retrieval", every=250, split="validation", num_examples=500, k=10),
        itm=dict(type="itm_accuracy", every=250, split="validation", num_examples=500),
        mlm=dict(type="vl_mlm_accuracy", every=250, split="validation", num_examples=500),
    ))
    c.log_every = 50
    c.checkpoint_every = 500
    return c
