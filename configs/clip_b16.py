r"""CLIP ViT-B/16 at open_clip's ``ViT-B-16`` sizes (149,620,737 parameters).

Image tower: ViT-B/16 at 224 px with ``ln_pre``, no patch bias, QuickGELU-free GELU (open_clip's
default for models trained from scratch); text tower: 12 layers, width 512, 8 heads, 77 tokens,
vocabulary 49,408, causal, pooled at the end token. Softmax contrastive loss over the global batch.

Command (GPU/TPU; on the built-in data as a smoke test, real corpora come from the data configs):
    python -m vlfm.train --config configs/clip_b16.py --workdir workdirs/clip_b16

Expected: 149,620,737 parameters (equal to open_clip ViT-B-16 and HF CLIPModel at patch 16). On the
built-in 32 px shapes the images are upsampled to 224 px; the loss falls within a few hundred steps.
Runtime: measure with ``benchmarks/train_step.py``; not run on CPU.

Paper-data recipe
-----------------
Datasets: image-text pairs from the web as webdataset shards (CC12M; CC3M and LAION-400M subsets the
same way) for training; ImageNet-1k (TFDS ``imagenet2012``) for zero-shot classification, the linear
probe and few-shot; COCO 5k / Flickr30k 1k (Karpathy's split files) for retrieval. The text tower has
its own 49,408-piece SentencePiece vocabulary, trained on the captions (vlfm reads no CLIP BPE files).

Prepare (once, where the data lives; ``pip install img2dataset`` and ``pip install -e ".[tfds_prepare]"``):
    # CC12M: cc12m.tsv (url, caption; no header) from storage.googleapis.com/conceptual_12m/cc12m.tsv
    sed -i '1s/^/url\tcaption\n/' cc12m.tsv
    img2dataset --url_list cc12m.tsv --input_format tsv --url_col url --caption_col caption \
        --output_format webdataset --output_folder $ROOT/cc12m --processes_count 16 --thread_count 64 \
        --image_size 256 --resize_mode keep_ratio
    # CC3M: Train_GCC-training.tsv (caption, url; no header) from the Conceptual Captions download page
    sed -i '1s/^/caption\turl\n/' Train_GCC-training.tsv
    img2dataset --url_list Train_GCC-training.tsv --input_format tsv --url_col url --caption_col caption \
        --output_format webdataset --output_folder $ROOT/cc3m --processes_count 16 --thread_count 64 \
        --image_size 256 --resize_mode keep_ratio
    # LAION-400M subset: some of its metadata parquet files (columns URL, TEXT) in laion400m-meta/
    img2dataset --url_list laion400m-meta --input_format parquet --url_col URL --caption_col TEXT \
        --output_format webdataset --output_folder $ROOT/laion400m --processes_count 16 --thread_count 64 \
        --image_size 256 --resize_mode keep_ratio
    # the tokenizer, from the training captions
    cut -f2 cc12m.tsv | tail -n +2 > captions.txt
    python -m vlfm.data train-sentencepiece --input captions.txt --model_prefix $ROOT/spm --vocab_size 49408
    # ImageNet: ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in $ROOT/tfds/downloads/manual/
    tfds build imagenet2012 --data_dir $ROOT/tfds
    # COCO 5k: dataset_coco.json of Karpathy's caption_datasets.zip in $ROOT/karpathy/, and the COCO
    # 2014 images (images.cocodataset.org/zips/{train2014,val2014}.zip) unpacked in $ROOT/coco/

Launch (the overrides replace the built-in data and evals; tests/test_recipes.py checks that these
commands, through the launchers' dry runs, give configs that load):
    ROOT=/mnt/vlfm/data    # TPU: the bucket's data/ folder, mounted on every worker by `tpu_pod.sh setup`;
                           # SLURM: a file system every node sees, e.g. ROOT=/shared/data
    IMG="{'size': 224, 'scale': (0.9, 1.0), 'eval_crop': 'clip', 'mean_std': 'clip'}"
    TOK="{'kind': 'sentencepiece', 'path': '$ROOT/spm.model'}"
    TXT="{'tokenizer': $TOK, 'max_len': 77}"
    DATA="{'name': 'webdataset', 'batch_size': 32768, 'num_workers': 8, 'urls': {'train': '$ROOT/cc12m/*.tar'},
           'image': $IMG, 'text': $TXT}"
    EVALS="{'imagenet': {'type': 'clip_zeroshot', 'every': 5000, 'class_names': 'imagenet',
                         'templates': 'clip_imagenet', 'view': None, 'tokenizer': $TOK,
                         'max_len': 77, 'batch_size': 1024,
                         'data': {'name': 'tfds', 'tfds_name': 'imagenet2012', 'data_dir': '$ROOT/tfds',
                                  'image': $IMG, 'label': {'key': 'label'}}},
            'coco5k': {'type': 'multi_caption_retrieval', 'every': 5000, 'split': 'test',
                       'captions_per_image': None, 'view': None, 'batch_size': 512,
                       'data': {'name': 'karpathy_captions', 'annotations': '$ROOT/karpathy/dataset_coco.json',
                                'images': '$ROOT/coco', 'image': $IMG, 'text': $TXT}}}"
    # on a TPU slice
    export TPU_NAME=vlfm-v5p ZONE=us-east5-a ACCELERATOR=v5p-128 BUCKET=gs://my-bucket
    launch/tpu_pod.sh run configs/clip_b16.py clip_b16 --config.data="$DATA" --config.evals="$EVALS" \
        --config.total_steps=100000 --config.mesh.shape="(-1,1,1)"
    # or on a SLURM GPU cluster (8 nodes x 8 GPUs)
    CONFIG=configs/clip_b16.py WORKDIR=/shared/workdirs/clip_b16 sbatch --nodes=8 launch/slurm.sbatch \
        --config.data="$DATA" --config.evals="$EVALS" --config.total_steps=100000

Evaluate saved weights with the standard protocols (``python -m vlfm.evaluate``; add the linear probe
and few-shot on ImageNet the same way: ``linear_probe`` / ``fewshot`` with ``view=None`` and the
``imagenet2012`` data above):
    python -m vlfm.evaluate --workdir /shared/workdirs/clip_b16 --config.evals="$EVALS" --progress log --format table

Reported figures: the paper digest of this project records no CLIP ViT-B/16 figure (its CLIP entry
gives the architecture only), so this recipe states no target; take one from the run you compare
with (its data, batch size and steps), not from memory.
"""

import ml_collections

from vlfm.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 10_000
    c.model = ml_collections.ConfigDict(dict(
        name="dual_encoder",
        embed_dim=512,
        image=dict(name="vit", image_size=224, patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072,
                   pre_norm=True, patch_bias=False, ln_eps=1e-5, dtype="bfloat16", remat="none",
                   attention="auto"),
        text=dict(name="text_transformer", vocab_size=49408, max_len=77, width=512, depth=12, num_heads=8,
                  mlp_dim=2048, pool="eos", eos_id=3, ln_eps=1e-5, dtype="bfloat16", attention="auto"),
        dtype="bfloat16",
    ))
    c.losses = ml_collections.ConfigDict(dict(softmax_contrastive=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes", num_examples=10_000, image_size=224, max_len=77,
                                            batch_size=256, num_workers=0, train_split="train"))
    c.optimizer.update(dict(name="adamw", lr=dict(name="cosine", peak=5e-4, warmup_steps=2000),
                        weight_decay=0.2, b2=0.98, eps=1e-6, clip_norm=1.0))
    c.evals = ml_collections.ConfigDict(dict(
        retrieval=dict(every=1000, split="validation", num_examples=1000),
        zeroshot=dict(type="zeroshot_classification", every=1000, split="validation", num_examples=1000),
    ))
    c.log_every = 100
    c.checkpoint_every = 1000
    return c
