"""OmniVL-Base (Wang et al., NeurIPS 2022) at paper size: a TimeSformer-B/16 visual encoder for images
and videos, BERT-base text, a 12-layer alignment decoder and a 12-layer generation decoder; 561,370,883 parameters
(visual encoder 121,258,752, text encoder 108,891,648, alignment decoder 113,421,312 + ITM head, generation
decoder 193,569,792 + its token and position tables 23,834,112, projections the rest).

Layout (the paper's BLIP-style design; details not checked against a reference implementation):
- visual encoder: ``video_vit`` with divided space-time attention, 224 px, 16 px patches per frame
  (``tubelet_size=1``), width 768, 12 layers, 12 heads, TimeSformer's space + time positions for 8 frames;
  images enter as one-frame videos;
- text encoder: BERT-base (30,522 tokens, 512 positions, no pooler: the class token is projected);
- alignment decoder: 12 post-LN layers of width 768 with cross-attention to the visual tokens, ITM head;
- generation decoder: a token and position table of its own and the generative models'
  ``multimodal_decoder`` (12 layers: causal self-attention, cross-attention, MLP);
- UniVLC: 256-d contrastive space, ``multi_positive_contrastive`` with labels, a momentum encoder
  (0.995) and a queue of 57,600 rows (BLIP's sizes).
BLIP shares the text encoder's layers with the two decoders (apart from their cross- / causal
attention); here each has its own, so this model is larger than a shared one.

Parameter count (the figure above; also ``tests/test_omnivl.py``): ``python -c "import jax, jax.numpy as jnp,
flax, numpy as np; from vlfm.models import build_model; from vlfm.train.config import load_config;
m = build_model(load_config('configs/omnivl_base.py').model); k = jax.random.key(0);
s = jax.eval_shape(lambda: m.init({'params': k, 'sampling': k, 'dropout': k},
{'video': jnp.zeros((2, 8, 224, 224, 3)), 'text': jnp.zeros((2, 32), jnp.int32)}, train=True))['params'];
print(sum(int(np.prod(v.shape)) for v in jax.tree.leaves(flax.linen.unbox(s))))"``

Command (GPU/TPU; on the built-in images and videos at 224 px as a smoke test; the paper's data,
image-text, video-text, image-label and video-label corpora, go in through webdataset shards):
    python -m vlfm.train --config configs/omnivl_base.py --workdir workdirs/omnivl_base
Runtime: not run on CPU.
"""

import ml_collections

from vlfm.train.config import base_config

IMAGE_STEPS, JOINT_STEPS = 100_000, 100_000
BATCH = 64
NUM_IMAGE_CLASSES = 56
SHAPES = dict(name="shapes", num_examples=20_000, image_size=224, max_objects=1, max_len=32)
CLIPS = dict(name="moving_shapes", num_examples=10_000, num_frames=8, image_size=224, max_len=32, vocab="shapes")
WIDE = dict(width=768, depth=12, num_heads=12, mlp_dim=3072)


def _mixture(pairs: dict, labels: dict) -> dict:
    return dict(name="mixture", sampling="weighted", datasets=dict(pairs=pairs, labels=labels), batch_size=BATCH,
                train_split="train")


def image_data() -> dict:
    return _mixture(dict(name="unique_labels", source=dict(SHAPES, view="pairs")),
                    dict(name="label_text", templates="data", source=dict(SHAPES, view="image_label")))


def video_data() -> dict:
    return _mixture(dict(name="unique_labels", keep=("video", "text", "text_mask"),
                         source=dict(CLIPS, view="video_caption")),
                    dict(name="label_text", templates="data", keep=("video",), label_offset=NUM_IMAGE_CLASSES,
                         source=dict(CLIPS, view="video_label")))


def losses() -> dict:
    return dict(multi_positive_contrastive=dict(label_key="label", queue=True, alpha=0.4, weight=1.0),
                itm=dict(weight=1.0), caption_ce=dict(weight=1.0))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = IMAGE_STEPS + JOINT_STEPS
    c.model = ml_collections.ConfigDict(dict(
        name="omnivl", embed_dim=256, align_depth=12, align_heads=12, align_mlp_dim=3072,
        image=dict(name="video_vit", image_size=224, patch_size=16, tubelet_size=1, attention_type="divided",
                   pos_embedding="space_time", num_frames=8, ln_eps=1e-6, **WIDE),
        text=dict(name="bert", vocab_size=30522, max_len=512, pooler=False, **WIDE),
        decoder=dict(name="multimodal_decoder", vocab_size=30522, max_len=512, depth=12, num_heads=12, mlp_dim=3072,
                     ln_eps=1e-12),
    ))
    c.tasks = ml_collections.ConfigDict(dict(
        image=dict(data=image_data(), losses=losses(), steps=IMAGE_STEPS, stage="image"),
        image_joint=dict(data=image_data(), losses=losses(), steps=JOINT_STEPS // 2, stage="joint"),
        video=dict(data=video_data(), losses=losses(), steps=JOINT_STEPS - JOINT_STEPS // 2, stage="joint"),
    ))
    c.schedule = "stages"
    c.momentum.decay = 0.995
    c.momentum.queue_size = 900 * BATCH
    c.momentum.queue_keys = ["image_embed", "text_embed", "label"]
    c.optimizer.lr = dict(name="cosine", peak=1e-4, warmup_steps=3000)
    c.optimizer.weight_decay = 0.05
    c.evals = ml_collections.ConfigDict(dict(
        video_retrieval=dict(type="retrieval", every=10_000, split="validation", num_examples=1000,
                             input_key="video", data=dict(CLIPS, view="video_caption")),
        video_zeroshot=dict(type="clip_zeroshot", every=10_000, split="validation", num_examples=1000,
                            input_key="video", view="video_label", class_names="data", templates="data",
                            data=dict(CLIPS)),
    ))
    c.checkpoint_every = 10_000
    return c
