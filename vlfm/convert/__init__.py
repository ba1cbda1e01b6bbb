"""Checkpoint conversion. Importing the package registers every HF loader with ``vlfm.convert.hf.load_hf``
(``hf_fusion`` adds ViLT and BridgeTower)."""

from vlfm.convert import hf, hf_fusion  # noqa: F401
