"""A tiny VLC on the built-in shapes pairs: MLM over a masked image + MAE pixel reconstruction + ITM.

Command:
    python -m vlfm.train --config configs/vlc_tiny.py --workdir workdirs/vlc_tiny

Model: ``vilt_tiny``'s single-stream encoder (width 64, 4 layers, 4 heads, 16 word tokens, 16 patches
of 8x8 + class token) with VLC's MAE: 60% of the patches are dropped in the MLM pass and a 1-layer,
32-wide MAE decoder reconstructs them (``mae_pixel``: per-patch normalised pixels, masked patches
only). Losses: masked_xent (MLM), itm (random negatives, unmasked images), mae_pixel (weight 1, as
VLC). The ``mae_pixel/mean_baseline`` metric is the loss of predicting each patch's mean, the bar the
MAE loss must get below; evaluated on 500 held-out pairs: ITM accuracy (chance 0.5) and MLM accuracy
with the masked image (unigram baseline).

Measured on 2 shared CPU cores (load average 15-22), configs as at this commit, 257,154 parameters,
1,000 of the 1,500 steps, 33.6 min wall:
    python -m vlfm.train --config configs/vlc_tiny.py --workdir workdirs/vlc_tiny \\
        --config.total_steps=1000 --config.checkpoint_every=1000
Step 1,000: ITM 0.929 (ranking 0.930; chance 0.5), MLM 0.675 (unigram 0.140); step 500: ITM 0.620,
MLM 0.646. MAE pixel loss on the training batches (no held-out MAE eval in this config): 0.577 averaged
over steps 800-1,000 against a ``mean_baseline`` of 0.997 (1.009 at step 50, 0.710 at step 200).
Inter-modality flow of that run on 500 held-out pairs (attention rollout, residual 0.5), 8 s wall:
    python -m vlfm.evaluate --workdir workdirs/vlc_tiny --evals imf \\
        "--config.evals.imf={'type': 'inter_modality_flow', 'split': 'validation', 'num_examples': 500}"
IMF per layer 0.158 / 0.241 / 0.327 / 0.397 (uniform attention: 0.469). The full 1,500 steps were not run.
"""

import ml_collections

from vlfm.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 1500
    c.model = ml_collections.ConfigDict(dict(
        name="vlc", vocab_size=96, max_text_len=16, image_size=32, patch_size=8, width=64, depth=4, num_heads=4,
        mlp_dim=256, dropout_rate=0.0, init_std=None, mlm=True, itm="random", mae=True, mae_ratio=0.6,
        decoder_width=32, decoder_depth=1, decoder_heads=2, decoder_mlp_dim=128,
    ))
    c.losses = ml_collections.ConfigDict(dict(masked_xent=dict(weight=1.0), itm=dict(weight=1.0),
                                              mae_pixel=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes_vl", num_examples=20_000, image_size=32, max_objects=1,
                                            max_len=16, mlm_prob=0.15, batch_size=64, num_workers=0,
                                            train_split="train"))
    c.optimizer.lr = dict(name="cosine", peak=2e-3, warmup_steps=100)
    c.optimizer.weight_decay = 0.01
    c.evals = ml_collections.ConfigDict(dict(
        itm=dict(type="itm_accuracy", every=500, split="validation", num_examples=500),
        mlm=dict(type="vl_mlm_accuracy", every=500, split="validation", num_examples=500),
    ))
    c.log_every = 50
    c.checkpoint_every = 500
    return c
