r"""UFO at the paper's size: a ViT-B/16-shaped shared encoder (12 layers, width 768, 12 heads, MLP 3072)
with a BERT-base vocabulary (30,522 word pieces, 512 positions) and an untied MLM head: 134,466,850
parameters with the ImageNet-1k classifier (133,740,914 with the 56-class head of ``:shapes``).

Data (default): ImageNet-1k from TFDS (``imagenet2012``, prepared in ``data/tfds``) for the image task
(random-resized crop + flip at 224 px, labels) and a plain-text corpus for MLM (``data/corpus/*.txt``
or ``.txt.gz``, one document per line, e.g. BookCorpus + Wikipedia; 128 word pieces, 15% whole-word
masking, BERT's uncased ``vocab.txt`` in ``data/bert-base-uncased/vocab.txt``). Every path is an
override, e.g. ``--config.tasks.text.data.paths.train='gs://bucket/corpus/*.txt.gz'``.

Teachers: an ImageNet ViT-B/16 and BERT-base converted from HF checkpoint directories
(``google/vit-base-patch16-224``, ``bert-base-uncased``; ``hf`` keys, converted on load). The HF ViT
normalises images to [-1, 1], so the image field uses ``mean_std="half"`` to feed both models the same
pixels. To distil from vlfm-trained teachers instead, give each ``config``/``model`` + ``params`` (see
``vlfm/train/teachers.py``) and match their preprocessing.

``:shapes`` swaps in the built-in data at 224 px (56 classes; teachers from ``configs/vit_b16.py`` and
``configs/bert_base.py`` runs), which runs anywhere without downloads.

Commands (accelerators):
    python -m vlfm.train --config configs/ufo_base.py --workdir gs://bucket/ufo_base
    python -m vlfm.train --config configs/ufo_base.py:shapes --workdir workdirs/ufo_base_shapes \
        --config.teachers.vit.params=workdirs/vit_b16/params --config.teachers.bert.params=workdirs/bert_base/params
Expected runtime: not measured (needs accelerators); ``--dry_run`` prints per-device memory.

Paper-data recipe
-----------------
Datasets: ImageNet-1k (TFDS ``imagenet2012``) for the image task and its top-1 accuracy; English
Wikipedia + BookCorpus as plain text, one document per line, for MLM (BERT's uncased ``vocab.txt``);
the teachers from HF ``google/vit-base-patch16-224`` and ``bert-base-uncased`` checkpoint directories.

Prepare (once; ``pip install -e ".[tfds_prepare]"``):
    # ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (image-net.org) in $ROOT/tfds/downloads/manual/
    tfds build imagenet2012 --data_dir $ROOT/tfds
    # the text corpus: as in configs/bert_base.py (TFDS wikipedia/<date>.en written one article per
    # line into $ROOT/corpus/ and a held-out part into $ROOT/corpus-valid/)
    # the teachers and the vocabulary: the HF checkpoint directories (config.json + weights) in
    # $ROOT/hf/vit-base-patch16-224 and $ROOT/hf/bert-base-uncased (vocab.txt is in the latter)

Launch (tests/test_recipes.py checks that these commands, through the launchers' dry runs, give
configs that load):
    ROOT=/mnt/vlfm/data    # TPU: the bucket's data/ folder, mounted on every worker by `tpu_pod.sh setup`;
                           # SLURM: a file system every node sees, e.g. ROOT=/shared/data
    EVALS="{'imagenet': {'type': 'classification', 'every': 5000, 'split': 'validation', 'data': 'task:image'},
            'mlm': {'type': 'mlm_accuracy', 'every': 5000, 'split': 'validation', 'num_examples': 10000,
                    'data': 'task:text'}}"
    PATHS="--config.tasks.image.data.data_dir=$ROOT/tfds --config.tasks.text.data.paths.train=$ROOT/corpus/*.txt
           --config.tasks.text.data.paths.validation=$ROOT/corpus-valid/*.txt
           --config.tasks.text.data.text.tokenizer.path=$ROOT/hf/bert-base-uncased/vocab.txt
           --config.teachers.vit.hf=$ROOT/hf/vit-base-patch16-224 --config.teachers.bert.hf=$ROOT/hf/bert-base-uncased"
    # on a TPU slice
    export TPU_NAME=vlfm-v5p ZONE=us-east5-a ACCELERATOR=v5p-64 BUCKET=gs://my-bucket
    launch/tpu_pod.sh run configs/ufo_base.py ufo_base --config.evals="$EVALS" $PATHS
    # or on a SLURM GPU cluster (4 nodes x 8 GPUs)
    CONFIG=configs/ufo_base.py WORKDIR=/shared/workdirs/ufo_base sbatch --nodes=4 launch/slurm.sbatch \
        --config.evals="$EVALS" $PATHS

Evaluate saved weights (``python -m vlfm.evaluate``; ImageNet top-1 of the image head and MLM accuracy;
the paper evaluates by fine-tuning, with layer-wise learning-rate decay:
``--config.optimizer.layer_decay='{"decay": 0.65, "num_layers": 12}'``):
    python -m vlfm.evaluate --workdir /shared/workdirs/ufo_base --progress log --format table

Reported figures: none to reach. The paper digest gives UFO's results only qualitatively ("approaches
separately trained models" on ImageNet and GLUE after fine-tuning, [ABS]); its gradient-masking rule
is recalled, not verified [MEM], and vlfm's ``random`` masking is a documented choice.
"""

import os

import ml_collections

from vlfm.train.config import base_config

SHARED = (r"encoder/.*", r"ln_final/.*")  # the parameters both modalities update (gradient masking)


def _imagenet_tasks() -> tuple[dict, dict, int]:
    images = dict(name="tfds", tfds_name="imagenet2012", data_dir="data/tfds",
                  image=dict(size=224, train_crop="random_resized_crop", flip=True, mean_std="half"),
                  label=dict(key="label"), batch_size=1024, num_workers=16)
    text = dict(name="text_files", paths=dict(train="data/corpus/*.txt*", validation="data/corpus-valid/*.txt*"),
                text=dict(tokenizer=dict(kind="wordpiece", path="data/bert-base-uncased/vocab.txt"), max_len=128,
                          mlm_prob=0.15, whole_word=True),
                batch_size=1024, num_workers=4)
    teachers = dict(vit=dict(hf="data/hf/vit-base-patch16-224"), bert=dict(hf="data/hf/bert-base-uncased"))
    return dict(images=images, text=text), teachers, 1000


def _shapes_tasks() -> tuple[dict, dict, int]:
    here = os.path.dirname(os.path.abspath(__file__))
    images = dict(name="shapes", num_examples=10_000, image_size=224, view="image_label", batch_size=1024)
    text = dict(name="shapes", num_examples=50_000, view="text", max_len=128, mlm_prob=0.15, batch_size=1024)
    teachers = dict(vit=dict(config=os.path.join(here, "vit_b16.py"), params="workdirs/vit_b16/params"),
                    bert=dict(config=os.path.join(here, "bert_base.py"), params="workdirs/bert_base/params"))
    return dict(images=images, text=text), teachers, 56


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: ``imagenet`` (default: TFDS ImageNet + a text corpus) or ``shapes`` (the built-in data)."""
    variants = {"imagenet": _imagenet_tasks, "shapes": _shapes_tasks}
    arg = arg or "imagenet"
    if arg not in variants:
        raise ValueError(f"unknown ufo_base variant {arg!r}; valid: {', '.join(variants)}")
    data, teachers, num_classes = variants[arg]()
    c = base_config()
    c.total_steps = 100_000
    c.model = ml_collections.ConfigDict(dict(
        name="ufo", width=768, depth=12, num_heads=12, mlp_dim=3072, image_size=224, patch_size=16,
        num_classes=num_classes, vocab_size=30522, max_len=512, ln_eps=1e-6, dtype="bfloat16", attention="auto",
        remat="dots_no_batch"))
    c.tasks = ml_collections.ConfigDict(dict(
        image=dict(data=data["images"], teachers=("vit",), losses=dict(
            softmax_xent=dict(weight=0.5), kd_image=dict(fn="kd_logits", teacher="vit", temperature=2.0, weight=0.5))),
        text=dict(data=data["text"], teachers=("bert",), losses=dict(
            masked_xent=dict(weight=0.5),
            kd_text=dict(fn="kd_logits", teacher="bert", student_key="mlm_logits", mask_key="mlm_targets",
                         temperature=2.0, weight=0.5))),
    ))
    c.teachers = ml_collections.ConfigDict(teachers)
    c.schedule = "accumulate"
    c.gradient_combiner = ml_collections.ConfigDict(dict(
        name="gradient_masking", first="text", second="image", shared=SHARED, strategy="random", ratio=0.5,
        refresh_every=0, seed=0))
    c.optimizer.update(dict(name="adamw", lr=dict(name="cosine", peak=1e-3, warmup_steps=10_000),
                        weight_decay=0.05, clip_norm=1.0))
    c.log_every = 100
    c.checkpoint_every = 2000
    return c
