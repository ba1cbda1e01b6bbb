"""VLC-Base: a ViLT-style single-stream ViT-B/16 (12 layers, width 768, pre-LN, 224 px images, 40 text
tokens) trained from captions with MLM (whole-word masking 15%), ITM (random negatives) and MAE pixel
reconstruction (60% of the patches dropped in the MLM pass; an 8-layer, 512-wide, 16-head MAE decoder
with fixed sin-cos positions; normalised-pixel loss, weight 1), as guilk/VLC ``task_mlm_itm_mae``.

Parameters (``tests/test_vlc.py`` checks them by hand with ``jax.eval_shape``): the encoder with text
embeddings and pooler (as ViLT-B/16 at 224 px), the MLM head (untied), ITM, and the MAE decoder.
VLC starts its encoder from MAE-pretrained ImageNet weights. An HF ``ViTMAEModel`` or
``ViTMAEForPreTraining`` directory (e.g. facebook/vit-mae-base) imports as a vlfm ViT
(``image_classifier``: MAE's encoder; its fixed sin-cos position table becomes the learned table's
starting value, its pixel decoder is left out with a warning), and ``init_from.rename`` (set below to
``VIT_TO_VILT``, as ``configs/vilt_b32.py``) puts the patch and position embeddings, class token,
encoder and final LayerNorm in VLC's places; the text embeddings, pooler, heads and VLC's own MAE
decoder start fresh:
    python -m vlfm.convert import $HF/vit-mae-base workdirs/vit_mae_base
    python -m vlfm.train --config configs/vlc_base.py --workdir workdirs/vlc_base \\
        --config.init_from.params=workdirs/vit_mae_base/params
(``init_from.hf=$HF/vit-mae-base`` converts on load instead.) The ViT must match VLC's width, depth,
heads and patch grid (ViT-B/16 at 224 px here); ``ln_eps`` should match the checkpoint's
``layer_norm_eps`` (HF ``ViTMAEConfig``'s default is 1e-12, as here). ``tests/test_vitmae.py`` checks
this path at tiny sizes: the imported tower against HF ``ViTMAEModel``, then a VLC started through
this rename.

Hyperparameters (guilk/VLC ``vlc/config.py``): AdamW lr 1e-4, weight decay 0.01, 2,500 warm-up steps,
linear decay, 25k steps at batch 4096 (256 here).

Command (GPU/TPU; on the built-in data as a smoke test, real corpora come from the data configs):
    python -m vlfm.train --config configs/vlc_base.py --workdir workdirs/vlc_base
Runtime: not run on CPU.
"""

import ml_collections

from vlfm.convert.hf_fusion import VIT_TO_VILT
from vlfm.optim.optimizers import DEFAULT_NO_DECAY
from vlfm.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 25_000
    c.model = ml_collections.ConfigDict(dict(
        name="vlc", vocab_size=30522, max_text_len=40, image_size=224, patch_size=16, width=768, depth=12,
        num_heads=12, mlp_dim=3072, ln_eps=1e-12, init_std=0.02, mlm=True, itm="random", mae=True, mae_ratio=0.6,
        decoder_width=512, decoder_depth=8, decoder_heads=16, decoder_mlp_dim=2048, dtype="bfloat16",
        attention="auto",
    ))
    c.init_from.rename = VIT_TO_VILT  # used when init_from names a ViT (an imported HF ViTMAE, say)
    c.losses = ml_collections.ConfigDict(dict(masked_xent=dict(weight=1.0), itm=dict(weight=1.0),
                                              mae_pixel=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes_vl", num_examples=4_000, image_size=224, max_len=40,
                                            mlm_prob=0.15, batch_size=256, num_workers=0, train_split="train"))
    c.optimizer.update(dict(name="adamw", lr=dict(name="linear", peak=1e-4, warmup_steps=2_500, end=0.0),
                            weight_decay=0.01, no_decay=DEFAULT_NO_DECAY))
    c.evals = ml_collections.ConfigDict(dict(
        itm=dict(type="itm_accuracy", every=5_000, split="validation", num_examples=1000),
        mlm=dict(type="vl_mlm_accuracy", every=5_000, split="validation", num_examples=1000),
    ))
    c.log_every = 100
    c.checkpoint_every = 5_000
    return c
