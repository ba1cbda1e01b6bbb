"""R2D2 (Xie et al., 2023; layout of yuxie11/R2D2 ``models/r2d2_retrieval.py``): pre-ranking by a dual
encoder, ranking by two cross encoders.

- Towers: a CLIP-style ViT and a BERT text tower (``image`` / ``text`` tower configs, as METER's).
- Global contrastive pre-ranking (GCPR): normalised projections of the towers' class tokens and a learned
  temperature (``contrastive_dim``, ``logit_scale``), for ``softmax_contrastive`` or, with positives by image
  id, ``multi_positive_contrastive``; its momentum-distilled form (``alpha`` with ``config.momentum``) is
  target-guided distillation on the pre-ranking.
- Fine-grained ranking (FGR): two independent cross encoders (``exchange=False`` co-attention stacks):
  the text-image encoder's text queries attend to the image tokens, the image-text encoder's image
  queries to the text tokens. Each scores the ``3B`` pairs [positive; hard-negative image; hard-negative
  text] (negatives drawn from the contrastive similarities, ``itm="hard"``) with its own head on its
  first token: ``itm_logits`` (text-image) and ``itm_image_logits`` (image-text), for two ``itm`` losses
  with ``class_weights=(1, 2)``.
- Feature-guided distillation (``fgd``): in training the student also encodes the masked caption
  (``batch["mlm_text"]``, the data's ``mlm_prob``) into ``fgd_text_embed``, which ``kd_hidden`` with
  ``teacher="momentum"`` regresses onto the momentum teacher's ``text_embed`` of the full caption.
- Retrieval: the dual encoder ranks everything, the cross encoders re-rank its top k
  (``itm_rerank_retrieval``; ``score`` picks ``itm_score``, the mean of both heads' log-odds, or one head:
  ``itm_score_text`` / ``itm_score_image``).
"""

from __future__ import annotations

import jax.numpy as jnp

from vlfm.models import layers
from vlfm.models.meter import CoAttentionModel
from vlfm.models.registry import MODELS


@MODELS.register("r2d2")
class R2d2(CoAttentionModel):
    """R2D2: METER's towers and projections, two independent cross encoders, one ITM head each on
    its first token (no tanh pooler)."""

    exchange: bool = False
    pooler: bool = False
    itm: str = "hard"
    contrastive_dim: int = 768
    fgd: bool = False

    PREDICT = dict(CoAttentionModel.PREDICT,
                   itm_score_text=lambda m, b: m.itm_scores(b)["itm_logits"],
                   itm_score_image=lambda m, b: m.itm_scores(b)["itm_image_logits"])

    def setup(self):
        super().setup()
        if self.itm != "none":
            dtype, pdtype = self.dtypes
            self.itm_image_head = layers.Proj((2,), ("embed", "classes"), init_std=self.init_std, dtype=dtype,
                                              param_dtype=pdtype)

    def __call__(self, batch: dict, *, train: bool = False) -> dict:
        out = super().__call__(batch, train=train)
        if self.fgd and train:
            if "mlm_text" not in batch:
                raise KeyError("fgd encodes the masked caption batch['mlm_text']: give the data mlm_prob > 0")
            masked = self.text_tower(batch["mlm_text"], batch.get("text_mask"), train=train)["tokens"]
            out["fgd_text_embed"] = self._text_embed(masked)
        return out

    def itm_outputs(self, fused: dict) -> dict:
        return {"itm_logits": self.itm_head(fused["text_tokens"][:, 0]).astype(jnp.float32),
                "itm_image_logits": self.itm_image_head(fused["image_tokens"][:, 0]).astype(jnp.float32)}
