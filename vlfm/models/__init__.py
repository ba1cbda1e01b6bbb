"""Models: shared layers, modality towers and the top-level models built from them."""

from vlfm.models import swin, text, video, vit  # noqa: F401  (registers the towers)
from vlfm.models import davinci, dual_encoder, ufo, unimodal  # noqa: F401  (registers the models)
from vlfm.models import meter, vilt  # noqa: F401  (registers the fusion models)
from vlfm.models import coca  # noqa: F401  (registers the generative models)
from vlfm.models import vlmo  # noqa: F401  (registers VLMo)
from vlfm.models import polyvit  # noqa: F401  (registers PolyViT)
from vlfm.models import flava, vlc  # noqa: F401  (registers FLAVA and VLC)
from vlfm.models import dide  # noqa: F401  (registers the distilled dual encoder)
from vlfm.models import r2d2  # noqa: F401  (registers R2D2)
from vlfm.models import uniperceiver  # noqa: F401  (registers Uni-Perceiver)
from vlfm.models import visual_parsing  # noqa: F401  (registers Visual Parsing)
from vlfm.models import omnivl  # noqa: F401  (registers OmniVL)
from vlfm.models.registry import MODELS, build_model
from vlfm.models.towers import TOWERS, build_tower

__all__ = ["MODELS", "TOWERS", "build_model", "build_tower"]
