"""DaVinci-base: 6 encoder + 6 decoder post-LN layers, hidden 768, 12 heads, MLP 3072 (the public
repository's sizes), on one vocabulary of BERT's 30,522 word pieces, 1,024 image codes and IMG_BOS.

The ResNet-101 grid features of the original are replaced by a ViT patch embedding: 256x256 images in
16x16 patches give the same 16x16 = 256-token grid, and the same grid of image codes. Word embeddings
are tied between the encoder's text input, the decoder's input and its output; encoder text and decoder
positions cover 512 tokens (BERT's), so prefix image modelling fits the 256 codes after IMG_BOS.

125,667,899 parameters (``tests/test_davinci.py`` checks this against a count by hand): word embeddings
24,228,096, encoder 6 x 7,087,872, decoder 6 x 9,451,776 (each adds cross-attention), embeddings and
LM head the rest.

Image codes: ``tokenizer="kmeans"`` fits 1,024 codes of 16x16 patches on built-in images when the model
first needs them (minutes); give the path of a released dVAE/VQ codebook ``.npz`` instead
(``vlfm.models.image_tokenizer.ImageTokenizer.load`` describes the layout).

Command (one GPU; the built-in shapes data stands in for image-text pairs and text-only data):
    python -m vlfm.train --config configs/davinci_base.py --workdir workdirs/davinci_base
"""

import ml_collections

from vlfm.train.config import base_config

PAIRS = dict(name="shapes", num_examples=10_000, image_size=256, view="pairs", max_len=40, batch_size=64)
TEXT = dict(name="shapes", num_examples=50_000, view="text", max_len=40, batch_size=64)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = base_config()
    c.total_steps = 10_000
    c.model = ml_collections.ConfigDict(dict(
        name="davinci", image_size=256, patch_size=16, text_vocab_size=30522, image_vocab_size=1024, width=768,
        encoder_depth=6, decoder_depth=6, num_heads=12, mlp_dim=3072, max_text_len=512, max_decode_len=512,
        norm="post", ln_eps=1e-12, dropout_rate=0.1, attn_dropout_rate=0.1, tokenizer="kmeans",
        dtype="bfloat16", attention="auto"))
    c.tasks = ml_collections.ConfigDict(dict(
        pairs=dict(data=dict(PAIRS), forward=dict(method="prefix_lm"),
                   losses=dict(plm=dict(fn="caption_ce", weight=1.0))),
        pim=dict(data=dict(PAIRS), forward=dict(method="prefix_image"),
                 losses=dict(pim=dict(fn="caption_ce", logits_key="image_logits", labels_key="image_labels",
                                      weight=1.0))),
        text=dict(data=dict(TEXT), forward=dict(method="prefix_lm"),
                  losses=dict(plm=dict(fn="caption_ce", weight=1.0))),
    ))
    c.schedule = "accumulate"
    c.optimizer.update(dict(name="adamw", lr=dict(name="cosine", peak=1e-4, warmup_steps=500), weight_decay=0.01,
                            clip_norm=1.0))
    c.evals = ml_collections.ConfigDict(dict(
        caption=dict(type="captioning", data=dict(PAIRS), every=2000, num_examples=500, batch_size=64),
        pim=dict(type="token_accuracy", data=dict(PAIRS), predict="image_tokens", every=2000, num_examples=500,
                 batch_size=64),
    ))
    return c
