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

Measured on 2 shared CPU cores (load average 15-22), configs as at this commit (each run's saved config
equals the one its command builds here), 390,379 parameters, 500 held-out examples per eval:

- The config's 1,500 steps (500 per task), 22 min wall:
    python -m vlfm.train --config configs/flava_tiny.py --workdir workdirs/flava_tiny \\
        --config.checkpoint_every=1500 --config.evals.mim.every=1500 --config.evals.mlm.every=1500 \\
        --config.evals.mmm_text.every=1500 --config.evals.mmm_image.every=1500 --config.evals.retrieval.every=1500
  MIM 0.611 and MMM-image 0.604 (unigram 0.058), MLM 0.579 (0.130), MMM-text 0.614 (0.140); retrieval
  R@1 i2t / t2i 0.146 / 0.170, R@10 0.810 / 0.814 (chance 0.002); ITM 0.552, ranking 0.584 (chance 0.5;
  0.510 and 0.491 at steps 500 and 1,000): ITM has at most begun to move.
- 900 steps, 5 min wall: the same command with --config.total_steps=900 --config.checkpoint_every=900,
  every eval at 900 except itm and retrieval at 450: MIM 0.595, MLM 0.549, MMM-image 0.595, MMM-text
  0.586, retrieval R@1 0.082 / 0.092, ITM 0.505.
- The pair task alone, ITM over the unmasked pair, 5x learning rate on the multimodal encoder and the
  ITM head, 500 steps, 8 min wall:
    python -m vlfm.train --config configs/flava_tiny.py:pairs --workdir workdirs/flava_tiny_pairs \\
        --config.total_steps=500 --config.model.itm_masked=False --config.evals.itm.every=250 \\
        "--config.optimizer.lr_multipliers=(('(mm_encoder|itm_head)/.*', 5.0),)"
  Retrieval R@1 0.296 / 0.286, R@5 0.816 / 0.814; MMM-image 0.591, MMM-text 0.546; ITM 0.502: still at
  chance (training ITM loss 0.693 at step 500).
- The same for 1,500 steps (17 min wall): ITM learns, late, as VLMo's does:
    python -m vlfm.train --config configs/flava_tiny.py:pairs --workdir workdirs/flava_tiny_pairs_1500 \\
        --config.total_steps=1500 --config.model.itm_masked=False --config.evals.itm.every=500 \\
        "--config.optimizer.lr_multipliers=(('(mm_encoder|itm_head)/.*', 5.0),)"
  ITM 0.558 / 0.787 / 0.947 at steps 500 / 1,000 / 1,500 (ranking 0.972 at 1,500); retrieval R@1 0.620 /
  0.612, R@5 1.0 / 0.996; MMM-image 0.638, MMM-text 0.669.
- The config's mixed 1,500 steps with the same two changes (the first command plus
  --config.model.itm_masked=False and the lr_multipliers above): ITM 0.570 (ranking 0.552; 0.485 and
  0.501 at steps 500 and 1,000), MIM 0.612, MLM 0.564, MMM-image 0.608, MMM-text 0.577, retrieval R@1
  0.150 / 0.138: ITM needs more pair steps than the mixed run's 500.

Initialisation: ``init_std=None`` (Xavier). With BERT's 0.02 (``--config.model.init_std=0.02``) the
contrastive loss sat at ln(batch) = 4.16 from step 200 on in a 600-step run (200 pair steps) (the command above
with --config.total_steps=600 --config.checkpoint_every=600 and every eval at 300): ITM 0.487, retrieval
R@1 0.006 / 0.002, MIM 0.465, MLM 0.486. ITM learns more slowly than ViLT's on the same data
(vilt_tiny: 0.887 after 500 steps).
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
