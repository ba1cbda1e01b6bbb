"""Single-tower models: an image classifier and a masked language model."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from vlfm.models.registry import MODELS
from vlfm.models.towers import build_tower


@MODELS.register("image_classifier")
class ImageClassifier(nn.Module):
    """``batch[input_key]`` -> the tower's outputs, with ``logits`` from its classifier head. Any
    one-input tower: images (``vit``), videos (``video_vit``, ``input_key="video"``), spectrograms
    (``spectrogram_vit``, ``input_key="audio"``).

    ``encode_image`` gives the pre-logit features (the tower's ``pooled``, the head's input), the feature
    the frozen-feature protocols (``linear_probe``, ``fewshot``) read by default, so a classifier is probed
    on its representation rather than on its class scores."""

    image: Any
    input_key: str = "image"
    PREDICT = {"logits": lambda m, b: m(b)["logits"], "encode_image": lambda m, b: m(b)["pooled"]}

    @nn.compact
    def __call__(self, batch: dict, *, train: bool = False) -> dict:
        return build_tower(self.image, name="image_tower")(batch[self.input_key], train=train)


@MODELS.register("text_encoder")
class TextEncoder(nn.Module):
    """``batch["text"]`` (+ ``text_mask``, ``text_type_ids``) -> tower outputs (e.g. ``mlm_logits``).

    For masked language modelling the batch carries the masked ids in ``text`` and targets in
    ``mlm_targets``.
    """

    text: Any
    PREDICT = {"mlm_logits": lambda m, b: m(b)["mlm_logits"], "pooled": lambda m, b: m(b)["pooled"]}

    @nn.compact
    def __call__(self, batch: dict, *, train: bool = False) -> dict:
        tower = build_tower(self.text, name="text_tower")
        if "text_type_ids" in batch:
            return tower(batch["text"], batch.get("text_mask"), batch["text_type_ids"], train=train)
        return tower(batch["text"], batch.get("text_mask"), train=train)
