"""Checkpoint conversion. Importing the package registers every HF loader with ``vlfm.convert.hf.load_hf``
(``hf_fusion`` adds ViLT and BridgeTower, ``hf_flava`` FLAVA, ``hf_video`` ViViT and AST, ``hf_swin`` Swin).
``vlfm.convert.open_clip`` imports and exports open_clip CoCa state dicts."""

from vlfm.convert import hf, hf_flava, hf_fusion, hf_swin, hf_video  # noqa: F401
