"""VLMo's stagewise pretraining at toy size: image-only masked image modelling, then text-only masked
language modelling with the shared attention and the V-FFN frozen, then the image-text stage of
``configs/vlmo_tiny.py`` (schedule ``stages``: one task after the other, each with its ``freeze``).

Command:
    python -m vlfm.train --config configs/vlmo_tiny_stagewise.py --workdir workdirs/vlmo_tiny_stagewise

1. ``image`` (``forward.method="mim"``): BEiT masked image modelling on the image-only pass. Block masks
   of 6 of the 16 patches (``data.mim``, ``vlfm.data.masking.block_mask``) are replaced by a mask token;
   the targets are the codes of the frozen k-means image tokenizer fitted on the built-in images
   (``image_tokenizer="kmeans"``, 64 codes of 8 px patches). Trains what BEiT has: the image embeddings,
   the shared attention and layer scales, the V-FFN, the relative position table and the final norm,
   plus the mask token and the MIM head (``TRAINABLE["image"]``); everything else is frozen.
2. ``text`` (``forward.method="text_mlm"``): MLM on the text-only pass (L-FFN in every layer, the
   VL-FFN unused). The paper trains the L-FFN and the text embeddings; the public code (its launcher)
   also trains the relative position table, the token-type embeddings and the final LayerNorm, so the
   trainable set is written out here (``TRAINABLE["text"]``): the shared attention, the layer scales, the
   V-FFN and the image embeddings stay frozen.
3. ``vl``: ITC (V/L experts and VL experts) + ITM with hard negatives + MLM on the fused pass, as
   ``vlmo_tiny``; everything trains but the MIM-only parameters (mask token, MIM head).

``freeze`` takes path regexes of the parameters that must not move; ``frozen_except`` turns a stage's
trainable set into one regex (a negative lookahead), so every parameter a stage does not name stays
bit-identical through it (weight decay included: frozen updates are zeroed after the optimizer).

Measured (the command above, 1,100 steps, 7 minutes on the 2-core CPU; entry in
``benchmarks/RESULTS.md``), on 500 held-out pairs: dual-encoder R@1 image->text / text->image 0.150 /
0.130 (chance 0.002), MLM with the image 0.511 (unigram 0.122), ITM 0.5 (ranking 0.61). Against
``vlmo_tiny``'s 500 image-text steps alone (R@1 0.248 / 0.256, MLM 0.450, ITM 0.5): the unimodal stages
help MLM, not retrieval, at this size; the paper's gain comes from large unpaired corpora, which the
built-in data is not.
"""

import os

import ml_collections

from vlfm.train.config import load_config_file

LAYERS = r"transformer/(vl_)?layer(s|_\d+)"  # scanned (``layers``) and unrolled (``layer_3``) MoME layers
TRAINABLE = {
    "image": ("image_embeddings", "mask_token", "mim_head", "transformer/rel_pos", "transformer/ln_final",
              rf"{LAYERS}/(ln1|qkv|attn_out|ls1|ls2|ffn_image)"),
    "text": ("text_embeddings", "modality_embed", "mlm_head", "transformer/rel_pos", "transformer/ln_final",
             rf"{LAYERS}/ffn_text"),
}
MIM_ONLY = ("mask_token", "mim_head/.*")
IMAGE_STEPS, TEXT_STEPS, VL_STEPS = 300, 300, 500


def frozen_except(trainable: tuple[str, ...]) -> tuple[str, ...]:
    """A ``freeze`` pattern matching every parameter path that does not start with one of ``trainable``."""
    return (rf"(?!(?:{'|'.join(trainable)})(?:/|$)).*",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = load_config_file(os.path.join(os.path.dirname(__file__), "vlmo_tiny.py"))
    c.total_steps = IMAGE_STEPS + TEXT_STEPS + VL_STEPS
    c.model.update(dict(mim_vocab_size=64, image_tokenizer="kmeans", tokenizer_fit_images=2000))
    vl_data = dict(c.data)
    c.data = ml_collections.ConfigDict()
    image_data = dict(name="shapes", view="image", num_examples=20_000, image_size=32, max_objects=2,
                      mim=dict(grid=(4, 4), num_masked=6, min_block=2), batch_size=64, num_workers=0)
    text_data = dict(name="shapes", view="text", num_examples=20_000, max_objects=2, max_len=24, mlm_prob=0.15,
                     batch_size=64, num_workers=0)
    c.tasks = ml_collections.ConfigDict(dict(
        image=dict(data=image_data, forward=dict(method="mim"), steps=IMAGE_STEPS,
                   losses=dict(mim=dict(fn="masked_xent", logits_key="mim_logits", target_key="mim_targets",
                                        weight=1.0)),
                   freeze=frozen_except(TRAINABLE["image"])),
        text=dict(data=text_data, forward=dict(method="text_mlm"), steps=TEXT_STEPS,
                  losses=dict(masked_xent=dict(weight=1.0)), freeze=frozen_except(TRAINABLE["text"])),
        vl=dict(data=vl_data, steps=VL_STEPS, losses=dict(c.losses), freeze=MIM_ONLY),
    ))
    c.losses = ml_collections.ConfigDict()
    c.schedule = "stages"
    for ev in c.evals.values():
        ev.data = "task:vl"
        ev.every = c.total_steps
    return c
