"""A tiny PolyViT co-trained on the built-in image, video and audio classification tasks: one shared
transformer, a tokenizer per modality, a linear head per task, PolyViT's ``weighted`` schedule (each
task's steps in one seeded permutation).

Command:
    python -m vlfm.train --config configs/polyvit_tiny.py --workdir workdirs/polyvit_tiny
One task alone for the same steps (PolyViT's single-task baseline; ``image``, ``video`` or ``audio``):
    python -m vlfm.train --config configs/polyvit_tiny.py:video --workdir workdirs/polyvit_tiny_video
Any comma-separated set of tasks, including the multi-label ``audio_tags`` (not co-trained by default):
    python -m vlfm.train --config configs/polyvit_tiny.py:audio_tags --workdir workdirs/polyvit_tiny_audio_tags

Tasks: ``image``: the shapes image-label view (56 colour-shape classes, 32 px, 4x4 patches of 8 px);
``video``: moving shapes (8 direction x speed classes, 8 frames of 32 px, 2x8x8 tubelets); ``audio``:
built-in sounds (12 pitch x pattern classes, 64 frames x 32 mel bins, 16x16 patches every 16);
``audio_tags``: the sounds' multi-label view, AudioSet-style (one to three of the 12 classes mixed in a
clip, multi-hot ``labels``), trained with ``sigmoid_xent`` (binary cross-entropy per class) and
evaluated by ``multilabel_map`` (mAP, mAUC, d'; its ``chance_map`` is the mAP of a label-prior ranking).
Model: width 64, 4 shared layers, 4 heads, MLP 256; each modality's own tokenizer, class token and
positions; heads zero-initialised; 264,588 parameters co-trained.

Co-training against single-task training (validation accuracy on 500 examples per task, each task 300
steps at batch 64 in both; measured on 2 CPU cores shared with other jobs, 2026-12-07):

    task    co-trained (900 steps, one model)   alone (300 steps, one model each)   chance
    image   0.404                               0.320                               0.018
    video   0.920                               0.350                               0.125
    audio   1.000                               1.000                               0.083

Co-training helps where a task alone learns slowly within its share of the steps: the video task alone
stays at its chance loss (ln 8 = 2.08) for the first 150 of its 300 steps (2.10, 2.07, 1.99 at steps
50, 100, 150; 1.56 at 300) and reaches 0.35; co-trained, with the shared encoder also learning from the
image and audio steps, it reaches 0.92 (PolyViT reports co-training gains on its video and audio tasks).
One seed each: the single-task runs also have their own 300-step learning-rate schedule.
Wall time: co-training 13 min, alone 3.5 / 7.6 / 2.8 min (image / video / audio; 38 / 109 / 69 s of
CPU time), all slowed by the other jobs on the machine.

Multi-label ``audio_tags`` (mAP on 500 validation clips; label prior 0.151; 2-core CPU, 2026-12-07):
alone 300 steps 0.448; co-trained with ``audio`` (``:audio,audio_tags``, 300 steps each) 0.954; alone
600 steps 0.962 (0.701 at step 300). At equal steps per task co-training wins, at equal total steps it
does not: the multi-label task mostly needs more steps. One seed each. The 600-step run:
    python -m vlfm.train --config configs/polyvit_tiny.py:audio_tags --config.total_steps=600 \
        --config.tasks.audio_tags.steps=600 --workdir workdirs/polyvit_tiny_audio_tags_600
"""

import ml_collections

from vlfm.train.config import base_config

TASKS = ("image", "video", "audio")  # co-trained by default
ALL_TASKS = TASKS + ("audio_tags",)
DATA = dict(
    image=dict(name="shapes", num_examples=20_000, image_size=32, max_objects=1, view="image_label", batch_size=64,
               num_workers=0, train_split="train"),
    video=dict(name="moving_shapes", num_examples=10_000, view="video_label", num_frames=8, image_size=32,
               batch_size=64, num_workers=0, train_split="train"),
    audio=dict(name="sounds", num_examples=10_000, view="audio_label", num_mel_bins=32, num_frames=64, batch_size=64,
               num_workers=0, train_split="train"),
    audio_tags=dict(name="sounds", num_examples=10_000, view="audio_tags", num_mel_bins=32, num_frames=64,
                    batch_size=64, num_workers=0, train_split="train"),
)
STEPS = dict(image=300, video=300, audio=300, audio_tags=300)
CLASSES = dict(image=56, video=8, audio=12, audio_tags=12)
MULTI_LABEL = ("audio_tags",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: empty for co-training on image, video and audio, or comma-separated task names (one to
    train it alone)."""
    tasks = TASKS if not arg else tuple(t.strip() for t in arg.split(","))
    unknown = sorted(set(tasks) - set(ALL_TASKS))
    if unknown:
        raise ValueError(f"unknown polyvit_tiny task {unknown}; valid: {', '.join(ALL_TASKS)}")
    c = base_config()
    c.total_steps = sum(STEPS[t] for t in tasks)
    c.model = ml_collections.ConfigDict(dict(
        name="polyvit", width=64, depth=4, num_heads=4, mlp_dim=256, modality_layers=0,
        tokenizers=dict(image=dict(name="vit", patch_size=8),
                        video=dict(name="video_vit", patch_size=8, tubelet_size=2),
                        audio=dict(name="spectrogram_vit", patch_size=16, frequency_stride=16, time_stride=16)),
        heads={t: CLASSES[t] for t in (*TASKS, *(t for t in tasks if t not in TASKS))}))
    loss = lambda t: dict(sigmoid_xent=dict()) if t in MULTI_LABEL else dict(softmax_xent=dict())  # noqa: E731
    c.tasks = ml_collections.ConfigDict({
        t: dict(data=DATA[t], losses=loss(t), steps=STEPS[t], forward=dict(pass_task=True)) for t in tasks})
    c.schedule = "weighted"
    c.optimizer.lr = dict(name="cosine", peak=2e-3, warmup_steps=50)
    c.optimizer.weight_decay = 0.05
    evaluator = lambda t: dict(type="multilabel_map", targets="labels") if t in MULTI_LABEL else dict(  # noqa: E731
        type="classification")
    c.evals = ml_collections.ConfigDict({
        t: dict(evaluator(t), data=DATA[t], predict=f"logits/{t}", every=c.total_steps, split="validation",
                num_examples=500) for t in tasks})
    c.log_every = 50
    c.checkpoint_every = c.total_steps
    return c
