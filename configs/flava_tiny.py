"""A tiny FLAVA on the built-in shapes data: image-only, text-only and pair tasks in one run.

Command:
    python -m vlfm.train --config configs/flava_tiny.py --workdir workdirs/flava_tiny

Three tasks alternate step by step (``schedule="round_robin"``, FLAVA's round-robin over its data
sources), each with its own data and losses:

- ``image`` (single-object images alone): MIM, the codes of 40% random patches (a frozen k-means
  tokenizer of 64 codes fitted on 2,000 built-in training images, cached) predicted from the masked
  image encoder;
- ``text`` (captions alone, BERT masking 15%): MLM from the text encoder;
- ``pairs`` (image-caption pairs): global contrastive on the unmasked passes, ITM (half of the pairs
  get another row's image), and MMM (masked image + masked text through the multimodal encoder; codes
  and words of the matching pairs).

Model: width 64, 4 heads, MLP 256; image and text encoders 2 layers, multimodal encoder 2 layers; 32 px
images in 8 px patches (16 patches), 16 text tokens. Each task reports its metrics under
``train/<task>/``; the evals score each objective against its baseline on 500 held-out examples: MIM
and MMM-image token accuracy (``unigram_baseline``: always the most frequent masked code), MLM and
MMM-text accuracy (unigram baseline), ITM accuracy (chance 0.5) and retrieval R@1 (chance 1/500).

Measured on 2 shared (heavily loaded) CPU cores, 600 steps (200 per task), 390,379 parameters, about
0.5 s/step steady, 20 min wall in all with evals:
    python -m vlfm.train --config configs/flava_tiny.py --workdir workdirs/flava_tiny --config.total_steps=600 \
        --config.checkpoint_every=600 --config.evals.mim.every=300 --config.evals.mlm.every=300 \
        --config.evals.itm.every=300 --config.evals.mmm_text.every=300 --config.evals.mmm_image.every=300 \
        --config.evals.retrieval.every=300
MIM token accuracy 0.465 and MMM-image 0.474 (unigram baseline 0.058), MLM 0.486 (unigram 0.130),
MMM-text 0.530 (unigram 0.140); ITM 0.487 and retrieval R@1 0.006 / 0.002 (chance 0.5 and 0.002): after
200 pair steps the matching objectives have not started to learn. The full 1,500 steps were not run.
"""

import ml_collections

from vlfm.train.config import base_config

IMAGES = dict(name="shapes", num_examples=20_000, image_size=32, max_objects=1, view="image", batch_size=64,
              num_workers=0, train_split="train")
TEXT = dict(name="shapes", num_examples=20_000, view="text", max_len=16, mlm_prob=0.15, batch_size=64,
            num_workers=0, train_split="train")
PAIRS = dict(name="shapes_vl", num_examples=20_000, image_size=32, max_objects=1, max_len=16, mlm_prob=0.15,
             batch_size=64, num_workers=0, train_split="train")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg="pairs"``: the pair task alone (contrastive, ITM, MMM), for studying the matching objectives."""
    if arg not in (None, "", "pairs"):
        raise ValueError(f"flava_tiny takes no argument or 'pairs', got {arg!r}")
    c = base_config()
    c.total_steps = 1500
    c.model = ml_collections.ConfigDict(dict(
        name="flava", width=64, num_heads=4, mlp_dim=256, image_depth=2, text_depth=2, mm_depth=2, image_size=32,
        patch_size=8, vocab_size=84, max_text_len=16, projection_dim=64, image_vocab_size=64, tokenizer="kmeans",
        init_std=None, mim_ratio=0.4, mim=True, mlm=True, mmm=True, itm=True,
    ))
    mim = dict(fn="masked_xent", logits_key="mim_logits", target_key="mim_targets")
    c.tasks = ml_collections.ConfigDict(dict(
        image=dict(data=dict(IMAGES), losses=dict(mim=mim)),
        text=dict(data=dict(TEXT), losses=dict(mlm=dict(fn="masked_xent"))),
        pairs=dict(data=dict(PAIRS), losses=dict(
            contrastive=dict(fn="softmax_contrastive"),
            itm=dict(),
            mmm_image=dict(fn="masked_xent", logits_key="mmm_image_logits", target_key="mmm_image_targets"),
            mmm_text=dict(fn="masked_xent", logits_key="mmm_text_logits", target_key="mmm_text_targets"))),
    ))
    if arg == "pairs":
        del c.tasks["image"], c.tasks["text"]
    c.schedule = "round_robin"
    c.optimizer.lr = dict(name="cosine", peak=2e-3, warmup_steps=100)
    c.optimizer.weight_decay = 0.01
    held_out = dict(every=500, split="validation", num_examples=500)
    c.evals = ml_collections.ConfigDict(dict(
        mim=dict(type="token_accuracy", data=dict(IMAGES), predict="mim_tokens", pad_id=-1, **held_out),
        mlm=dict(type="mlm_accuracy", data=dict(TEXT), **held_out),
        itm=dict(type="itm_accuracy", data=dict(PAIRS), **held_out),
        mmm_text=dict(type="vl_mlm_accuracy", data=dict(PAIRS), **held_out),
        mmm_image=dict(type="token_accuracy", data=dict(PAIRS), predict="mmm_image_tokens", pad_id=-1, **held_out),
        retrieval=dict(type="retrieval", data=dict(PAIRS), **held_out),
    ))
    if arg == "pairs":
        c.evals = ml_collections.ConfigDict({k: c.evals[k] for k in ("itm", "mmm_text", "mmm_image", "retrieval")})
    c.log_every = 50
    c.checkpoint_every = 500
    return c
