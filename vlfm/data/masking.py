"""Masking for masked modelling: BERT's 80/10/10 token masking (optionally whole words) and BEiT's
block-wise image-patch masks."""

from __future__ import annotations

import math

import numpy as np


def mlm_mask(ids: np.ndarray, rng: np.random.Generator, *, mask_id: int, vocab_size: int,
             special_ids: np.ndarray, prob: float = 0.15, ignore_index: int = -1,
             word_starts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Masks ``prob`` of the non-special tokens of one sequence.

    Of the chosen tokens 80% become ``mask_id``, 10% a random token, 10% stay. Returns the corrupted
    ids and targets (the original id at chosen positions, ``ignore_index`` elsewhere). At least one
    token is chosen whenever the sequence has a maskable token, so every example carries signal.

    With ``word_starts`` (True where a token begins a word, e.g. not a ``##`` WordPiece) whole words
    are chosen with probability ``prob`` and all their tokens are masked (whole-word masking); the
    80/10/10 choice is still made per token, as in BERT's release.
    """
    ids = np.asarray(ids)
    maskable = ~np.isin(ids, special_ids)
    if word_starts is None:
        chosen = (rng.random(ids.shape) < prob) & maskable
    else:
        starts = np.asarray(word_starts, bool) | ~maskable  # a special token ends the previous word
        word = np.cumsum(starts) - 1                          # word index of each token
        pick = rng.random(word[-1] + 1 if len(word) else 0) < prob
        chosen = pick[word] & maskable if len(word) else np.zeros(ids.shape, bool)
        if maskable.any() and not chosen.any():
            chosen = (word == word[rng.choice(np.flatnonzero(maskable))]) & maskable
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


def block_mask(rng: np.random.Generator, grid: tuple[int, int] = (14, 14), num_masked: int = 75,
               min_block: int = 16, max_block: int | None = None, min_aspect: float = 0.3,
               max_aspect: float | None = None) -> np.ndarray:
    """BEiT's block-wise patch mask: a bool ``grid`` with about ``num_masked`` True cells.

    Rectangles of ``min_block``..``max_block`` patches with a log-uniform aspect ratio are placed at
    random until the budget is reached; a rectangle only counts the cells it newly masks, and one that
    would overshoot the budget is rejected. Stops when 10 tries in a row add nothing.
    """
    height, width = grid
    if not 0 <= num_masked <= height * width:
        raise ValueError(f"num_masked {num_masked} must be in [0, {height * width}]")
    max_block = num_masked if max_block is None else max_block
    max_aspect = 1 / min_aspect if max_aspect is None else max_aspect
    log_aspect = (math.log(min_aspect), math.log(max_aspect))
    mask = np.zeros(grid, bool)
    count = 0
    while count < num_masked:
        budget = min(num_masked - count, max_block)
        added = 0
        for _ in range(10):
            target = rng.uniform(min_block, budget) if budget >= min_block else budget
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if not (0 < h < height and 0 < w < width):
                continue
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            new = int((~mask[top:top + h, left:left + w]).sum())
            if 0 < new <= budget:
                mask[top:top + h, left:left + w] = True
                added = new
                break
        if added == 0:
            break
        count += added
    return mask
