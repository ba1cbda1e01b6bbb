"""The transformer parts every model imports, in one namespace.

They live in ``primitives`` (projections, norms, embeddings, activations, drop-path), ``masks``
(``AttentionMask``), ``attention`` (attention kernels, ``Attention`` with a KV cache, ``MapHead``),
``feedforward`` (``Mlp``, ``ModalityExperts``) and ``stack`` (``TransformerBlock``, ``Segment``,
``Stack``, ``Encoder``).
"""

from vlfm.models.attention import (ATTENTION_IMPLEMENTATIONS, CACHE_AXES, QKV_AXES, Attention, MapHead,
                                   _einsum_attention, _resolve_implementation, dot_product_attention)
from vlfm.models.feedforward import Mlp, ModalityExperts
from vlfm.models.masks import AttentionMask, as_mask
from vlfm.models.primitives import (ACTIVATIONS, Array, Dtype, PatchEmbed, PosEmbed, Proj, TokenEmbed, activation,
                                    drop_path, kernel_initializer, layer_norm, logical, sincos_2d)
from vlfm.models.stack import (BROADCAST_KEYS, EMBED_AXES, REMAT_POLICIES, Encoder, EncoderLayer, Segment, Stack,
                               TransformerBlock, run_segments)

__all__ = [
    "ACTIVATIONS", "ATTENTION_IMPLEMENTATIONS", "Array", "Attention", "AttentionMask", "BROADCAST_KEYS", "CACHE_AXES",
    "Dtype", "EMBED_AXES", "Encoder", "EncoderLayer", "MapHead", "Mlp", "ModalityExperts", "PatchEmbed", "PosEmbed",
    "Proj", "QKV_AXES", "REMAT_POLICIES", "Segment", "Stack", "TokenEmbed", "TransformerBlock", "activation",
    "as_mask", "dot_product_attention", "drop_path", "kernel_initializer", "layer_norm", "logical", "run_segments",
    "sincos_2d",
]
