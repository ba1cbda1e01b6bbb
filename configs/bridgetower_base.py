r"""BridgeTower-Base at HF ``BridgeTowerConfig()`` sizes: 326,347,008 parameters without heads (equal to
HF ``BridgeTowerModel``), pretrained with MLM + ITM (random negatives), the paper's
``task_mlm_itm_clip_bert``.

Uni-modal towers: CLIP ViT-B/16 at 288 px (``ln_pre``, QuickGELU, no patch bias, eps 1e-5) and
RoBERTa-base (vocabulary 50,265, positions from 2, one token type). Cross-modal encoder: 6
co-attention layers per modality (width 768, 12 heads), fed by the top 6 uni-modal layers through
``add`` bridge layers ``LN(T̃_l + X_{l-1})``; the vision tower's ``ln_post`` is shared by every bridged
layer. Heads: MLM (untied, 39,245,913 with the decoder) and ITM on the 1,536-wide pooled pair (3,074).
Learning rate 1e-5 for the towers and x5 for the cross-modal layers and the heads
(``optimizer.lr_multipliers``), as in microsoft/BridgeTower. ``itm="hard"`` with
``contrastive_dim=256`` gives the paper's ``itm_itc_hard`` variant (add ``softmax_contrastive``).

Command (GPU/TPU; on the built-in data as a smoke test):
    python -m vlfm.train --config configs/bridgetower_base.py --workdir workdirs/bridgetower_base

Import HF checkpoints with ``python -m vlfm.convert import``. Runtime: not run on CPU.

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
    launch/tpu_pod.sh run configs/bridgetower_base.py bridgetower_base --config.data="$DATA" --config.evals="$EVALS" \
        --config.model.text.vocab_size=50265 --config.init_from.sources="$INIT"
    # or on a SLURM GPU cluster (8 nodes x 8 GPUs)
    CONFIG=configs/bridgetower_base.py WORKDIR=/shared/workdirs/bridgetower_base sbatch --nodes=8 launch/slurm.sbatch \
        --config.data="$DATA" --config.evals="$EVALS" --config.model.text.vocab_size=50265 \
        --config.init_from.sources="$INIT"

Evaluate saved weights (``python -m vlfm.evaluate``; ITM and MLM accuracy on COCO val; after a VQAv2
fine-tuning, the ``vqav2`` protocol as in ``configs/vilt_b32.py``):
    python -m vlfm.evaluate --workdir /shared/workdirs/bridgetower_base --progress log --format table

Reported figures a reproduction should reach (the paper digest): VQAv2 test-std 78.73 (Base, 4M images)
[ABS; SRC microsoft/BridgeTower README]; [MEM, recalled from the paper, not verified] VQAv2 test-dev
78.66, NLVR2 test-P 83.1, Flickr30k IR@1 / TR@1 85.8 / 94.7, SNLI-VE 81.1.
"""

import ml_collections

from vlfm.train.config import base_config

FUSION_AND_HEADS = ((r"(fusion_layers|text_transform|image_transform|type_embed|text_pooler|image_pooler)/.*", 5.0),
                    (r"(mlm|itm|vqa|cls|pair)_head/.*", 5.0))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 100_000
    c.model = ml_collections.ConfigDict(dict(
        name="bridgetower",
        image=dict(name="vit", image_size=288, patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072,
                   pre_norm=True, patch_bias=False, ln_eps=1e-5, act="quick_gelu", dtype="bfloat16",
                   attention="auto"),
        text=dict(name="bert", vocab_size=50265, max_len=514, type_vocab_size=1, pos_offset=2, width=768, depth=12,
                  num_heads=12, mlp_dim=3072, ln_eps=1e-5, dtype="bfloat16", attention="auto"),
        width=768, depth=6, num_heads=12, mlp_dim=3072, ln_eps=1e-5, bridge="add", input_norm=True,
        mlm=True, itm="random", dtype="bfloat16", attention="auto",
    ))
    c.losses = ml_collections.ConfigDict(dict(masked_xent=dict(weight=1.0), itm=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes_vl", num_examples=4_000, image_size=288, max_len=50,
                                            mlm_prob=0.15, whole_word=False, batch_size=256, num_workers=0,
                                            train_split="train"))
    c.optimizer.update(dict(
        name="adamw", lr=dict(name="linear", peak=1e-5, warmup_steps=10_000), weight_decay=0.01, clip_norm=1.0,
        lr_multipliers=FUSION_AND_HEADS))
    c.evals = ml_collections.ConfigDict(dict(
        itm=dict(type="itm_accuracy", every=5000, split="validation", num_examples=1000),
        mlm=dict(type="vl_mlm_accuracy", every=5000, split="validation", num_examples=1000),
    ))
    c.log_every = 100
    c.checkpoint_every = 5000
    return c
