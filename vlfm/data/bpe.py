"""Byte-level BPE: the tokenizer of GPT-2 and RoBERTa (METER and BridgeTower's text towers).

Reads the released ``vocab.json`` (token -> id) and ``merges.txt`` (one merge per line, by priority).
Text is split by GPT-2's pattern (contractions, letters, digits, other symbols, each with one leading
space, and runs of spaces); each piece's UTF-8 bytes are written as printable characters (the space
becomes ``Ġ``) and merged pair by pair, lowest rank first. ``encode_batch`` wraps every text as
RoBERTa does: ``<s> ... </s>``, padded with ``<pad>``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
import regex

from vlfm.data.token_packing import pack

# GPT-2's pre-tokenisation pattern (``\p{L}``: letters, ``\p{N}``: digits in any script).
PIECES = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


@functools.cache
def byte_alphabet() -> dict[int, str]:
    """Each byte value -> a printable character: printable Latin-1 bytes stand for themselves, the rest
    (controls, space, ...) are moved to code points from 256 on, in byte order (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class ByteLevelBPETokenizer:
    """GPT-2 / RoBERTa byte-level BPE with RoBERTa's specials (``<s>``, ``</s>``, ``<pad>``, ``<unk>``,
    ``<mask>``). Same ids as HF ``RobertaTokenizer`` on text without special tokens written in it."""

    def __init__(self, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]], bos: str = "<s>",
                 eos: str = "</s>", pad: str = "<pad>", unk: str = "<unk>", mask: str = "<mask>"):
        self.vocab = dict(vocab)
        self.tokens = {i: t for t, i in self.vocab.items()}
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}
        missing = [t for t in (bos, eos, pad, unk, mask) if t not in self.vocab]
        if missing:
            raise ValueError(f"BPE vocabulary lacks the special tokens {', '.join(missing)}")
        self.bos_id, self.eos_id, self.pad_id = self.vocab[bos], self.vocab[eos], self.vocab[pad]
        self.unk_id, self.mask_id = self.vocab[unk], self.vocab[mask]
        self.cls_id, self.sep_id = self.bos_id, self.eos_id
        self.vocab_size = max(self.vocab.values()) + 1
        self.special_ids = frozenset((self.bos_id, self.eos_id, self.pad_id, self.unk_id, self.mask_id))
        self._bytes = byte_alphabet()
        self._unbytes = {c: b for b, c in self._bytes.items()}
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_files(cls, vocab: str | os.PathLike, merges: str | os.PathLike) -> ByteLevelBPETokenizer:
        """``vocab.json`` and ``merges.txt`` as released with GPT-2 / RoBERTa (a ``#version`` line is skipped)."""
        with open(vocab, encoding="utf-8") as f:
            table = json.load(f)
        pairs = []
        with open(merges, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line or line.startswith("#version"):
                    continue
                parts = line.split(" ")
                if len(parts) != 2:
                    raise ValueError(f"{merges}:{number}: a merge is two tokens separated by one space, got {line!r}")
                pairs.append((parts[0], parts[1]))
        return cls(table, pairs)

    def _merge(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, len(self.ranks)))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the best pair, left to right
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _piece(self, piece: str) -> list[int]:
        if piece not in self._cache:
            word = "".join(self._bytes[b] for b in piece.encode("utf-8"))
            self._cache[piece] = [self.vocab.get(t, self.unk_id) for t in self._merge(word)]
        return self._cache[piece]

    def tokenize(self, text: str) -> list[str]:
        return [self.tokens[i] for i in self.encode(text)]

    def encode(self, text: str) -> list[int]:
        return [i for piece in PIECES.findall(text) for i in self._piece(piece)]

    def decode(self, ids: Sequence[int]) -> str:
        text = "".join(self.tokens.get(int(i), "") for i in ids if int(i) not in self.special_ids)
        return bytes(self._unbytes[c] for c in text if c in self._unbytes).decode("utf-8", errors="replace")

    def word_starts(self, ids: np.ndarray) -> np.ndarray:
        """True where a token begins a word: it starts with the space marker, or follows a special."""
        flat = [int(i) for i in np.asarray(ids).ravel()]
        starts = [self.tokens.get(i, "").startswith("Ġ") or k == 0 or flat[k - 1] in self.special_ids
                  for k, i in enumerate(flat)]
        return np.array(starts, bool).reshape(np.shape(ids))

    def encode_batch(self, texts: Sequence[str], max_len: int) -> dict[str, np.ndarray]:
        return pack([self.encode(t) for t in texts], self.bos_id, self.eos_id, self.pad_id, max_len)
