"""UFO: one shared transformer encoder for unpaired images and text (Li et al. 2021).

Modality-specific tokenizers (ViT patch embedding with a class token and positions; BERT word-piece,
position and type embeddings) feed one shared pre-LN encoder and final LayerNorm; task-specific heads
read its output (an image classifier on the class token, BERT's MLM head on text tokens). A batch
carries one modality, and the model computes whatever the batch's keys ask for, so an image task and
a text task train the same parameters through the task schedule (``accumulate`` + gradient masking
in UFO's recipe).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from vlfm.core.flops import transformer_flops
from vlfm.models import layers
from vlfm.models.registry import MODELS
from vlfm.models.tower_base import TransformerTower, encoder_module


@MODELS.register("ufo")
class UnifiedEncoder(TransformerTower):
    """``batch["image"]`` -> ``logits``, ``image_tokens``; ``batch["text"]`` (+ ``text_mask``) ->
    ``mlm_logits``, ``text_tokens``, ``text_pooled``."""

    image_size: int = 224
    patch_size: int = 16
    num_classes: int = 1000
    vocab_size: int = 30522
    max_len: int = 512
    type_vocab_size: int = 2
    tie_mlm_decoder: bool = False
    ln_eps: float = 1e-6

    PREDICT = {"logits": lambda m, b: m(b)["logits"], "mlm_logits": lambda m, b: m(b)["mlm_logits"]}

    @nn.compact
    def __call__(self, batch: dict, *, train: bool = False) -> dict:
        if "image" not in batch and "text" not in batch:
            raise KeyError(f"UFO needs 'image' or 'text' in the batch; got {sorted(batch)}")
        dtype, pdtype = self.dtypes
        encoder = encoder_module(self, norm="pre")
        ln_final = layers.layer_norm(self.ln_eps, dtype, pdtype, name="ln_final")
        outputs = {}
        if "image" in batch:
            x, _ = layers.PatchEmbed(self.patch_size, self.width, init_std=self.init_std, dtype=dtype,
                                     param_dtype=pdtype, name="image_patch_embed")(batch["image"])
            cls = self.param("image_cls", layers.logical(nn.initializers.zeros, ("embed",)), (self.width,), pdtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (x.shape[0], 1, self.width)), x], axis=1)
            x = x + layers.PosEmbed(x.shape[1], self.width, param_dtype=pdtype,
                                    name="image_pos_embed")().astype(dtype)[None]
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
            tokens = ln_final(encoder(x, train=train))
            outputs["image_tokens"] = tokens
            outputs["logits"] = layers.Proj((self.num_classes,), ("embed", "classes"), zero_init=True, dtype=dtype,
                                            param_dtype=pdtype, name="image_head")(tokens[:, 0]).astype(jnp.float32)
        if "text" in batch:
            ids = batch["text"]
            mask = batch.get("text_mask")
            embed = layers.TokenEmbed(self.vocab_size, self.width, dtype=dtype, param_dtype=pdtype,
                                      name="text_token_embed")
            x = embed(ids) + layers.PosEmbed(self.max_len, self.width, param_dtype=pdtype,
                                             name="text_pos_embed")()[: ids.shape[1]].astype(dtype)[None]
            if self.type_vocab_size:
                types = layers.PosEmbed(self.type_vocab_size, self.width, axis_name="types", param_dtype=pdtype,
                                        name="text_type_embed")()
                x = x + jnp.take(types, batch.get("text_type_ids", jnp.zeros_like(ids)), axis=0).astype(dtype)
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
            kv_lengths = None if mask is None else mask.sum(-1).astype(jnp.int32)
            tokens = ln_final(encoder(x, kv_lengths=kv_lengths, train=train))
            outputs["text_tokens"] = tokens
            outputs["text_pooled"] = tokens[:, 0]
            h = layers.Proj((self.width,), ("embed", "proj"), init_std=self.init_std, dtype=dtype, param_dtype=pdtype,
                            name="mlm_transform")(tokens)
            h = layers.layer_norm(self.ln_eps, dtype, pdtype, name="mlm_ln")(layers.activation(self.act)(h))
            if self.tie_mlm_decoder:
                logits = embed.attend(h)
            else:
                logits = layers.Proj((self.vocab_size,), ("embed", "vocab"), use_bias=False, init_std=self.init_std,
                                     dtype=dtype, param_dtype=pdtype, name="mlm_decoder")(h)
            bias = self.param("mlm_bias", layers.logical(nn.initializers.zeros, ("vocab",)), (self.vocab_size,), pdtype)
            outputs["mlm_logits"] = (logits + bias.astype(logits.dtype)).astype(jnp.float32)
        return outputs

    @staticmethod
    def flops_per_example(cfg: dict, *, text_len: int | None, inputs: tuple[str, ...]) -> float:
        """Forward FLOPs per example: the shared stack on image tokens or on text tokens, plus heads."""
        width, depth, mlp = cfg.get("width", 768), cfg.get("depth", 12), cfg.get("mlp_dim", 3072)
        total = 0.0
        if "image" in inputs:
            p, size = cfg.get("patch_size", 16), cfg.get("image_size", 224)
            patches = (size // p) ** 2
            total += 2 * patches * p * p * 3 * width + transformer_flops(patches + 1, width, depth, mlp)
            total += 2 * width * cfg.get("num_classes", 1000)
        if "text" in inputs:
            t = text_len or cfg.get("max_len", 512)
            total += transformer_flops(t, width, depth, mlp) + 2 * t * width * (width + cfg.get("vocab_size", 30522))
        return total
