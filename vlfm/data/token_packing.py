"""What every tokenizer offers the pipelines, and the fixed-length packing they share."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    mask_id: int
    eos_id: int | None
    bos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_batch(self, texts: Sequence[str], max_len: int) -> dict[str, np.ndarray]: ...


def pack(rows: list[list[int]], first: int, last: int, pad: int, max_len: int) -> dict[str, np.ndarray]:
    """[first] + row + [last], truncated inside so the closing special survives, then padded to max_len."""
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 to hold the opening and closing specials, got {max_len}")
    ids = np.full((len(rows), max_len), pad, dtype=np.int32)
    mask = np.zeros((len(rows), max_len), dtype=np.int32)
    for i, row in enumerate(rows):
        seq = [first] + list(row[: max_len - 2]) + [last]
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return {"ids": ids, "mask": mask}
