r"""ViLT-B/32 at HF ``ViltConfig()`` sizes: 111,595,008 parameters without heads (equal to HF
``ViltModel``), pretrained with MLM (whole-word masking) + ITM + word-patch alignment (weight 0.1).

ViLT-B/32 is a ViT-B/32 transformer (12 layers, width 768, pre-LN, LayerNorm eps 1e-12) over
[40 BERT word-piece positions; 12x12 patches of a 384 px image + class token], with modality-type
embeddings. Heads: MLM (transform + untied decoder: 24,063,546 with the 30,522-word vocabulary, as the
original ViLT), ITM (1,538). Start it from ViT-B/32 weights at 384 px, as ViLT does:
``--config.init_from.hf=<HF google/vit-base-patch32-384 directory>`` (or ``init_from.params`` of a vlfm
ViT run); ``init_from.rename`` maps the ViT's patch/position embeddings, class token, encoder, final
LayerNorm and pooler onto ViLT's, the text embeddings and heads start fresh. HF ViLT checkpoints
import with ``python -m vlfm.convert import``.

Command (GPU/TPU; on the built-in data as a smoke test, real corpora come from the data configs):
    python -m vlfm.train --config configs/vilt_b32.py --workdir workdirs/vilt_b32

Hyperparameters follow dandelin/ViLT: AdamW lr 1e-4, weight decay 0.01, 10% warm-up then linear
decay, batch 4096 in the paper (256 here). Runtime: measure with ``benchmarks/train_step.py``; not
run on CPU.

Paper-data recipe
-----------------
Datasets: the "4M" pretraining set of ViLT: COCO captions, Visual Genome region captions, SBU Captions
and Google Conceptual Captions (GCC = CC3M), about 4.1M images and 10M captions [MEM], mixed within
each batch in proportion to their images; text: BERT's uncased WordPiece, 40 tokens, 15% whole-word
masking. Downstream: VQAv2 (the ``vqav2`` reader: question / annotation JSON files and COCO images).
NLVR2 and SNLI-VE: the ``nlvr2`` / ``snli_ve`` readers of their
released JSON-lines files (README, "Standard evaluation protocols"), whose examples have the keys of the
built-in ``shapes_nlvr2`` / ``shapes_snli_ve``: fine-tune as ``configs/vilt_tiny_nlvr2.py`` /
``vilt_tiny_snli_ve.py`` with ``data`` pointed at them.

Prepare (once, where the data lives; ``pip install img2dataset`` and ``pip install -e ".[tfds_prepare]"``):
    # the "4M" images and captions (CC3M, SBU, COCO, VG) under $ROOT; the script names the downloads it reads
    ROOT=$ROOT bash launch/prepare_4m.sh
    # BERT's uncased WordPiece vocabulary: vocab.txt of HF bert-base-uncased in $ROOT/bert-base-uncased/
    # VQAv2 (visualqa.org): v2_OpenEnded_mscoco_{train2014,val2014,test-dev2015}_questions.json,
    # v2_mscoco_{train2014,val2014}_annotations.json in $ROOT/vqav2/; COCO train2014, val2014 and test2015
    # images in $ROOT/coco/; the answer vocabulary (the 3,129 most frequent normalised answers):
    python -m vlfm.data vqa-vocab --annotations $ROOT/vqav2/v2_mscoco_train2014_annotations.json \
        --size 3129 --out $ROOT/vqav2/answers.json

Launch (tests/test_recipes.py checks that these commands, through the launchers' dry runs, give
configs that load):
    ROOT=/mnt/vlfm/data    # TPU: the bucket's data/ folder, mounted on every worker by `tpu_pod.sh setup`;
                           # SLURM: a file system every node sees, e.g. ROOT=/shared/data
    IMG="{'size': 384, 'scale': (0.8, 1.0)}"
    TXT="{'tokenizer': {'kind': 'wordpiece', 'path': '$ROOT/bert-base-uncased/vocab.txt'}, 'max_len': 40,
          'mlm_prob': 0.15, 'whole_word': True}"
    JSON_TXT="{'key': 'json/captions', 'tokenizer': {'kind': 'wordpiece', 'path': '$ROOT/bert-base-uncased/vocab.txt'},
               'max_len': 40, 'mlm_prob': 0.15, 'whole_word': True}"
    COCO_TXT="{'key': 'captions/text', 'tokenizer': {'kind': 'wordpiece', 'path': '$ROOT/bert-base-uncased/vocab.txt'},
               'max_len': 40, 'mlm_prob': 0.15, 'whole_word': True}"
    DATA="{'name': 'mixture', 'batch_size': 4096, 'num_workers': 16, 'datasets': {
             'gcc': {'name': 'webdataset', 'weight': 3.0, 'urls': {'train': '$ROOT/cc3m/*.tar'}, 'image': $IMG, 'text': $TXT},
             'sbu': {'name': 'webdataset', 'weight': 0.87, 'urls': {'train': '$ROOT/sbu/*.tar'}, 'image': $IMG, 'text': $TXT},
             'vg': {'name': 'webdataset', 'weight': 0.11, 'urls': {'train': '$ROOT/vg/*.tar'}, 'image': $IMG, 'text': $JSON_TXT},
             'coco': {'name': 'tfds', 'weight': 0.11, 'tfds_name': 'coco_captions', 'data_dir': '$ROOT/tfds',
                      'split_names': {'train': 'train+restval'}, 'image': $IMG, 'text': $COCO_TXT}}}"
    COCO_VAL="{'name': 'tfds', 'tfds_name': 'coco_captions', 'data_dir': '$ROOT/tfds', 'split_names': {'validation': 'val'},
               'image': $IMG, 'text': $COCO_TXT}"
    EVALS="{'itm': {'type': 'itm_accuracy', 'every': 5000, 'num_examples': 5000, 'data': $COCO_VAL},
            'mlm': {'type': 'vl_mlm_accuracy', 'every': 5000, 'num_examples': 5000, 'data': $COCO_VAL}}"
    # on a TPU slice
    export TPU_NAME=vlfm-v5p ZONE=us-east5-a ACCELERATOR=v5p-128 BUCKET=gs://my-bucket
    launch/tpu_pod.sh run configs/vilt_b32.py vilt_b32 --config.data="$DATA" --config.evals="$EVALS" \
        --config.total_steps=200000 --config.optimizer.lr.warmup_steps=20000 \
        --config.init_from.hf=$ROOT/hf/vit-base-patch32-384
    # or on a SLURM GPU cluster (8 nodes x 8 GPUs)
    CONFIG=configs/vilt_b32.py WORKDIR=/shared/workdirs/vilt_b32 sbatch --nodes=8 launch/slurm.sbatch \
        --config.data="$DATA" --config.evals="$EVALS" --config.total_steps=200000 \
        --config.optimizer.lr.warmup_steps=20000 --config.init_from.hf=$ROOT/hf/vit-base-patch32-384
    # VQAv2 fine-tuning from the pretrained run (train + val questions as ViLT does for test-dev would
    # be a mixture of two vqav2 datasets; this trains on train and scores val)
    VQA="{'name': 'vqav2', 'answers': '$ROOT/vqav2/answers.json', 'batch_size': 256, 'num_workers': 16,
          'questions': {'train': '$ROOT/vqav2/v2_OpenEnded_mscoco_train2014_questions.json',
                        'validation': '$ROOT/vqav2/v2_OpenEnded_mscoco_val2014_questions.json',
                        'test': '$ROOT/vqav2/v2_OpenEnded_mscoco_test-dev2015_questions.json'},
          'annotations': {'train': '$ROOT/vqav2/v2_mscoco_train2014_annotations.json',
                          'validation': '$ROOT/vqav2/v2_mscoco_val2014_annotations.json'},
          'images': {'train': '$ROOT/coco/train2014/COCO_train2014_{image_id:012d}.jpg',
                     'validation': '$ROOT/coco/val2014/COCO_val2014_{image_id:012d}.jpg',
                     'test': '$ROOT/coco/test2015/COCO_test2015_{image_id:012d}.jpg'},
          'image': {'size': 384}, 'text': {'tokenizer': {'kind': 'wordpiece', 'path': '$ROOT/bert-base-uncased/vocab.txt'},
                                           'max_len': 40}}"
    VQA_EVALS="{'vqav2': {'type': 'vqav2', 'every': 2000, 'split': 'validation', 'data': $VQA},
                'testdev': {'type': 'vqav2', 'every': 100000, 'split': 'test', 'data': $VQA,
                            'results_file': '/shared/workdirs/vilt_b32_vqa/vqav2_test-dev.json'}}"
    CONFIG=configs/vilt_b32.py WORKDIR=/shared/workdirs/vilt_b32_vqa sbatch --nodes=1 launch/slurm.sbatch \
        --config.data="$VQA" --config.evals="$VQA_EVALS" --config.losses="{'vqa_bce': {'weight': 1.0}}" \
        --config.model.mlm=false --config.model.itm=none --config.model.vqa_answers=3129 \
        --config.total_steps=25000 --config.optimizer.lr.warmup_steps=2500 \
        --config.init_from.params=/shared/workdirs/vilt_b32/params

Evaluate saved weights with the standard protocols (``python -m vlfm.evaluate``; ``vqav2``: the official
normalisation and leave-one-out accuracy on val, and the test-dev submission file for the server):
    python -m vlfm.evaluate --workdir /shared/workdirs/vilt_b32 --progress log --format table
    python -m vlfm.evaluate --workdir /shared/workdirs/vilt_b32_vqa --progress log --format table

Reported figures a reproduction should reach (the paper digest, ViLT-B/32 200k steps; all [MEM]:
recalled from the paper, "fairly confident", not verified against it): VQAv2 test-dev 71.26; NLVR2
dev / test-P 75.70 / 76.13; COCO fine-tuned TR@1 / IR@1 61.5 / 42.7; Flickr30k fine-tuned 83.5 / 64.4;
zero-shot Flickr30k 73.2 / 55.0. The released checkpoints are "ViLT-B/32 200k" [SRC dandelin/ViLT
README, via the digest].
"""

import ml_collections

from vlfm.convert.hf_fusion import VIT_TO_VILT
from vlfm.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 100_000
    c.model = ml_collections.ConfigDict(dict(
        name="vilt", vocab_size=30522, max_text_len=40, type_vocab_size=2, image_size=384, patch_size=32,
        num_types=2, width=768, depth=12, num_heads=12, mlp_dim=3072, ln_eps=1e-12, act="gelu", init_std=0.02,
        dropout_rate=0.1, mlm=True, itm="random", dtype="bfloat16", attention="auto",
    ))
    c.init_from.rename = VIT_TO_VILT  # used when init_from names a ViT
    c.losses = ml_collections.ConfigDict(dict(
        masked_xent=dict(weight=1.0), itm=dict(weight=1.0), wpa=dict(weight=0.1)))
    c.data = ml_collections.ConfigDict(dict(name="shapes_vl", num_examples=4_000, image_size=384, max_len=40,
                                            mlm_prob=0.15, batch_size=256, num_workers=0, train_split="train"))
    c.optimizer.update(dict(name="adamw", lr=dict(name="linear", peak=1e-4, warmup_steps=10_000),
                        weight_decay=0.01, clip_norm=1.0))
    c.evals = ml_collections.ConfigDict(dict(
        itm=dict(type="itm_accuracy", every=5000, split="validation", num_examples=1000),
        mlm=dict(type="vl_mlm_accuracy", every=5000, split="validation", num_examples=1000),
    ))
    c.log_every = 100
    c.checkpoint_every = 5000
    return c
