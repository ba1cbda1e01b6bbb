"""A tiny BERT masked language model on the built-in captions; UFO's text teacher.

Command:
    python -m vlfm.train --config configs/bert_tiny.py --workdir workdirs/bert_tiny

Expected result (2 CPU cores): about 1 minute for 400 steps at batch 128; held-out masked-token
accuracy well above the unigram baseline. Its ``workdirs/bert_tiny/params`` export is the text teacher
of ``configs/ufo_tiny.py``.
"""

import ml_collections

from vlfm.train.config import base_config

TEXT = dict(name="shapes", num_examples=20_000, view="text", max_len=24, mlm_prob=0.15, batch_size=128,
            num_workers=0, train_split="train")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 400
    c.model = ml_collections.ConfigDict(dict(
        name="text_encoder",
        text=dict(name="bert", vocab_size=57, max_len=24, width=64, depth=3, num_heads=4, mlp_dim=256,
                  dropout_rate=0.0, attn_dropout_rate=0.0, pooler=False, mlm_head=True, tie_mlm_decoder=False)))
    c.losses = ml_collections.ConfigDict(dict(masked_xent=dict()))
    c.data = ml_collections.ConfigDict(TEXT)
    c.optimizer.lr = dict(name="cosine", peak=2e-3, warmup_steps=50)
    c.optimizer.weight_decay = 0.01
    c.evals = ml_collections.ConfigDict(dict(
        mlm=dict(type="mlm_accuracy", every=200, split="validation", num_examples=500)))
    c.log_every = 50
    c.checkpoint_every = 400
    return c
