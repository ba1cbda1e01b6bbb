"""``configs/florence_tiny.py`` with a tiny Swin image tower instead of its ViT: UniCL's image-label + caption
contrast on the built-in shapes data, same text tower, data mixture, loss, optimizer, steps and evaluations.

Swin: 4 px patches (an 8x8 grid), window 4, two stages of one block pair each (the first pair's second
block attends over shifted windows; after the 2x2 merge the 4x4 grid is a single window, so neither block
of the second stage shifts), width 32 -> 64, heads 2 / 4, the tokens averaged into the pooled feature.
``captions_only`` and ``pair_classes`` as in ``configs/florence_tiny.py``.

Command:
    python -m vlfm.train --config configs/florence_tiny_swin.py --workdir workdirs/florence_tiny_swin
"""

import os

import ml_collections

from vlfm.train.config import load_config_file

SWIN = dict(name="swin", image_size=32, patch_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    path = os.path.join(os.path.dirname(__file__), "florence_tiny.py")
    c = load_config_file(f"{path}:{arg}" if arg else path)
    c.model.image = ml_collections.ConfigDict(SWIN)
    return c
