"""VLC (Gui et al., 2022): a ViLT-style single-stream transformer, started from an MAE-pretrained ViT and
trained from captions with MLM, ITM and MAE pixel reconstruction.

The MLM pass sees a randomly masked image (``mae_ratio`` of the patches dropped, MAE's masking with
its restore order; ``masking`` stream, a fixed key at evaluation), as guilk/VLC computes its MAE loss
inside the MLM forward: the encoder runs over ``[masked text; [CLS] + kept patches]``, the MLM head
reads the text positions and an MAE decoder (``vlfm.models.masked_image.MaeDecoder``: 8 layers, 512
wide, 16 heads, fixed sin-cos positions) reconstructs every patch from the image positions. Outputs
``mae_pred``, ``mae_target`` (the patch pixels), ``mae_mask`` for the loss ``mae_pixel`` (per-patch
normalised targets, masked patches only). ITM runs on unmasked images, as ViLT's. With ``mae=False``
the model is ViLT (fine-tuning heads included).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlfm.models.fusion import take_rows
from vlfm.models.masked_image import MaeDecoder, keep_tokens, patchify, random_masking
from vlfm.models.registry import MODELS
from vlfm.models.vilt import Vilt


@MODELS.register("vlc")
class Vlc(Vilt):
    """ViLT plus MAE reconstruction of the masked image in the MLM pass (defaults: VLC-Base, ViT-B/16 at
    224 px, 40 text tokens)."""

    image_size: int = 224
    patch_size: int = 16
    mae: bool = True
    mae_ratio: float = 0.6
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    decoder_mlp_dim: int = 2048

    def setup(self):
        super().setup()
        if self.mae:
            grid = self.image_size // self.patch_size
            self.mae_decoder = MaeDecoder((grid, grid), self.patch_size * self.patch_size * 3, self.decoder_width,
                                          self.decoder_depth, self.decoder_heads, self.decoder_mlp_dim, n_prefix=1,
                                          ln_eps=self.ln_eps, act=self.act, scan=self.scan, remat=self.remat,
                                          attention=self.attention, dtype=self.dtypes[0], param_dtype=self.dtypes[1])

    def __call__(self, batch: dict, *, train: bool = False) -> dict:
        if not self.mae:
            return super().__call__(batch, train=train)
        if self.vqa_answers or self.num_classes or self.pair_classes:
            raise ValueError("mae=True is VLC's pretraining objective; fine-tune task heads with mae=False")
        text_mask = batch.get("text_mask")
        image = self.encode_image(batch["image"], train)
        text = self.encode_text(batch["text"], text_mask, train)
        b, n = image["tokens"].shape[0], image["tokens"].shape[1] - 1
        rng = self.make_rng("masking") if self.has_rng("masking") else jax.random.key(0)
        ids_keep, mask, ids_restore = random_masking(rng, n, b, self.mae_ratio)
        tokens = image["tokens"]
        kept = {"tokens": jnp.concatenate([tokens[:, :1], keep_tokens(tokens[:, 1:], ids_keep)], axis=1)}
        masked_text = self.encode_text(batch["mlm_text"], text_mask, train) if "mlm_text" in batch else text
        fused = self.fuse(masked_text, kept, 1, train)
        out = {"mae_pred": self.mae_decoder(fused["image_tokens"], ids_restore, train=train),
               "mae_target": patchify(batch["image"], self.patch_size), "mae_mask": mask}
        if self.mlm:
            out["mlm_logits"] = self.mlm_head(fused["text_tokens"])
        if self.itm != "none":
            text_idx, image_idx, labels = self.itm_pairs(batch, out, b, train)
            pairs = self.fuse(take_rows(text, text_idx), take_rows(image, image_idx), 1, train)
            out.update(itm_logits=self.itm_head(pairs["pooled"]).astype(jnp.float32), itm_labels=labels,
                       **{f"itm_{k}": pairs[k] for k in ("text_tokens", "image_tokens", "text_mask", "image_mask")})
        if not train:
            plain = self.fuse(text, image, 1, train)
            out.update({k: plain[k] for k in ("pooled", "text_tokens", "image_tokens")})
        return out
