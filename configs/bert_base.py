r"""BERT-base masked language model (HF ``BertModel`` sizes plus the tied MLM head).

Encoder + pooler: 109,482,240 parameters, equal to HF ``BertModel`` (bert-base-uncased); the MLM head
(transform, LayerNorm, decoder bias; decoder tied to the word embeddings as in ``BertForMaskedLM``)
adds 622,650.

Command:
    python -m vlfm.train --config configs/bert_base.py --workdir workdirs/bert_base

On the built-in captions (vocabulary of 57 words, padded into BERT's 30,522 slots) MLM accuracy rises
far above the unigram baseline within 1,000 steps on one GPU. Load real BERT weights with
``python -m vlfm.convert import HF_DIR OUT_DIR`` and fine-tune from them.

Paper-data recipe
-----------------
Datasets: English Wikipedia + BookCorpus as plain text, one document per line (``text_files``), with
BERT's uncased WordPiece vocabulary (``vocab.txt`` of the HF ``bert-base-uncased`` checkpoint), 15%
whole-word masking, 128 word pieces per example (BERT's first phase; the next-sentence objective is
not part of this config). Held out: a few thousand documents in a separate folder.

Prepare (once; ``pip install -e ".[tfds_prepare]"``):
    tfds build wikipedia/20230601.en --data_dir $ROOT/tfds     # or any wikipedia/<date>.en config
    python - <<'PY'   # one article per line; BookCorpus (or any other corpus) the same way
    import os, tensorflow_datasets as tfds
    root = os.environ["ROOT"]
    os.makedirs(f"{root}/corpus", exist_ok=True); os.makedirs(f"{root}/corpus-valid", exist_ok=True)
    for split, folder in (("train[:99%]", "corpus"), ("train[99%:]", "corpus-valid")):
        with open(f"{root}/{folder}/wikipedia.txt", "w") as f:
            for ex in tfds.as_numpy(tfds.load("wikipedia/20230601.en", split=split, data_dir=f"{root}/tfds")):
                f.write(" ".join(ex["text"].decode().split()) + "\n")
    PY

Launch (tests/test_recipes.py checks that these commands, through the launchers' dry runs, give
configs that load):
    ROOT=/mnt/vlfm/data    # TPU: the bucket's data/ folder, mounted on every worker by `tpu_pod.sh setup`;
                           # SLURM: a file system every node sees, e.g. ROOT=/shared/data
    DATA="{'name': 'text_files', 'batch_size': 256, 'num_workers': 4,
           'paths': {'train': '$ROOT/corpus/*.txt', 'validation': '$ROOT/corpus-valid/*.txt'},
           'text': {'tokenizer': {'kind': 'wordpiece', 'path': '$ROOT/bert-base-uncased/vocab.txt'},
                    'max_len': 128, 'mlm_prob': 0.15, 'whole_word': True}}"
    EVALS="{'mlm': {'type': 'mlm_accuracy', 'every': 10000, 'split': 'validation', 'num_examples': 10000}}"
    # on a TPU slice
    export TPU_NAME=vlfm-v5p ZONE=us-east5-a ACCELERATOR=v5p-16 BUCKET=gs://my-bucket
    launch/tpu_pod.sh run configs/bert_base.py bert_base --config.data="$DATA" --config.evals="$EVALS" \
        --config.total_steps=1000000 --config.optimizer.lr.warmup_steps=10000
    # or on a SLURM GPU cluster (1 node x 8 GPUs)
    CONFIG=configs/bert_base.py WORKDIR=/shared/workdirs/bert_base sbatch --nodes=1 launch/slurm.sbatch \
        --config.data="$DATA" --config.evals="$EVALS" --config.total_steps=1000000 \
        --config.optimizer.lr.warmup_steps=10000

Evaluate saved weights (``python -m vlfm.evaluate``; ``mlm_accuracy``: accuracy on the masked word
pieces of held-out documents, and the unigram baseline):
    python -m vlfm.evaluate --workdir /shared/workdirs/bert_base --progress log --format table

Reported figures: the paper digest of this project records no BERT figure (GLUE and SQuAD fine-tuning
are not part of vlfm), so this recipe states no target; compare the MLM accuracy with the HF
``bert-base-uncased`` checkpoint evaluated the same way (``--hf DIR``).
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
