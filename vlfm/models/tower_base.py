"""What every transformer tower shares: its fields and how it runs its layer stack."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from vlfm.models import layers


class TransformerTower(nn.Module):
    """Base of the ViT, text-transformer and BERT towers (subclasses re-declare defaults they change)."""

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    ln_eps: float = 1e-6
    act: str = "gelu"
    qkv_bias: bool = True
    layer_scale: float | None = None
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    init_std: float | None = None
    scan: bool = True
    remat: str = "auto"  # vlfm.models.stack.resolve_remat: dots_no_batch when scanned on CPU, else none
    attention: str = "xla"
    collect_hidden: bool = False
    attention_layers: tuple[int, ...] = ()  # layers whose attention probabilities are sown (distillation)
    attention_outputs: tuple[str, ...] = ("probs",)  # what those layers sow: probs, logits, queries, keys
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def dtypes(self) -> tuple[jnp.dtype, jnp.dtype]:
        """(compute dtype, parameter dtype)."""
        return jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)


def run_encoder(tower: TransformerTower, x: jax.Array, *, norm: str, causal: bool = False,
                kv_lengths: jax.Array | None = None, key_mask: jax.Array | None = None,
                train: bool = False) -> tuple[jax.Array, dict]:
    """Runs the tower's layer stack (named ``encoder``) from inside its compact ``__call__``.

    Padding is ``kv_lengths`` (right padding) or a boolean ``key_mask [B, T]``. Returns the last
    layer's output and ``{"hidden": [depth, B, T, D]}`` when ``collect_hidden``. The self-attention
    probabilities of ``attention_layers`` go to the ``attention`` collection (``encoder/probs``), or
    the parts ``attention_outputs`` names (``encoder/{probs,logits,queries,keys}``).
    """
    out = encoder_module(tower, norm=norm, causal=causal)(x, kv_lengths=kv_lengths, key_mask=key_mask, train=train)
    if tower.collect_hidden:
        out, hidden = out
        return out, {"hidden": hidden}
    return out, {}


def encoder_module(tower: TransformerTower, *, norm: str, causal: bool = False, decode: bool = False,
                   name: str = "encoder") -> nn.Module:
    """The tower's layer stack as a module, for models that call one stack on several inputs (UFO).
    ``decode`` gives its self-attention a KV cache (a causal text tower that generates: CoCa)."""
    dtype, pdtype = tower.dtypes
    block = dict(num_heads=tower.num_heads, mlp_dim=tower.mlp_dim, norm=norm, ln_eps=tower.ln_eps, act=tower.act,
                 qkv_bias=tower.qkv_bias, layer_scale=tower.layer_scale, dropout_rate=tower.dropout_rate,
                 attn_dropout_rate=tower.attn_dropout_rate, causal=causal, decode=decode, implementation=tower.attention,
                 attention_outputs=tuple(tower.attention_outputs),
                 init_std=tower.init_std, dtype=dtype, param_dtype=pdtype)
    return layers.Encoder(tower.depth, block, tower.drop_path_rate, tower.scan, tower.remat, tower.collect_hidden,
                          tuple(tower.attention_layers), name=name)
