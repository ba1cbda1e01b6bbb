"""A tiny PolyViT co-trained on the built-in image, video and audio classification tasks: one shared
transformer, a tokenizer per modality, a linear head per task, PolyViT's ``weighted`` schedule (each
task's steps in one seeded permutation).

Command:
    python -m vlfm.train --config configs/polyvit_tiny.py --workdir workdirs/polyvit_tiny
One task alone for the same steps (PolyViT's single-task baseline; ``image``, ``video`` or ``audio``):
    python -m vlfm.train --config configs/polyvit_tiny.py:video --workdir workdirs/polyvit_tiny_video

Tasks: ``image``: the shapes image-label view (56 colour-shape classes, 32 px, 4x4 patches of 8 px);
``video``: moving shapes (8 direction x speed classes, 8 frames of 32 px, 2x8x8 tubelets); ``audio``:
built-in sounds (12 pitch x pattern classes, 64 frames x 32 mel bins, 16x16 patches every 16).
Model: width 64, 4 shared layers, 4 heads, MLP 256; each modality's own tokenizer, class token and
positions; heads zero-initialised. No figures yet: the co-training against single-task comparison has
not been run.
"""

import ml_collections

from vlfm.train.config import base_config

TASKS = ("image", "video", "audio")
DATA = dict(
    image=dict(name="shapes", num_examples=20_000, image_size=32, max_objects=1, view="image_label", batch_size=64,
               num_workers=0, train_split="train"),
    video=dict(name="moving_shapes", num_examples=10_000, view="video_label", num_frames=8, image_size=32,
               batch_size=64, num_workers=0, train_split="train"),
    audio=dict(name="sounds", num_examples=10_000, view="audio_label", num_mel_bins=32, num_frames=64, batch_size=64,
               num_workers=0, train_split="train"),
)
STEPS = dict(image=300, video=300, audio=300)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: empty for co-training on all three tasks, or one task name to train it alone."""
    tasks = TASKS if not arg else (arg,)
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown polyvit_tiny task {unknown}; valid: {', '.join(TASKS)}")
    c = base_config()
    c.total_steps = sum(STEPS[t] for t in tasks)
    c.model = ml_collections.ConfigDict(dict(
        name="polyvit", width=64, depth=4, num_heads=4, mlp_dim=256, modality_layers=0,
        tokenizers=dict(image=dict(name="vit", patch_size=8),
                        video=dict(name="video_vit", patch_size=8, tubelet_size=2),
                        audio=dict(name="spectrogram_vit", patch_size=16, frequency_stride=16, time_stride=16)),
        heads=dict(image=56, video=8, audio=12)))
    c.tasks = ml_collections.ConfigDict({
        t: dict(data=DATA[t], losses=dict(softmax_xent=dict()), steps=STEPS[t], forward=dict(pass_task=True))
        for t in tasks})
    c.schedule = "weighted"
    c.optimizer.lr = dict(name="cosine", peak=2e-3, warmup_steps=50)
    c.optimizer.weight_decay = 0.05
    c.evals = ml_collections.ConfigDict({
        t: dict(type="classification", data=DATA[t], predict=f"logits/{t}", every=c.total_steps, split="validation",
                num_examples=500) for t in tasks})
    c.log_every = 50
    c.checkpoint_every = c.total_steps
    return c
