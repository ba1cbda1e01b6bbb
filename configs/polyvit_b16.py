"""PolyViT at the paper's size (Likhosherstov et al. 2022; scenic's ``polyvit_all`` config): one ViT-B/16
encoder (12 layers, width 768, 12 heads, MLP 3072, all layers shared) co-trained on nine
classification tasks with PolyViT's ``weighted`` schedule (each task's single-task steps in one seeded
permutation), a zero-initialised linear head per task on the class token, and per-task learning-rate
multipliers on one SGD-momentum schedule (gradient norm clipped at 1).

Tasks (classes, single-task steps at the paper's batch sizes, learning-rate coefficient):
  image, 384 px, 16x16 patches (TFDS):  imagenet (1000, 20k, 0.03), cifar10 (10, 10k, 0.03), cifar100 (100,
      10k, 0.03), pets (37, 500, 0.03), resisc45 (45, 2.5k, 0.1); batch 512
  video, 32 frames of 224 px, 4x16x16 tubelets (webdataset shards of mp4 + cls):  kinetics400 (400,
      30 epochs, 0.1), moments_in_time (339, 10 epochs, 0.25); batch 64
  audio, 800 x 128 log-mel (8 spectrogram frames of 100), 16x16 patches every 16 (webdataset shards of
      wav + cls):  vggsound (309, 50 epochs, 0.5), audioset (527, 50 epochs, 0.5; multi-label: ``KEY.labels``
      lists a clip's class indices, ``sigmoid_xent``, evaluated by ``multilabel_map``); batch 64

Parameters: 92,290,255, computed from the model's abstract initialisation over all nine tasks (no
weights are made; prints ``polyvit_b16: 92,290,255 parameters (shared encoder 85,054,464)``):
    python configs/polyvit_b16.py
They are the shared encoder (85,054,464) and its final norm (1,536); the image tokenizer (patches,
class token, 577 positions: 1,034,496), the video tokenizer (4x16x16 tubelets, 1 + 8 x 196 positions:
3,565,824) and the audio tokenizer (1 + 8 x 50 positions: 506,112); the nine heads (769 x 2,767 classes:
2,127,823).

Command (GPU/TPU; ROOT holds the TFDS data_dir ``tfds/`` and the shards ``kinetics400/``,
``moments_in_time/``, ``vggsound/``, ``audioset/``, each with ``train-*.tar`` and ``validation-*.tar``):
    python -m vlfm.train --config configs/polyvit_b16.py:ROOT --workdir workdirs/polyvit_b16
One task alone (the paper's single-task baseline) is ``--config.tasks`` reduced to it with its own steps.

Not reproduced here: the ImageNet-21k ViT-B/16 initialisation (``init_from`` a ViT checkpoint, with
``init_from.inflate`` for the tubelet kernel), mixup / SpecAugment settings per task, multi-crop
evaluation during training (the ``classification`` evaluator's ``views`` / ``spatial_crops`` do it on
saved weights). AudioSet's shards carry the positive classes as ``KEY.labels`` (``"0,72,137"``; the
``labels`` field's ``class_ids`` maps AudioSet's ``/m/...`` ids instead).
The paper's figures are not quoted: the project's paper digest records none for PolyViT.
"""

import ml_collections

from vlfm.train.config import base_config

IMAGE = dict(imagenet=("imagenet2012", 1000, 20_000, 0.03), cifar10=("cifar10", 10, 10_000, 0.03),
             cifar100=("cifar100", 100, 10_000, 0.03), pets=("oxford_iiit_pet", 37, 500, 0.03),
             resisc45=("resisc45", 45, 2_500, 0.1))
# name -> (classes, training examples, epochs, learning-rate coefficient); steps at batch 64
VIDEO = dict(kinetics400=(400, 214_834, 30, 0.1), moments_in_time=(339, 791_297, 10, 0.25))
AUDIO = dict(vggsound=(309, 172_427, 50, 0.5), audioset=(527, 20_361, 50, 0.5))
MULTI_LABEL = ("audioset",)
VIDEO_BATCH = AUDIO_BATCH = 64


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: the data root (default ``data``)."""
    root = (arg or "data").rstrip("/")
    c = base_config()
    tasks, heads = {}, {}
    for name, (tfds_name, classes, steps, lr) in IMAGE.items():
        data = dict(name="tfds", tfds_name=tfds_name, data_dir=f"{root}/tfds", batch_size=512, num_workers=8,
                    image=dict(size=384), label=dict(key="label"))
        tasks[name] = dict(data=data, steps=steps, lr_multiplier=lr)
        heads[name] = classes
    for group, field in ((VIDEO, "video"), (AUDIO, "audio")):
        for name, (classes, examples, epochs, lr) in group.items():
            spec = (dict(num_frames=32, image=dict(size=224)) if field == "video" else
                    dict(num_frames=800, num_mel_bins=128))
            urls = {split: f"{root}/{name}/{split}-*.tar" for split in ("train", "validation")}
            data = {"name": "webdataset", "urls": urls, "batch_size": VIDEO_BATCH, "num_workers": 8, field: spec}
            if name in MULTI_LABEL:
                data.update(label=None, labels=dict(key="labels", num_classes=classes))
            else:
                data["label"] = dict(key="cls")
            tasks[name] = dict(data=data, steps=examples // VIDEO_BATCH * epochs, lr_multiplier=lr)
            heads[name] = classes
    for name, task in tasks.items():
        loss = "sigmoid_xent" if name in MULTI_LABEL else "softmax_xent"
        task.update(losses={loss: dict()}, forward=dict(pass_task=True))
    c.total_steps = sum(t["steps"] for t in tasks.values())
    c.model = ml_collections.ConfigDict(dict(
        name="polyvit", width=768, depth=12, num_heads=12, mlp_dim=3072, modality_layers=0, dtype="bfloat16",
        tokenizers=dict(image=dict(name="vit", image_size=384, patch_size=16),
                        video=dict(name="video_vit", image_size=224, patch_size=16, tubelet_size=4),
                        audio=dict(name="spectrogram_vit", patch_size=16, frequency_stride=16, time_stride=16,
                                   distillation_token=False)),
        heads=heads))
    c.tasks = ml_collections.ConfigDict(tasks)
    c.schedule = "weighted"
    # scenic: warmup 500 image steps + 2.5 epochs of each video and audio task, then cosine decay to 0
    warmup = 500 + sum(int(examples // VIDEO_BATCH * 2.5) for _, examples, _, _ in (*VIDEO.values(), *AUDIO.values()))
    c.optimizer.update(dict(name="sgd", momentum=0.9, lr=dict(name="cosine", peak=1.0, warmup_steps=warmup),
                            weight_decay=0.0, clip_norm=1.0))
    c.evals = ml_collections.ConfigDict({
        name: dict(type="classification", data=f"task:{name}", predict=f"logits/{name}", every=5000,
                   split="validation") for name in tasks})
    for name in MULTI_LABEL:
        c.evals[name].update(type="multilabel_map", targets="labels")
    c.log_every = 100
    c.checkpoint_every = 5000
    return c


def param_count() -> tuple[int, int]:
    """(all parameters, the shared encoder's), from the abstract initialisation of every task's branch."""
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from vlfm.core.tree import strip_boxes
    from vlfm.models import build_model

    c = get_config()
    model = build_model(c.model)
    inputs = dict(image=jnp.zeros((1, 384, 384, 3)), video=jnp.zeros((1, 32, 224, 224, 3)),
                  audio=jnp.zeros((1, 800, 128)))
    modality = {**{t: "image" for t in IMAGE}, **{t: "video" for t in VIDEO}, **{t: "audio" for t in AUDIO}}
    shapes = {}
    for task, key in modality.items():
        tree = jax.eval_shape(lambda b, t=task: model.init(jax.random.key(0), b, task=t), {key: inputs[key]})
        shapes.update(traverse_util.flatten_dict(strip_boxes(tree["params"]), sep="/"))
    sizes = {k: int(v.size) for k, v in shapes.items()}
    return sum(sizes.values()), sum(v for k, v in sizes.items() if k.startswith("shared/encoder/"))


if __name__ == "__main__":
    total, encoder = param_count()
    print(f"polyvit_b16: {total:,} parameters (shared encoder {encoder:,})")
