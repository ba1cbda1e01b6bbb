r"""METER-CLIP16-RoBERTa (co-attention fusion), pretrained with MLM + ITM: 326,328,576 parameters
without heads.

The best METER of Dou et al. (2022): CLIP ViT-B/16 (288 px, the released checkpoint's size) and
RoBERTa-base, projected to 768 and fused by 6 co-attention layers per modality that read the *last*
uni-modal layer. No public HF class exists, so the count is derived: it is HF ``BridgeTowerModel``'s
326,347,008 without BridgeTower's additions (10 bridge LayerNorms and the 2 input LayerNorms, 18,432),
the same towers, projections, cross layers and poolers. ``fusion="merged"`` gives the paper's merged
attention alternative. Learning rate 1e-5, x5 for the cross-modal layers and heads.

Command (GPU/TPU; on the built-in data as a smoke test):
    python -m vlfm.train --config configs/meter_clip16_roberta.py --workdir workdirs/meter

Paper-data recipe
-----------------
Datasets: the "4M" pretraining set: COCO captions, Visual Genome region captions, SBU Captions and
Google Conceptual Captions (GCC = CC3M), mixed within each batch in proportion to their images; 288 px
images, 50 text tokens, 15% masking without whole-word masking (RoBERTa). Downstream: VQAv2 (the
``vqav2`` reader and evaluator, as in ``configs/vilt_b32.py`` with ``model.vqa_answers=3129`` and
576 px images). NLVR2 and SNLI-VE: the ``nlvr2`` / ``snli_ve`` readers of their
released JSON-lines files (README, "Standard evaluation protocols"), whose examples have the keys of the
built-in ``shapes_nlvr2`` / ``shapes_snli_ve``: fine-tune as ``configs/vilt_tiny_nlvr2.py`` /
``vilt_tiny_snli_ve.py`` with ``data`` pointed at them.

Initialisation as the paper: the image tower from OpenAI's CLIP ViT-B/16 (its 224 px position table
resampled to 288 px), the text tower from RoBERTa-base, the cross-modal layers fresh
(``init_from.sources``, README "Fine-tuning from a pretrained run"); text tokenized with RoBERTa's own
byte-level BPE (``tokenizer kind "bpe"``).

Prepare (once, where the data lives; ``pip install img2dataset`` and ``pip install -e ".[tfds_prepare]"``):
    # the "4M" images and captions (CC3M, SBU, COCO, VG) under $ROOT; the script names the downloads it reads
    ROOT=$ROOT bash launch/prepare_4m.sh
    # The two pretrained towers (each a model.safetensors + config.json; roberta-base also brings the BPE
    # files vocab.json and merges.txt, 50,265 tokens)
    huggingface-cli download openai/clip-vit-base-patch16 --local-dir $ROOT/hf/clip-vit-base-patch16
    huggingface-cli download FacebookAI/roberta-base --local-dir $ROOT/hf/roberta-base

Launch (tests/test_recipes.py checks that these commands, through the launchers' dry runs, give
configs that load):
    ROOT=/mnt/vlfm/data    # TPU: the bucket's data/ folder, mounted on every worker by `tpu_pod.sh setup`;
                           # SLURM: a file system every node sees, e.g. ROOT=/shared/data
    IMG="{'size': 288, 'scale': (0.8, 1.0), 'eval_crop': 'clip', 'mean_std': 'clip'}"
    TOK="{'kind': 'bpe', 'vocab': '$ROOT/hf/roberta-base/vocab.json', 'merges': '$ROOT/hf/roberta-base/merges.txt'}"
    INIT="({'hf': '$ROOT/hf/clip-vit-base-patch16', 'skip': ['text_tower/.*'], 'resample': ['image_tower/pos_embed/.*']},
           {'hf': '$ROOT/hf/roberta-base'})"
    TXT="{'tokenizer': $TOK, 'max_len': 50, 'mlm_prob': 0.15}"
    JSON_TXT="{'key': 'json/captions', 'tokenizer': $TOK, 'max_len': 50, 'mlm_prob': 0.15}"
    COCO_TXT="{'key': 'captions/text', 'tokenizer': $TOK, 'max_len': 50, 'mlm_prob': 0.15}"
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
    launch/tpu_pod.sh run configs/meter_clip16_roberta.py meter --config.data="$DATA" --config.evals="$EVALS" \
        --config.model.text.vocab_size=50265 --config.init_from.sources="$INIT"
    # or on a SLURM GPU cluster (8 nodes x 8 GPUs)
    CONFIG=configs/meter_clip16_roberta.py WORKDIR=/shared/workdirs/meter sbatch --nodes=8 launch/slurm.sbatch \
        --config.data="$DATA" --config.evals="$EVALS" --config.model.text.vocab_size=50265 \
        --config.init_from.sources="$INIT"

Evaluate saved weights (``python -m vlfm.evaluate``; ITM and MLM accuracy on COCO val; after a VQAv2
fine-tuning, the ``vqav2`` protocol as in ``configs/vilt_b32.py``):
    python -m vlfm.evaluate --workdir /shared/workdirs/meter --progress log --format table

Reported figures a reproduction should reach (the paper digest, METER-CLIP16-RoBERTa; all [MEM]:
recalled from the paper, not verified): VQAv2 test-dev / test-std 77.68 / 77.64; NLVR2 dev / test-P
82.33 / 83.05; SNLI-VE 80.86 / 81.19; Flickr30k IR@1 / TR@1 82.2 / 94.3; COCO IR@1 / TR@1 57.1 / 76.2.
"""

import os

import ml_collections

from vlfm.train.config import load_config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """BridgeTower-Base's towers, cross layers, heads, data and optimizer, without the bridges."""
    del arg
    c = load_config_file(os.path.join(os.path.dirname(__file__), "bridgetower_base.py"))
    c.model.name = "meter"
    c.model.bridge = "none"
    c.model.input_norm = False
    c.model.fusion = "co_attention"
    return c
