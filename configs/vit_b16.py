r"""ViT-B/16 image classifier (HF ``ViTModel`` sizes plus a classifier head).

Backbone: 86,389,248 parameters including the tanh pooler, equal to HF ``ViTModel`` (vit-base-patch16-224);
the classifier over the 56 colour-shape classes of the built-in data adds 43,064.

Command:
    python -m vlfm.train --config configs/vit_b16.py --workdir workdirs/vit_b16

Expected: on the built-in data (upsampled to 224 px) held-out accuracy far above chance (1/56) within
1,000 steps on one GPU. Runtime on CPU is impractical; use ``configs/vit_b16.py`` on an accelerator.

Paper-data recipe
-----------------
Datasets: ImageNet-1k (TFDS ``imagenet2012``: 1,281,167 training and 50,000 validation images, 1,000
classes) for training and top-1 accuracy. Images are normalised to [-1, 1] (``mean_std="half"``) as
HF's ViT checkpoints expect, so a run can also start from or be compared with them
(``--config.init_from.hf=DIR``).

Prepare (once; ``pip install -e ".[tfds_prepare]"``):
    # ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (image-net.org) in $ROOT/tfds/downloads/manual/
    tfds build imagenet2012 --data_dir $ROOT/tfds

Launch (tests/test_recipes.py checks that these commands, through the launchers' dry runs, give
configs that load):
    ROOT=/mnt/vlfm/data    # TPU: the bucket's data/ folder, mounted on every worker by `tpu_pod.sh setup`;
                           # SLURM: a file system every node sees, e.g. ROOT=/shared/data
    DATA="{'name': 'tfds', 'tfds_name': 'imagenet2012', 'data_dir': '$ROOT/tfds', 'batch_size': 4096,
           'num_workers': 16, 'label': {'key': 'label'},
           'image': {'size': 224, 'train_crop': 'random_resized_crop', 'flip': True, 'mean_std': 'half'}}"
    EVALS="{'accuracy': {'type': 'classification', 'every': 5000, 'split': 'validation', 'batch_size': 1024}}"
    # on a TPU slice
    export TPU_NAME=vlfm-v5p ZONE=us-east5-a ACCELERATOR=v5p-64 BUCKET=gs://my-bucket
    launch/tpu_pod.sh run configs/vit_b16.py vit_b16 --config.data="$DATA" --config.evals="$EVALS" \
        --config.model.image.num_classes=1000 --config.total_steps=93000
    # or on a SLURM GPU cluster (4 nodes x 8 GPUs)
    CONFIG=configs/vit_b16.py WORKDIR=/shared/workdirs/vit_b16 sbatch --nodes=4 launch/slurm.sbatch \
        --config.data="$DATA" --config.evals="$EVALS" --config.model.image.num_classes=1000 \
        --config.total_steps=93000

Evaluate saved weights (``python -m vlfm.evaluate``; ``classification``: top-1 over the 50,000
validation images; 93,000 steps at batch 4,096 are 300 epochs):
    python -m vlfm.evaluate --workdir /shared/workdirs/vit_b16 --progress log --format table

``linear_probe`` and ``fewshot`` need a feature predict function; the classifier offers only
``logits``, so probing its pre-logit features is not available yet.

Reported figures: the paper digest of this project records no ViT-B/16 ImageNet figure, so this
recipe states no target; take one from the run you compare with (its data, augmentation and epochs).
"""

import ml_collections

from vlfm.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 2000
    c.model = ml_collections.ConfigDict(dict(
        name="image_classifier",
        image=dict(name="vit", image_size=224, patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072,
                   pooler="dense_tanh", ln_eps=1e-12, num_classes=56, dtype="bfloat16", attention="auto"),
    ))
    c.losses = ml_collections.ConfigDict(dict(softmax_xent=dict(weight=1.0)))
    c.data = ml_collections.ConfigDict(dict(name="shapes", num_examples=10_000, image_size=224, view="image_label",
                                            batch_size=256, num_workers=0, train_split="train"))
    c.optimizer.update(dict(name="adamw", lr=dict(name="cosine", peak=1e-3, warmup_steps=200),
                        weight_decay=0.05, clip_norm=1.0))
    c.evals = ml_collections.ConfigDict(dict(
        accuracy=dict(type="classification", every=500, split="validation", num_examples=1000)))
    return c
