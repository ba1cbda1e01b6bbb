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
    # GCC = CC3M: Train_GCC-training.tsv (caption, url; no header) from the Conceptual Captions site
    sed -i '1s/^/caption\turl\n/' Train_GCC-training.tsv
    img2dataset --url_list Train_GCC-training.tsv --input_format tsv --url_col url --caption_col caption \
        --output_format webdataset --output_folder $ROOT/cc3m --processes_count 16 --thread_count 64 \
        --image_size 640 --resize_mode keep_ratio
    # SBU: sbu-captions-all.json (parallel lists `image_urls`, `captions`) from the SBU Captions site
    python -c "import csv, json; d = json.load(open('sbu-captions-all.json')); w = csv.writer(open('sbu.tsv', 'w'), delimiter='\t'); w.writerow(['url', 'caption']); w.writerows(zip(d['image_urls'], d['captions']))"
    img2dataset --url_list sbu.tsv --input_format tsv --url_col url --caption_col caption \
        --output_format webdataset --output_folder $ROOT/sbu --processes_count 16 --thread_count 64 \
        --image_size 640 --resize_mode keep_ratio
    # COCO captions (Karpathy splits, 5 captions per image; a random one per step in training)
    tfds build coco_captions --data_dir $ROOT/tfds
    # VG: region_descriptions.json and the VG_100K / VG_100K_2 image folders from visualgenome.org.
    # img2dataset reads URLs only, so write the shards directly: one sample per image, its region
    # phrases in KEY.json ({"captions": [...]}; a random one per step in training).
    python - <<'PY'
    import io, json, os, tarfile
    root, regions = os.environ["ROOT"], json.load(open("region_descriptions.json"))
    os.makedirs(f"{root}/vg", exist_ok=True)
    def add(tar, name, data):
        info = tarfile.TarInfo(name); info.size = len(data); tar.addfile(info, io.BytesIO(data))
    for start in range(0, len(regions), 1000):
        with tarfile.open(f"{root}/vg/{start // 1000:05d}.tar", "w") as tar:
            for entry in regions[start:start + 1000]:
                image_id = entry["id"]
                path = next(p for p in (f"VG_100K/{image_id}.jpg", f"VG_100K_2/{image_id}.jpg") if os.path.exists(p))
                add(tar, f"{image_id}.jpg", open(path, "rb").read())
                add(tar, f"{image_id}.json", json.dumps({"captions": [r["phrase"] for r in entry["regions"]]}).encode())
    PY
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
