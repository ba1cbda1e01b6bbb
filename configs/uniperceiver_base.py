"""Uni-Perceiver-Base (Zhu et al., 2022): one 12-layer, 768-wide pre-LN encoder for every input and target,
124,676,356 parameters.

Model as fundamentalvision/Uni-Perceiver's ``BERT_L12_H768`` stage-1 config: 12 heads, MLP 3072, GELU,
pre-LN with layer scale 1e-3, drop-path 0.1; a text tokenizer over CLIP's BPE vocabulary (49,411 ids with
<BOS>/<EOS>, 512 positions), an image tokenizer of 16 px patches at 160 px (100 positions), token-type
embeddings ([SPE], image, text); the output projection (LayerNorm + 768 -> 768) and L2 normalisation;
a temperature per task family initialised at 0.07. Parameters: encoder 85,072,896, word table
37,947,648, positions, patches, types and [SPE] 1,063,680, output projection 592,128, temperatures 4.

Tasks (every one retrieval against a target set, ``vlfm.models.uniperceiver``), one per step by the
``weighted`` schedule with the reference's sampling weights as exact step proportions over its 200k
iterations, and its loss weights (the task ``weight``): classification against class-name texts (IN-22k:
sampling 2.486, loss 1.0, label smoothing 0.1), MLM against the vocabulary (BooksWiki: 2.75, 0.5),
captioning as next-word retrieval (1.0) and image-text retrieval against the batch plus a 1,024-row queue
(0.5). The reference samples its image-text corpora (YFCC 0.584, CC12M 0.506, CC3M 0.263, VG 0.177,
COCO 0.114, SBU 0.138: 1.782 together) for both captioning and retrieval; here each of the two tasks gets
1.782 (an assumption: how the reference splits them was not recovered). Batch sizes are the reference's
per-GPU sizes (it trains on 64 GPUs: multiply by the data-parallel size): 720 / 512 / 300 / 512. Video
classification (K700, MiT) is not part of this config.

Optimiser as the reference: Adam (0.9, 0.95), eps 1e-6, lr 1e-3 with 10k warm-up steps and cosine decay,
weight decay 0.2 (not on norms, biases or embeddings: ``optimizer.no_decay``'s default), gradient norm
clipped at 0.1.

Parameter count (the figure above; also ``tests/test_uniperceiver.py``): ``python -c "import jax, jax.numpy
as jnp, flax, numpy as np; from vlfm.models import build_model; from vlfm.train.config import load_config;
m = build_model(load_config('configs/uniperceiver_base.py').model);
s = jax.eval_shape(lambda: m.init(jax.random.key(0), {'image': jnp.zeros((1, 160, 160, 3)),
'text': jnp.zeros((1, 16), jnp.int32)}))['params'];
print(sum(int(np.prod(v.shape)) for v in jax.tree.leaves(flax.linen.unbox(s))))"``

Command (GPU/TPU; the built-in data as a smoke test, each task's data a ``--config.tasks.NAME.data=...``
override for the real corpora):
    python -m vlfm.train --config configs/uniperceiver_base.py --workdir workdirs/uniperceiver_base
Runtime: not run on CPU. Reported results of the released base model (from its README, not reproduced
here): ImageNet-1k 79.2 zero-shot, 80.9 with prompt tuning on 1% of the data, 84.0 fine-tuned.
"""

import ml_collections

from vlfm.data import shapes
from vlfm.data.tokenizers import WordTokenizer
from vlfm.models.uniperceiver import tokenize_names
from vlfm.train.config import base_config

TOTAL_STEPS = 200_000
SAMPLING = dict(classification=2.486, mlm=2.75, caption=1.782, retrieval=1.782)
LOSS_WEIGHTS = dict(classification=1.0, mlm=0.5, caption=1.0, retrieval=0.5)
BATCH = dict(classification=720, mlm=512, caption=300, retrieval=512)


def _steps() -> dict[str, int]:
    total = sum(SAMPLING.values())
    steps = {k: int(round(TOTAL_STEPS * w / total)) for k, w in SAMPLING.items()}
    steps["classification"] += TOTAL_STEPS - sum(steps.values())
    return steps


def _shapes(task: str, **kwargs) -> dict:
    return dict(dict(name="shapes", num_examples=20_000, image_size=160, max_objects=1, max_len=16,
                     batch_size=BATCH[task], num_workers=8, train_split="train"), **kwargs)


def get_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.total_steps = TOTAL_STEPS
    c.model = ml_collections.ConfigDict(dict(
        name="uniperceiver", width=768, depth=12, num_heads=12, mlp_dim=3072, layer_scale=1e-3, drop_path_rate=0.1,
        image_size=160, patch_size=16, vocab_size=49411, max_len=512, embed_dim=768))
    names = tokenize_names(WordTokenizer.for_shapes(), shapes.CLASS_NAMES, 6)
    c.tasks = ml_collections.ConfigDict(dict(
        classification=dict(data=_shapes("classification", view="image_label"),
                            losses=dict(similarity_xent=dict(label_smoothing=0.1)),
                            forward=dict(method="classify", constants=dict(names, label_key="label"))),
        mlm=dict(data=_shapes("mlm", view="text", mlm_prob=0.15), losses=dict(similarity_xent=dict()),
                 forward=dict(method="mlm")),
        caption=dict(data=_shapes("caption", view="pairs"), losses=dict(similarity_xent=dict()),
                     forward=dict(method="caption")),
        retrieval=dict(data=_shapes("retrieval", view="pairs"), losses=dict(multi_positive_contrastive=dict(queue=True)),
                       forward=dict(method="retrieve")),
    ))
    for name, steps in _steps().items():
        c.tasks[name].steps, c.tasks[name].weight = steps, LOSS_WEIGHTS[name]
    c.schedule = "weighted"
    c.momentum.decay = 0.0  # the queue keeps the model's own detached features
    c.momentum.queue_size = 1024
    c.momentum.queue_keys = ("image_embed", "text_embed")
    c.momentum.tasks = ("retrieval",)
    c.optimizer.update(dict(name="adamw", b1=0.9, b2=0.95, eps=1e-6, weight_decay=0.2, clip_norm=0.1,
                            lr=dict(name="cosine", peak=1e-3, warmup_steps=10_000)))
    c.evals = ml_collections.ConfigDict(dict(
        classification=dict(type="clip_zeroshot", every=10_000, split="validation", num_examples=1000,
                            data=_shapes("classification"), class_names="data", templates=["{}"]),
        retrieval=dict(type="retrieval", every=10_000, split="validation", num_examples=1000,
                       data=_shapes("retrieval")),
    ))
    c.log_every = 100
    c.checkpoint_every = 5000
    return c
