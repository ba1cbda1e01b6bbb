"""``configs/florence_tiny.py`` with a tiny Swin image tower instead of its ViT: UniCL's image-label + caption
contrast on the built-in shapes data, same text tower, data mixture, loss, optimizer, steps and evaluations.

Swin: 4 px patches (an 8x8 grid), window 4, two stages of one block pair each (the first pair's second
block attends over shifted windows; after the 2x2 merge the 4x4 grid is a single window, so neither block
of the second stage shifts), width 32 -> 64, heads 2 / 4, the tokens averaged into the pooled feature.
``captions_only`` and ``pair_classes`` as in ``configs/florence_tiny.py``.

Linear and convolution kernels start Xavier-uniform (``init_std=None``, as the ViT of ``florence_tiny``);
Swin's own truncated normal with std 0.02 is far smaller than Xavier at width 32 and learns much more slowly
here (second row below).

Commands:
    python -m vlfm.train --config configs/florence_tiny_swin.py --workdir workdirs/florence_tiny_swin
    python -m vlfm.train --config configs/florence_tiny_swin.py --workdir workdirs/florence_tiny_swin_std02 \
        --config.model.image.init_std=0.02

Results (2026-12-07, a 2-core CPU shared with other jobs; 400 steps at batch 64, labels + captions; evaluated
at the end on 500 held-out shapes examples as in ``configs/florence_tiny.py``: zero-shot over 56 classes,
chance 0.018; retrieval over 500 pairs, chance 0.002):

    run                             params    zero-shot top-1 / top-5   i2t R@1 / R@5   t2i R@1 / R@5   loss   wall
    Swin, Xavier init (this config) 250,093   0.126 / 0.538            0.058 / 0.342   0.074 / 0.350   1.89   4 min
    Swin, trunc-normal 0.02         250,093   0.082 / 0.376            0.018 / 0.096   0.022 / 0.094   2.90   6 min
    ViT (configs/florence_tiny.py)  271,425   0.108 / 0.550            0.076 / 0.358   0.070 / 0.362   1.85  13 min

(The ViT row is that config's recorded run of 2026-12-06.) At this size the Swin tower matches the ViT:
within run-to-run spread (an earlier Swin run, whose position bias was still weight-decayed, gave 0.122 / 0.530
zero-shot and 0.076 / 0.084 R@1).
"""

import os

import ml_collections

from vlfm.train.config import load_config_file

SWIN = dict(name="swin", image_size=32, patch_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4,
            init_std=None)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    path = os.path.join(os.path.dirname(__file__), "florence_tiny.py")
    c = load_config_file(f"{path}:{arg}" if arg else path)
    c.model.image = ml_collections.ConfigDict(SWIN)
    return c
