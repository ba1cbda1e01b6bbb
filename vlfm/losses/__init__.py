"""Pluggable losses, chosen by name in ``config.losses``."""

from vlfm.losses import classification, contrastive, distillation  # noqa: F401  (registers the losses)
from vlfm.losses import itm, vqa, wpa  # noqa: F401  (registers the fusion-model losses)
from vlfm.losses import captioning  # noqa: F401  (registers the caption loss)
from vlfm.losses import masked_image  # noqa: F401  (registers the MAE and feature-regression losses)
from vlfm.losses import similarity  # noqa: F401  (registers the retrieval-as-prediction loss)
from vlfm.losses.registry import LOSSES, combined_loss

__all__ = ["LOSSES", "combined_loss"]
