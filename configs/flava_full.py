"""FLAVA-Full at the size of HF ``FlavaConfig()``: ViT-B/16 image encoder, BERT-base-sized text encoder
(both pre-LN, 12 layers, 768 wide), a 6-layer multimodal encoder, and the five pretraining heads.

Parameters (``tests/test_flava.py`` checks them with ``jax.eval_shape``): 241,356,289 without heads,
exactly HF ``FlavaModel(FlavaConfig())`` (image encoder 86,390,016, text encoder 109,483,776,
multimodal encoder 43,120,128, four 768x768 projections, logit_scale); 303,859,063 with the MIM, MLM,
MMM-image, MMM-text and ITM heads, which is ``FlavaForPreTraining``'s 357,645,303 less its DALL-E
encoder (53,786,240), a frozen image tokenizer here, not a parameter.

Recipe (facebookresearch/multimodal ``examples/flava``): AdamW (0.9, 0.999), eps 1e-8, lr 1e-3,
weight decay 0.1, 10k warm-up steps; the three data sources alternate (``round_robin``). All six losses
have weight 1. MIM targets: the codes of a dVAE; import FLAVA's with
``vlfm.convert.hf_flava.load_hf_flava(HF_DIR, codebook="dalle.npz")`` and set ``model.tokenizer`` to the
``.npz`` (the default k-means codebook of 8,192 codes is a built-in-data stand-in). Masks: 40% random
patches, or BEiT blocks from the data pipeline (``image.mim`` of the image field gives ``image_mask``).

Command (GPU/TPU; on the built-in data as a smoke test, real corpora come from the data configs):
    python -m vlfm.train --config configs/flava_full.py --workdir workdirs/flava_full
Runtime: not run on CPU.
"""

import ml_collections

from vlfm.train.config import base_config

IMAGES = dict(name="shapes", num_examples=4_000, image_size=224, view="image", batch_size=256, num_workers=0,
              train_split="train")
TEXT = dict(name="shapes", num_examples=4_000, view="text", max_len=40, mlm_prob=0.15, batch_size=256,
            num_workers=0, train_split="train")
PAIRS = dict(name="shapes_vl", num_examples=4_000, image_size=224, max_len=40, mlm_prob=0.15, batch_size=256,
             num_workers=0, train_split="train")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 450_000
    c.model = ml_collections.ConfigDict(dict(
        name="flava", width=768, num_heads=12, mlp_dim=3072, image_depth=12, text_depth=12, mm_depth=6,
        image_size=224, patch_size=16, vocab_size=30522, max_text_len=512, projection_dim=768,
        image_vocab_size=8192, ln_eps=1e-12, head_ln_eps=1e-12, init_std=0.02, mim_ratio=0.4,
        mim=True, mlm=True, mmm=True, itm=True, dtype="bfloat16", attention="auto",
    ))
    mim = dict(fn="masked_xent", logits_key="mim_logits", target_key="mim_targets")
    c.tasks = ml_collections.ConfigDict(dict(
        image=dict(data=IMAGES, losses=dict(mim=mim)),
        text=dict(data=TEXT, losses=dict(mlm=dict(fn="masked_xent"))),
        pairs=dict(data=PAIRS, losses=dict(
            global_contrastive=dict(fn="softmax_contrastive"),
            itm=dict(),
            mmm_image=dict(fn="masked_xent", logits_key="mmm_image_logits", target_key="mmm_image_targets"),
            mmm_text=dict(fn="masked_xent", logits_key="mmm_text_logits", target_key="mmm_text_targets"))),
    ))
    c.schedule = "round_robin"
    c.optimizer.update(dict(name="adamw", lr=dict(name="cosine", peak=1e-3, warmup_steps=10_000), weight_decay=0.1,
                            b1=0.9, b2=0.999, eps=1e-8))
    c.evals = ml_collections.ConfigDict()
    c.log_every = 100
    c.checkpoint_every = 10_000
    return c
