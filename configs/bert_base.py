"""BERT-base masked language model (HF ``BertModel`` sizes plus the tied MLM head).

Encoder + pooler: 109,482,240 parameters, equal to HF ``BertModel`` (bert-base-uncased); the MLM head
(transform, LayerNorm, decoder bias; decoder tied to the word embeddings as in ``BertForMaskedLM``)
adds 622,650.

Command:
    python -m vlfm.train --config configs/bert_base.py --workdir workdirs/bert_base

On the built-in captions (vocabulary of 57 words, padded into BERT's 30,522 slots) MLM accuracy rises
far above the unigram baseline within 1,000 steps on one GPU. Load real BERT weights with
``python -m vlfm.convert import HF_DIR OUT_DIR`` and fine-tune from them.
"""

import ml_collections

from vlfm.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 2000
    c.model = ml_collections.ConfigDict(dict(
        name="text_encoder",
        text=dict(name="bert", vocab_size=30522, max_len=512, width=768, depth=12, num_heads=12, mlp_dim=3072,
                  mlm_head=True, tie_mlm_decoder=True, dtype="bfloat16", attention="auto"),
    ))
    c.losses = ml_collections.ConfigDict(dict(masked_xent=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes", num_examples=50_000, view="text", max_len=32,
                                            mlm_prob=0.15, batch_size=256, num_workers=0, train_split="train"))
    c.optimizer.update(dict(name="adamw", lr=dict(name="linear", peak=1e-4, warmup_steps=200),
                        weight_decay=0.01, clip_norm=1.0))
    return c
