"""Token masking for masked language modelling (BERT's 80/10/10 rule)."""

from __future__ import annotations

import numpy as np


def mlm_mask(ids: np.ndarray, rng: np.random.Generator, *, mask_id: int, vocab_size: int,
             special_ids: np.ndarray, prob: float = 0.15, ignore_index: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Masks ``prob`` of the non-special tokens of one sequence.

    Of the chosen tokens 80% become ``mask_id``, 10% a random token, 10% stay. Returns the corrupted
    ids and targets (the original id at chosen positions, ``ignore_index`` elsewhere). At least one
    token is chosen whenever the sequence has a maskable token, so every example carries signal.
    """
    ids = np.asarray(ids)
    maskable = ~np.isin(ids, special_ids)
    chosen = (rng.random(ids.shape) < prob) & maskable
    if maskable.any() and not chosen.any():
        chosen[rng.choice(np.flatnonzero(maskable))] = True
    targets = np.where(chosen, ids, ignore_index).astype(np.int32)
    action = rng.random(ids.shape)
    out = ids.copy()
    out[chosen & (action < 0.8)] = mask_id
    random_tokens = rng.integers(0, vocab_size, ids.shape)
    swap = chosen & (action >= 0.8) & (action < 0.9)
    out[swap] = random_tokens[swap]
    return out.astype(np.int32), targets
