"""UniCL with a Swin-T image tower (Yang et al. 2022, the Swin-T setting of microsoft/UniCL), trained with
the unified image-text-label contrast (``multi_positive_contrastive``).

Image tower: Swin-T at 224 px: patch 4, width 96, depths 2-2-6-2, heads 3-6-12-24, window 7, MLP ratio 4,
no absolute positions, stochastic depth 0.2 (Swin-T's ImageNet recipe), the final LayerNorm's tokens
averaged into a 768-d feature. Text tower: UniCL's language encoder, a causal 12-layer transformer, width
512, 8 heads, 77 tokens over a 49,408-piece vocabulary, pooled at the end token (from memory of the UniCL
code, unchecked). Projections 768 -> 512 and 512 -> 512 without bias, truncated-normal std 0.02;
``logit_scale`` starts at 1.0 (the temperature is ``exp(1.0)``), as in UniCL's ``model.py``.

Parameters: 91,340,667 (image tower 27,519,354, text tower 63,165,952, projections 393,216 + 262,144, logit
scale 1),
counted by
    python -c "import jax,math; from vlfm.train.config import load_config; from vlfm.models import build_model; \
from vlfm.core.tree import strip_boxes; c=load_config('configs/unicl_swin_t.py').model.to_dict(); \
p=strip_boxes(jax.eval_shape(lambda: build_model(c).init(jax.random.PRNGKey(0), \
{'image': jax.numpy.zeros((1,224,224,3)), 'text': jax.numpy.zeros((1,77),'int32')}))['params']); \
print({k: sum(math.prod(x.shape) for x in jax.tree.leaves(v)) for k, v in p.items()}, \
sum(math.prod(x.shape) for x in jax.tree.leaves(p)))"
The image tower's 27,519,354 equal HF ``SwinModel(SwinConfig())`` (Swin-T) exactly; 25.3M of the text
tower's are its token embeddings.

Command (GPU/TPU; on the built-in shapes data upsampled to 224 px as a smoke test, half image-label
prompts and half caption pairs per batch, as ``configs/florence_tiny.py``; real corpora come from the data
configs):
    python -m vlfm.train --config configs/unicl_swin_t.py --workdir workdirs/unicl_swin_t

Reported (UniCL README, Swin-T): ImageNet-1K + GCC-15M, supervised top-1 81.8; ImageNet-21K + YFCC-14M,
zero-shot ImageNet-1K 40.5. Not reproduced here. Runtime: not run on CPU.
"""

import os

import ml_collections

from vlfm.train.config import load_config_file

SHAPES = dict(name="shapes", num_examples=10_000, image_size=224, max_len=77)
SWIN_T = dict(name="swin", image_size=224, patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
              window_size=7, mlp_ratio=4.0, drop_path_rate=0.2, init_std=0.02, dtype="bfloat16")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = load_config_file(os.path.join(os.path.dirname(__file__), "florence_tiny.py"))
    c.total_steps = 10_000
    c.model = ml_collections.ConfigDict(dict(
        name="dual_encoder",
        embed_dim=512,
        logit_scale_init=1.0,
        proj_init_std=0.02,
        image=dict(SWIN_T),
        text=dict(name="text_transformer", vocab_size=49408, max_len=77, width=512, depth=12, num_heads=8,
                  mlp_dim=2048, pool="eos", eos_id=3, ln_eps=1e-5, dtype="bfloat16", attention="auto"),
        dtype="bfloat16",
    ))
    for d in c.data.datasets.values():
        d.source.update(SHAPES)
    c.data.batch_size = 256
    c.optimizer.update(dict(lr=dict(name="cosine", peak=5e-4, warmup_steps=1000), weight_decay=0.05))
    c.evals.retrieval.data.update(SHAPES)
    c.evals.zeroshot.data.update(SHAPES)
    c.evals.retrieval.every = c.evals.zeroshot.every = 1000
    c.log_every = 100
    c.checkpoint_every = 1000
    return c
