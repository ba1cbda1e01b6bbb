"""vlfm: vision-language foundation models in JAX/Flax.

Every model family is a config of shared parts (modality tokenizers, transformer blocks, fusion
modules, heads, pluggable losses) trained by one trainer, ``python -m vlfm.train``.
"""

__version__ = "0.1.0"
