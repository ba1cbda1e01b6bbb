"""Feed-forward sublayers: the dense ``Mlp`` and VLMo's mixture of modality experts (``ModalityExperts``)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from vlfm.models.primitives import Array, Dtype, Proj, activation, logical


class Mlp(nn.Module):
    """Two-layer feed-forward block ``embed -> mlp -> embed``.

    ``sub_ln_eps`` (BEiT-3 / Magneto sub-LayerNorm) adds a LayerNorm (``sub_ln``, over the ``mlp``
    features) between the activation and ``fc2``: it keeps the hidden activations' scale fixed in deep
    stacks."""

    mlp_dim: int
    act: str = "gelu"
    dropout_rate: float = 0.0
    init_std: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    sub_ln_eps: float | None = None

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        width = x.shape[-1]
        h = Proj((self.mlp_dim,), ("embed", "mlp"), init_std=self.init_std, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="fc1")(x)
        h = checkpoint_name(h, "mlp_in")
        h = nn.with_logical_constraint(h, ("activation_batch", "activation_seq", "activation_mlp"))
        h = activation(self.act)(h)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        if self.sub_ln_eps is not None:
            h = nn.LayerNorm(epsilon=self.sub_ln_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="sub_ln",
                             scale_init=logical(nn.initializers.ones, ("mlp",)),
                             bias_init=logical(nn.initializers.zeros, ("mlp",)))(h)
        return Proj((width,), ("mlp", "embed"), init_std=self.init_std, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="fc2")(h)


class ModalityExperts(nn.Module):
    """Mixture of modality experts (VLMo): one ``Mlp`` per expert, chosen per token.

    ``modality_ids [B, T]`` (int) pick the expert of each token; ``expert_of`` maps a modality id to
    an expert index when they differ (VLMo's top layers send both the image and the text tokens of a
    pair to the ``vl`` expert: ids 0 image, 1 text, 2 pair-image, 3 pair-text and
    ``experts=("image", "text", "vl"), expert_of=(0, 1, 2, 2)``). Parameters are
    ``{name}/fc1``, ``{name}/fc2`` per expert. Every expert runs on every token and the chosen output
    is kept (simple and exact; a token whose id maps to no expert gets a zero output).
    """

    experts: tuple[str, ...]
    mlp_dim: int
    act: str = "gelu"
    dropout_rate: float = 0.0
    init_std: float | None = None
    expert_of: tuple[int, ...] | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, modality_ids: Array | None, deterministic: bool = True) -> Array:
        if modality_ids is None:
            raise ValueError(f"a block with modality experts {self.experts} needs modality_ids [batch, seq]")
        if self.expert_of is not None and not all(0 <= e < len(self.experts) for e in self.expert_of):
            raise ValueError(f"expert_of {self.expert_of} names experts outside 0..{len(self.experts) - 1}")
        index = modality_ids if self.expert_of is None else jnp.asarray(self.expert_of, jnp.int32)[modality_ids]
        out = jnp.zeros(x.shape, self.dtype)
        for k, name in enumerate(self.experts):
            y = Mlp(self.mlp_dim, self.act, self.dropout_rate, self.init_std, self.dtype, self.param_dtype,
                    name=name)(x, deterministic=deterministic)
            out = jnp.where((index == k)[..., None], y, out)
        return out
