"""Attention masks as one composable object: padding, causal, prefix-LM and segment (modality) blocks.

``AttentionMask`` is a pytree, so it travels through ``jit``, ``nn.scan`` (as a broadcast input) and
``remat``. Every part restricts which keys a query may see; the parts combine by AND. ``dense``
builds the boolean ``[B, 1, T, S]`` mask of the XLA path; ``fast_path`` says when the cuDNN kernel's
own arguments (key lengths and ``is_causal``) express the whole mask.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array


@flax.struct.dataclass
class AttentionMask:
    """Which keys each query may attend to.

    - ``lengths [B]``: right padding of the keys (the first ``n`` keys are real);
    - ``key_mask [B, S]``: real keys in any pattern;
    - ``causal``: query ``i`` sees keys ``j <= i + offset``;
    - ``prefix_lengths [B]``: prefix-LM, keys ``j < prefix`` are visible to every query, the rest
      causally (implies causal order after the prefix);
    - ``segment_ids [B, T]`` (queries) and ``kv_segment_ids [B, S]`` (keys, default the same ids):
      a query of segment ``a`` sees a key of segment ``b`` when ``segment_pairs[a][b]``, or, without
      ``segment_pairs``, when ``a == b`` (e.g. image tokens see only image tokens);
    - ``extra [B, 1|H, T, S]``: any boolean mask, ANDed in;
    - ``offset``: position of query 0 among the keys (decoding with a KV cache).
    """

    lengths: Array | None = None
    key_mask: Array | None = None
    prefix_lengths: Array | None = None
    segment_ids: Array | None = None
    kv_segment_ids: Array | None = None
    extra: Array | None = None
    offset: Array | int = 0
    causal: bool = flax.struct.field(pytree_node=False, default=False)
    segment_pairs: tuple[tuple[bool, ...], ...] | None = flax.struct.field(pytree_node=False, default=None)

    @property
    def fast_path(self) -> bool:
        """True when key lengths and ``is_causal`` say everything (the cuDNN kernel's arguments)."""
        return (self.key_mask is None and self.prefix_lengths is None and self.segment_ids is None
                and self.extra is None and isinstance(self.offset, int) and self.offset == 0)

    @property
    def empty(self) -> bool:
        return self.fast_path and self.lengths is None and not self.causal

    def dense(self, q_len: int, kv_len: int, batch: int | None = None) -> Array | None:
        """The boolean ``[B|1, 1|H, q_len, kv_len]`` mask (True: may attend); None when nothing is masked."""
        parts = []
        q_pos = jnp.arange(q_len)[:, None] + jnp.asarray(self.offset)
        k_pos = jnp.arange(kv_len)[None, :]
        if self.causal or self.prefix_lengths is not None:
            visible = (k_pos <= q_pos)[None, None]
            if self.prefix_lengths is not None:
                prefix = (k_pos[None] < self.prefix_lengths[:, None, None])[:, None]
                visible = jnp.logical_or(visible, prefix)
            parts.append(visible)
        if self.lengths is not None:
            parts.append((k_pos < self.lengths[:, None])[:, None, None])
        if self.key_mask is not None:
            if self.key_mask.shape[-1] != kv_len:
                raise ValueError(f"key_mask has {self.key_mask.shape[-1]} keys, attention has {kv_len}")
            parts.append(self.key_mask.astype(bool)[:, None, None, :])
        if self.segment_ids is not None:
            kv_ids = self.segment_ids if self.kv_segment_ids is None else self.kv_segment_ids
            if self.segment_pairs is None:
                allowed = self.segment_ids[:, :, None] == kv_ids[:, None, :]
            else:
                table = jnp.asarray(self.segment_pairs, bool)
                allowed = table[self.segment_ids[:, :, None], kv_ids[:, None, :]]
            parts.append(allowed[:, None])
        if self.extra is not None:
            parts.append(self.extra.astype(bool))
        if not parts:
            return None
        mask = parts[0]
        for p in parts[1:]:
            mask = jnp.logical_and(mask, p)
        if batch is not None and mask.shape[0] == 1:
            mask = jnp.broadcast_to(mask, (batch,) + mask.shape[1:])
        return mask

    def with_padding(self, lengths: Array | None = None, key_mask: Array | None = None) -> AttentionMask:
        """This mask with key padding added (an error if it already has that kind)."""
        if lengths is not None and self.lengths is not None:
            raise ValueError("the attention mask already has key lengths")
        if key_mask is not None and self.key_mask is not None:
            raise ValueError("the attention mask already has a key mask")
        return self.replace(lengths=self.lengths if lengths is None else lengths,
                            key_mask=self.key_mask if key_mask is None else key_mask)


def as_mask(mask: AttentionMask | Array | None = None, *, kv_lengths: Array | None = None,
            causal: bool = False) -> AttentionMask:
    """Normalises the accepted mask forms (object, boolean ``[B, 1|H, T, S]`` array, lengths, causal)."""
    if mask is None:
        mask = AttentionMask()
    elif not isinstance(mask, AttentionMask):
        mask = AttentionMask(extra=jnp.asarray(mask).astype(bool))
    if kv_lengths is not None:
        mask = mask.with_padding(lengths=kv_lengths)
    if causal and not mask.causal:
        mask = mask.replace(causal=True)
    return mask
