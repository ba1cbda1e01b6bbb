"""Transformer layers and the layer stack: ``TransformerBlock``, ``Segment``, ``Stack`` and ``Encoder``.

A stack is a sequence of segments, each ``depth`` layers of one layer module (a ``TransformerBlock``
adapter, a co-attention layer ...), scanned (one compiled layer, parameters with a leading ``layers``
axis) or unrolled. Every layer module has the signature ``layer(carry, drop_path_rate, xs, broadcast)
-> (carry, extras)``: ``carry`` is any pytree (one token sequence, or the text and image streams),
``xs`` a pytree of per-layer inputs with a leading depth axis (or None), ``broadcast`` a pytree
every layer sees (masks, a cross-attention context, modality ids), and ``extras`` a dict of
attention probabilities (when the layer was asked for them).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlfm.models.attention import Attention
from vlfm.models.feedforward import Mlp, ModalityExperts
from vlfm.models.masks import AttentionMask
from vlfm.models.primitives import Array, Dtype, drop_path, layer_norm, logical

REMAT_POLICIES: dict[str, Any] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_proj": jax.checkpoint_policies.save_only_these_names("qkv_proj", "mlp_in"),
}
EMBED_AXES = ("activation_batch", "activation_seq", "activation_embed")


def resolve_remat(remat: str, scan: bool) -> str:
    """``auto``: ``dots_no_batch`` for a scanned stack on CPU, else ``none``. A scanned stack keeps each
    residual of its backward pass in a ``[depth, ...]`` buffer that the step zero-fills and slices layer
    by layer; on CPU writing and reading those buffers costs more than recomputing the layer norms,
    activations and attention scores from the saved projections (benchmarks/cpu_step.py). Accelerators
    keep ``none`` until measured."""
    if remat == "auto":
        return "dots_no_batch" if scan and jax.default_backend() == "cpu" else "none"
    if remat != "none" and remat not in REMAT_POLICIES:
        raise KeyError(f"unknown remat policy {remat!r}; valid: none, auto, {', '.join(REMAT_POLICIES)}")
    return remat


class TransformerBlock(nn.Module):
    """One transformer layer, pre-LN (ViT, CLIP) or post-LN (BERT).

    pre-LN:  x += drop_path(ls1 * attn(ln1(x)));  x += drop_path(ls2 * ffn(ln2(x)))
    post-LN: x = ln1(x + drop_path(attn(x)));       x = ln2(x + drop_path(ffn(x)))

    ``cross_attention`` adds a sublayer between the two that attends to ``context`` (another sequence):
    pre-LN ``x += cross_attn(ln_cross(x), context)``, post-LN ``x = ln_cross(x + cross_attn(x, context))``
    (the post-LN form is BERT's cross layer, used by METER and BridgeTower). Self-attention masking is
    ``kv_lengths`` (right padding), a boolean ``key_mask [B, T]`` or an ``AttentionMask`` (``mask``;
    the block's ``causal`` is added to it); padding of ``context`` is ``context_mask [B, S]``.
    ``experts`` replaces the MLP by ``ModalityExperts`` (parameters ``experts/{name}``) routed by
    ``modality_ids``. ``decode`` gives the self-attention a KV cache and makes the cross-attention project
``context`` once, at the call that initialises the cache (``Attention``).
    ``return_attention`` also returns the self-attention probabilities ``[B, H, T, T]`` or, when
    ``attention_outputs`` asks for more than ``("probs",)``, a dict of those parts of the
    self-attention (``vlfm.models.attention.ATTENTION_PARTS``: probs, logits, queries, keys).
    """

    num_heads: int
    mlp_dim: int
    head_dim: int | None = None
    norm: str = "pre"
    ln_eps: float = 1e-6
    act: str = "gelu"
    qkv_bias: bool = True
    layer_scale: float | None = None
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    causal: bool = False
    cross_attention: bool = False
    experts: tuple[str, ...] = ()
    expert_of: tuple[int, ...] | None = None
    decode: bool = False
    return_attention: bool = False
    attention_outputs: tuple[str, ...] = ("probs",)
    implementation: str = "xla"
    init_std: float | None = None
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, drop_path_rate: Array | float = 0.0, kv_lengths: Array | None = None,
                 key_mask: Array | None = None, context: Array | None = None, context_mask: Array | None = None,
                 *, mask: AttentionMask | None = None,
                 modality_ids: Array | None = None) -> Array | tuple[Array, Array]:
        if self.norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {self.norm!r}")
        if self.cross_attention != (context is not None):
            raise ValueError("a block with cross_attention needs a context, and only such a block takes one")
        det = self.deterministic
        x = nn.with_logical_constraint(x, EMBED_AXES)
        ln = functools.partial(layer_norm, self.ln_eps, self.dtype, self.param_dtype)
        attention = functools.partial(Attention, self.num_heads, self.head_dim, qkv_bias=self.qkv_bias,
                                      dropout_rate=self.attn_dropout_rate, implementation=self.implementation,
                                      init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
        attn = attention(decode=self.decode, name="attn")
        self_mask = AttentionMask() if mask is None else mask
        self_mask = self_mask.with_padding(lengths=kv_lengths, key_mask=key_mask)
        if self.causal:
            self_mask = self_mask.replace(causal=True)
        if self.experts:
            ffn = ModalityExperts(tuple(self.experts), self.mlp_dim, self.act, self.dropout_rate, self.init_std,
                                  self.expert_of, self.dtype, self.param_dtype, name="experts")
            mlp = lambda h: ffn(h, modality_ids, deterministic=det)  # noqa: E731
        else:
            if modality_ids is not None:
                raise ValueError("modality_ids were given to a block without modality experts")
            dense = Mlp(self.mlp_dim, self.act, self.dropout_rate, self.init_std, self.dtype, self.param_dtype,
                        name="mlp")
            mlp = lambda h: dense(h, deterministic=det)  # noqa: E731
        dropout = nn.Dropout(self.dropout_rate)
        parts = None

        def self_attn(h):
            nonlocal parts
            if not self.return_attention:
                return attn(h, mask=self_mask, deterministic=det)
            out, parts = attn(h, mask=self_mask, deterministic=det, return_parts=tuple(self.attention_outputs))
            return out

        def scaled(h, name):
            if self.layer_scale is None:
                return h
            gamma = self.param(name, logical(nn.initializers.constant(self.layer_scale), ("embed",)),
                               (h.shape[-1],), self.param_dtype)
            return h * gamma.astype(h.dtype)

        def cross(q):
            cmask = None if context_mask is None else AttentionMask(key_mask=context_mask)
            return attention(decode=self.decode, name="cross_attn")(q, context, mask=cmask, deterministic=det)

        def branch(h):  # dropout and stochastic depth of a residual branch
            return drop_path(self, dropout(h, deterministic=det), drop_path_rate, det)

        if self.norm == "pre":
            x = x + branch(scaled(self_attn(ln(name="ln1")(x)), "ls1"))
            if self.cross_attention:
                x = x + dropout(cross(ln(name="ln_cross")(x)), deterministic=det)
            x = x + branch(scaled(mlp(ln(name="ln2")(x)), "ls2"))
        else:
            x = ln(name="ln1")(x + branch(self_attn(x)))
            if self.cross_attention:
                x = ln(name="ln_cross")(x + dropout(cross(x), deterministic=det))
            x = ln(name="ln2")(x + branch(mlp(x)))
        x = nn.with_logical_constraint(x.astype(self.dtype), EMBED_AXES)
        if not self.return_attention:
            return x
        return (x, parts["probs"]) if tuple(self.attention_outputs) == ("probs",) else (x, parts)


BROADCAST_KEYS = ("kv_lengths", "key_mask", "mask", "context", "context_mask", "modality_ids")


class EncoderLayer(TransformerBlock):
    """``TransformerBlock`` as a stack layer: ``broadcast`` is a dict with any of ``BROADCAST_KEYS``."""

    def __call__(self, x, drop_path_rate, xs, broadcast):  # type: ignore[override]
        if xs is not None:
            raise ValueError("a TransformerBlock layer takes no per-layer inputs (xs)")
        broadcast = dict(broadcast or {})
        unknown = set(broadcast) - set(BROADCAST_KEYS)
        if unknown:
            raise ValueError(f"unknown broadcast inputs {sorted(unknown)}; valid: {', '.join(BROADCAST_KEYS)}")
        mask, modality_ids = broadcast.pop("mask", None), broadcast.pop("modality_ids", None)
        out = super().__call__(x, drop_path_rate, mask=mask, modality_ids=modality_ids, **broadcast)
        if self.return_attention:
            return out[0], (out[1] if isinstance(out[1], dict) else {"probs": out[1]})
        return out, {}


@dataclasses.dataclass(frozen=True)
class Segment:
    """``depth`` layers of ``layer`` (a stack-layer module class) built with the fields ``block``.

    Parameters sit under ``{name}s`` when scanned and ``{name}_{i}`` (i counts within the segment)
    when unrolled.
    """

    depth: int
    block: Any  # dict of the layer module's fields
    layer: Any = EncoderLayer
    name: str = "layer"


def _layer_rates(drop_path_rate: float, depth: int) -> np.ndarray:
    """Drop-path rates rising linearly from 0 to ``drop_path_rate`` over the whole depth."""
    if depth > 1:
        return np.linspace(0.0, drop_path_rate, depth).astype(np.float32)
    return np.zeros((depth,), np.float32)


def run_segments(module: nn.Module, segments: Sequence[Segment], carry: Any, xs: Any = None, broadcast: Any = None,
                 *, drop_path_rate: float = 0.0, scan: bool = True, remat: str = "none", train: bool = False,
                 collect_hidden: bool = False, attention_layers: Sequence[int] = (),
                 collection: str = "attention", first_layer: int = 0,
                 total_depth: int | None = None) -> tuple[Any, Any]:
    """Runs the segments inside ``module``'s compact ``__call__`` (their parameters are its children).

    A scanned carry must keep its dtype: give it in the layers' compute dtype.

    Returns the final carry and, with ``collect_hidden``, every layer's carry stacked on a leading
    depth axis (else None). The extras of the ``attention_layers`` (global indices) are sown into
    ``collection`` under their names, stacked over those layers in order.

    A model that runs one stack in parts (the bottom layers once, the top ones on several inputs) passes
    ``first_layer`` and ``total_depth``: these segments are then layers ``first_layer, ...`` of a
    ``total_depth``-layer stack, whose drop-path rates and ``attention_layers`` indices they use
    (``xs`` still has one row per layer of these segments). Default: the segments are the whole stack.
    """
    remat = resolve_remat(remat, scan)
    own = sum(s.depth for s in segments)
    total = own if total_depth is None else total_depth
    if first_layer < 0 or first_layer + own > total:
        raise ValueError(f"segments of {own} layers from layer {first_layer} do not fit a stack of {total} layers")
    chosen = sorted(set(int(i) for i in attention_layers))
    if any(not 0 <= i < total for i in chosen):
        raise ValueError(f"attention_layers {tuple(attention_layers)} outside the stack's {total} layers")
    rates = _layer_rates(drop_path_rate, total)
    hidden, extras = [], []
    start = first_layer
    for seg in segments:
        local = [i - start for i in chosen if start <= i < start + seg.depth]
        fields = dict(seg.block, deterministic=not train)
        row = start - first_layer
        seg_xs = None if xs is None else jax.tree.map(lambda a: a[row:row + seg.depth], xs)
        if scan:
            cls = _scanned(seg.layer)
            if remat != "none":
                cls = nn.remat(cls, policy=REMAT_POLICIES[remat], prevent_cse=False)
            stack = nn.scan(cls, variable_axes={"params": 0, "cache": 0},
                            split_rngs={"params": True, "dropout": True}, in_axes=(0, 0, nn.broadcast),
                            length=seg.depth, metadata_params={nn.PARTITION_NAME: "layers"})
            per_layer = (jnp.asarray(rates[start:start + seg.depth]), jnp.arange(seg.depth, dtype=jnp.int32))
            scan_carry = carry
            if local:  # the chosen layers' extras ride in the carry: one buffer row per chosen layer, no more
                fields["return_attention"] = True
                first_xs = None if seg_xs is None else jax.tree.map(lambda a: a[0], seg_xs)
                shapes = _extras_shapes(seg.layer, fields, carry, first_xs, broadcast)
                scan_carry = (carry, jax.tree.map(lambda a: jnp.zeros((len(local),) + a.shape, a.dtype), shapes))
            layer = stack(name=f"{seg.name}s", collect_hidden=collect_hidden, select=tuple(local), **fields)
            scan_carry, seg_hidden = layer(scan_carry, per_layer, seg_xs, broadcast)
            if local:
                carry, chosen_extras = scan_carry
                extras.append(chosen_extras)
            else:
                carry = scan_carry
            if collect_hidden:
                hidden.append(seg_hidden)
        else:
            cls = seg.layer
            if remat != "none":
                cls = nn.remat(cls, policy=REMAT_POLICIES[remat])
            for i in range(seg.depth):
                layer_xs = None if seg_xs is None else jax.tree.map(lambda a: a[i], seg_xs)
                layer = cls(name=f"{seg.name}_{i}", **(dict(fields, return_attention=True) if i in local else fields))
                carry, out = layer(carry, float(rates[start + i]), layer_xs, broadcast)
                if collect_hidden:
                    hidden.append(jax.tree.map(lambda a: a[None], carry))
                if i in local:
                    extras.append(jax.tree.map(lambda a: a[None], out))
        start += seg.depth
    for name in (extras[0] if extras else {}):
        module.sow(collection, name, jnp.concatenate([e[name] for e in extras], axis=0))
    stacked = None
    if collect_hidden:
        stacked = jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *hidden)
    return carry, stacked


def _extras_shapes(layer_cls: type, fields: dict, carry: Any, xs: Any, broadcast: Any) -> Any:
    """Shapes and dtypes of the extras one layer returns (traced abstractly, nothing is computed), so
    that a scan can carry a buffer for them."""
    def spec(tree):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)

    def run(c, x, b):
        key = jax.random.key(0)
        probe = layer_cls(parent=None, **fields)
        (_, out), _ = probe.init_with_output({"params": key, "dropout": key}, c, 0.0, x, b)
        return out

    return jax.eval_shape(run, spec(carry), spec(xs), spec(broadcast))


@functools.cache
def _scanned(cls: type) -> type:
    """``cls`` as the body of a scanned segment. Per-layer inputs are ``(drop_path_rate, layer index)``;
    the scan output is the layer's carry when ``collect_hidden`` (hidden states), else None. With
    ``select`` (indices within the segment), the carry is ``(carry, buffers)`` and each selected layer
    writes its extras into its row of the buffers, so the chosen layers' attention maps come out of
    the scan without a copy for every layer. (Every layer of such a segment computes its extras, as
    they are one compiled body; only the selected ones are kept.)"""

    class Scanned(cls):
        collect_hidden: bool = False
        select: tuple[int, ...] = ()

        def __call__(self, carry, per_layer, xs, broadcast):  # type: ignore[override]
            rate, index = per_layer
            buffers = None
            if self.select:
                carry, buffers = carry
            carry, extras = super().__call__(carry, rate, xs, broadcast)
            if self.select:
                hit = jnp.asarray(self.select, jnp.int32) == index

                def keep(b, e):
                    return jnp.where(hit.reshape((-1,) + (1,) * e.ndim), e[None].astype(b.dtype), b)

                buffers = jax.tree.map(keep, buffers, extras)
            hidden = carry if self.collect_hidden else None
            return ((carry, buffers) if self.select else carry), hidden

    Scanned.__name__ = Scanned.__qualname__ = f"Scanned{cls.__name__}"
    return Scanned


class Stack(nn.Module):
    """Layer segments run one after another over a pytree ``carry`` (see ``run_segments``).

    ``__call__(carry, xs=None, broadcast=None, *, train)`` returns the final carry, or
    ``(carry, hidden)`` with ``collect_hidden``. The extras (attention probabilities) of
    ``attention_layers`` are sown into the ``attention`` collection.
    """

    segments: tuple[Segment, ...]
    drop_path_rate: float = 0.0
    scan: bool = True
    remat: str = "none"
    collect_hidden: bool = False
    attention_layers: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, carry: Any, xs: Any = None, broadcast: Any = None, *, train: bool = False) -> Any:
        carry, hidden = run_segments(self, self.segments, carry, xs, broadcast, drop_path_rate=self.drop_path_rate,
                                     scan=self.scan, remat=self.remat, train=train,
                                     collect_hidden=self.collect_hidden, attention_layers=self.attention_layers)
        return (carry, hidden) if self.collect_hidden else carry


class Encoder(nn.Module):
    """A stack of ``depth`` identical ``TransformerBlock``s, scanned (one compiled layer) or unrolled.

    With ``scan`` the parameters carry a leading ``layers`` axis (``layers/...``), else they are
    ``layer_{i}/...``. ``remat`` names a checkpoint policy (``none``, ``auto``: ``resolve_remat``,
    ``full``, ``dots``, ``dots_no_batch``, ``save_proj``). Drop-path rates rise linearly from 0 to ``drop_path_rate`` over
    depth. ``collect_hidden`` also returns every layer's output. Self-attention masking is
    ``kv_lengths`` (right padding), a boolean ``key_mask [B, T]`` and/or an ``AttentionMask``
    (``mask``); ``context``/``context_mask`` feed cross-attention blocks, ``modality_ids`` expert
    blocks. The self-attention probabilities of ``attention_layers`` are sown into the ``attention``
    collection as ``probs [len(attention_layers), B, H, T, T]``.
    """

    depth: int
    block: dict  # TransformerBlock fields (num_heads, mlp_dim, norm, ...)
    drop_path_rate: float = 0.0
    scan: bool = True
    remat: str = "none"
    collect_hidden: bool = False
    attention_layers: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, x: Array, *, kv_lengths: Array | None = None, key_mask: Array | None = None,
                 mask: AttentionMask | None = None, context: Array | None = None, context_mask: Array | None = None,
                 modality_ids: Array | None = None, train: bool = False):
        broadcast = dict(kv_lengths=kv_lengths, key_mask=key_mask, mask=mask, context=context,
                         context_mask=context_mask, modality_ids=modality_ids)
        x = x.astype(self.block.get("dtype", jnp.float32))  # the scan carry keeps one dtype throughout
        x, hidden = run_segments(self, (Segment(self.depth, dict(self.block)),), x, None, broadcast,
                                 drop_path_rate=self.drop_path_rate, scan=self.scan, remat=self.remat, train=train,
                                 collect_hidden=self.collect_hidden, attention_layers=self.attention_layers)
        return (x, hidden) if self.collect_hidden else x
