"""A tiny OmniVL on the built-in images and videos: one TimeSformer-style visual encoder for both (an
image is a one-frame video), a text encoder, an alignment decoder with an ITM head and a generation
decoder, trained with UniVLC (``multi_positive_contrastive`` over image-text, image-label, video-text and
video-label rows, with a momentum encoder and a queue), ITM and captioning.

Commands:
    python -m vlfm.train --config configs/omnivl_tiny.py --workdir workdirs/omnivl_tiny
    python -m vlfm.train --config configs/omnivl_tiny.py:video_only --workdir workdirs/omnivl_tiny_video_only

Decoupled pretraining (schedule ``stages``): the ``image`` task alone for ``IMAGE_STEPS`` (500), then the
``joint`` stage, where the tasks ``image_joint`` and ``video`` (one ``stage`` name) alternate, each
``JOINT_STEPS // 2`` (1,000) steps. ``:video_only`` trains the same model on the ``video`` task alone for
the same total steps (2,500; video from scratch). Each task's batch mixes captioned examples
(``unique_labels``: a label of their own) with label examples (``label_text``: a prompt of the class, the
class id as label; video classes after the 56 image classes, ``label_offset=56``): half each for images,
``VIDEO_LABEL_WEIGHT`` (0.3) video-label rows per video-text row for videos. The texts of both share one
vocabulary (``moving_shapes`` with ``vocab="shapes"``).

Data: shapes images (32 px, one object, 56 colour-shape classes); moving shapes clips (4 frames of 32
px, 8 direction x speed classes). Model: frames in 8x8 patches (16 per frame), width 64, 2 divided
space-time layers; a causal text transformer (2 layers of width 64, pooled at the end token, as in
``clip_tiny``); alignment decoder 1 layer; generation decoder 1 layer; 64-d contrastive space; momentum
0.99, queue of 256 rows; 446,723 parameters. Evaluated on 500 held-out clips: video-text retrieval
(R@1/5/10; chance R@1 0.002, R@10 0.02), zero-shot video classification with the data's prompts (8 motion
classes, chance 0.125) and video-text matching (``itm_accuracy``, chance 0.5).

Measured (2-core CPU shared with other jobs, 2026-12-07; each run about 10 minutes wall, two at a time,
0.16-0.18 s/step; seeds 0 and 1, the second with ``--config.seed=1``), at step 2,500:

    run                 v->t R@1/5/10          t->v R@1/5/10          zero-shot top-1/top-5   ITM acc / ranking
    decoupled, seed 0   0.018 / 0.154 / 0.274  0.026 / 0.108 / 0.232  0.146 / 0.652          0.508 / 0.662
    decoupled, seed 1   0.014 / 0.102 / 0.228  0.026 / 0.104 / 0.202  0.106 / 0.642          0.513 / 0.650
    video_only, seed 0  0.014 / 0.080 / 0.164  0.014 / 0.078 / 0.150  0.110 / 0.630          0.500 / 0.588
    video_only, seed 1  0.010 / 0.048 / 0.148  0.014 / 0.072 / 0.156  0.116 / 0.628          0.500 / 0.474

Video-text retrieval is 5-13x chance at R@1 and 7-14x at R@10, and the decoupled schedule (image stage,
then images and videos) beats video from scratch at equal steps in both seeds (R@10 0.23-0.27 against
0.15-0.16), although it trains on 1,000 video steps against 2,500. Zero-shot classification of motion is
at chance in every run: the clips' direction and speed are not learned at this size and length (what
retrieval matches is presumably the captions' colour and shape words), and ITM stays at about chance
(the head learns to answer "no match"). Neither is far above chance yet.

Why ``VIDEO_LABEL_WEIGHT`` is 0.3 (300-step ``:video_only`` runs, ``--config.total_steps=300``): with
half the video rows being motion-label rows, which have many positives among the queue's rows (about 10
per row), the contrastive loss sits at its collapsed value (every embedding alike) and retrieval stays at
chance (R@1 0-0.004, R@10 0.01-0.03) whatever the queue length (32, 64 or 256 rows), the momentum (0.9 or
0.99) or the columns (``columns="momentum"``, ALBEF's); the same run without the queue leaves the collapse
(R@1 0.006-0.008, R@10 0.06-0.07), and with 0.3 label rows per caption row it does with the queue too
(``--config.total_steps=400``: R@1 0.010, R@10 0.13-0.15). The text tower is a causal end-token
transformer rather than a small BERT: with ``bert`` the image stage of the first runs (otherwise this
config with 1,500 steps) did not leave the collapse (train i2t accuracy 1/32 up to step 900), with this
tower it does within 200 steps.
"""

import ml_collections

from vlfm.train.config import base_config

MOTION_STEPS, IMAGE_STEPS = 1000, 500  # the first two stages
JOINT_STEPS = dict(image_joint=500, motion_joint=500, video=1000)  # the joint stage, alternating
BATCH = 32
NUM_IMAGE_CLASSES = 56
VIDEO_LABEL_WEIGHT = 0.3  # video-label rows per video-text row (see the docstring: motion classes, the queue)
TOWER = dict(width=64, depth=2, num_heads=4, mlp_dim=256, ln_eps=1e-5)
SHAPES = dict(name="shapes", num_examples=20_000, image_size=32, max_objects=1, max_len=16)
CLIPS = dict(name="moving_shapes", num_examples=10_000, num_frames=4, image_size=32, max_len=12, vocab="shapes")


def image_data() -> dict:
    pairs = dict(name="unique_labels", weight=1.0, source=dict(SHAPES, view="pairs"))
    labels = dict(name="label_text", weight=1.0, templates="data", source=dict(SHAPES, view="image_label"))
    return dict(name="mixture", sampling="weighted", datasets=dict(pairs=pairs, labels=labels), batch_size=BATCH,
                num_workers=0, train_split="train")


def video_data() -> dict:
    pairs = dict(name="unique_labels", weight=1.0, keep=("video", "text", "text_mask"),
                 source=dict(CLIPS, view="video_caption"))
    labels = dict(name="label_text", weight=VIDEO_LABEL_WEIGHT, templates="data", keep=("video",),
                  label_offset=NUM_IMAGE_CLASSES,
                  source=dict(CLIPS, view="video_label"))
    return dict(name="mixture", sampling="weighted", datasets=dict(pairs=pairs, labels=labels), batch_size=BATCH,
                num_workers=0, train_split="train")


def motion_data() -> dict:
    """Video-label rows alone: every text a motion prompt."""
    labels = dict(name="label_text", templates="data", keep=("video",), label_offset=NUM_IMAGE_CLASSES,
                  source=dict(CLIPS, view="video_label"), batch_size=BATCH, num_workers=0, train_split="train")
    return labels


def losses(queue: bool = True) -> dict:
    return dict(multi_positive_contrastive=dict(label_key="label", queue=queue, weight=1.0),
                itm=dict(weight=1.0), caption_ce=dict(weight=1.0))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "video_only"):
        raise ValueError(f"configs/omnivl_tiny.py takes no argument or 'video_only', got {arg!r}")
    c = base_config()
    motion = dict(data=motion_data(), losses=losses(queue=False), steps=MOTION_STEPS, stage="motion")
    joint = dict(
        image_joint=dict(data=image_data(), losses=losses(), steps=JOINT_STEPS["image_joint"], stage="joint"),
        motion_joint=dict(motion, steps=JOINT_STEPS["motion_joint"], stage="joint"),
        video=dict(data=video_data(), losses=losses(), steps=JOINT_STEPS["video"], stage="joint"))
    if arg == "video_only":  # the same video tasks and steps, no image task
        del joint["image_joint"]
        tasks = dict(motion=motion, **joint)
    else:
        tasks = dict(motion=motion, image=dict(data=image_data(), losses=losses(), steps=IMAGE_STEPS, stage="image"),
                     **joint)
    c.tasks = ml_collections.ConfigDict(tasks)
    c.task_order = list(tasks)  # the stages in the order written (a ConfigDict sorts its keys by name)
    c.schedule = "stages"
    c.total_steps = sum(t["steps"] for t in tasks.values())
    c.model = ml_collections.ConfigDict(dict(
        name="omnivl", embed_dim=64, align_depth=1, align_heads=4, align_mlp_dim=256,
        image=dict(name="video_vit", image_size=32, patch_size=8, tubelet_size=2, attention_type="joint",
                   pos_embedding="space_time", num_frames=CLIPS["num_frames"], **TOWER),
        text=dict(name="text_transformer", vocab_size=70, max_len=16, pool="eos", eos_id=3, **TOWER),
        decoder=dict(name="multimodal_decoder", vocab_size=70, max_len=16, depth=1, num_heads=4, mlp_dim=256),
    ))
    c.momentum.decay = 0.99
    c.momentum.queue_size = 8 * BATCH
    c.momentum.queue_keys = ["image_embed", "text_embed", "label"]
    c.optimizer.lr = dict(name="cosine", peak=2e-3, warmup_steps=30)
    c.optimizer.weight_decay = 0.05
    every = c.total_steps
    c.evals = ml_collections.ConfigDict(dict(
        video_retrieval=dict(type="retrieval", every=every, split="validation", num_examples=500, input_key="video",
                             data=dict(CLIPS, view="video_caption")),
        video_zeroshot=dict(type="clip_zeroshot", every=every, split="validation", num_examples=500,
                            input_key="video", view="video_label", class_names="data", templates="data",
                            data=dict(CLIPS)),
        video_itm=dict(type="itm_accuracy", every=every, split="validation", num_examples=500, input_key="video",
                       data=dict(CLIPS, view="video_caption")),
    ))
    c.log_every = 50
    c.checkpoint_every = c.total_steps
    return c
