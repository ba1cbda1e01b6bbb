"""Text tokenizers behind one small protocol, so models, losses and data pipelines never care which is used.

Each tokenizer exposes vocab_size, pad_id, mask_id, eos_id, bos_id/cls_id, encode (no specials), decode and
encode_batch (specials, truncation and padding to a fixed length, as the fixed-shape jitted steps need).
"""

from __future__ import annotations

import os
import re
import unicodedata
from typing import Any, Sequence

import numpy as np

from vlfm.data import shapes
from vlfm.data.bpe import ByteLevelBPETokenizer
from vlfm.data.token_packing import Tokenizer, pack

__all__ = ["ByteLevelBPETokenizer", "SentencePieceTokenizer", "Tokenizer", "WordPieceTokenizer", "WordTokenizer",
           "build_tokenizer", "pack", "train_sentencepiece"]


class WordTokenizer:
    """Word-level tokenizer for closed vocabularies such as the built-in shapes captions.

    Ids 0..4 are fixed specials (pad, unk, bos, eos, mask) and the words follow in the given order, so the
    ids stay stable as long as the vocabulary list does.
    """

    PAD, UNK, BOS, EOS, MASK = "<pad>", "<unk>", "<bos>", "<eos>", "<mask>"
    SPECIALS = (PAD, UNK, BOS, EOS, MASK)

    def __init__(self, vocab: Sequence[str], lowercase: bool = True):
        self.lowercase = lowercase
        words = [w.lower() if lowercase else w for w in vocab]
        if len(set(words)) != len(words):
            raise ValueError("WordTokenizer vocabulary has duplicate words")
        for w in words:
            if not re.fullmatch(r"[^\W_]+", w):
                raise ValueError(f"vocabulary word {w!r} is not a single alphanumeric word")
        self.tokens: list[str] = list(self.SPECIALS) + words
        self._ids = {w: i for i, w in enumerate(words, start=len(self.SPECIALS))}
        self.vocab_size = len(self.tokens)
        self.pad_id, self.unk_id, self.bos_id, self.eos_id, self.mask_id = range(len(self.SPECIALS))
        self.cls_id = self.bos_id

    @classmethod
    def for_shapes(cls) -> WordTokenizer:
        """The tokenizer for captions of the built-in shapes dataset."""
        return cls(shapes.VOCAB)

    def split(self, text: str) -> list[str]:
        """Words of a text: runs of letters and digits, everything else separates."""
        if self.lowercase:
            text = text.lower()
        return re.findall(r"[^\W_]+", text)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(w, self.unk_id) for w in self.split(text)]

    def decode(self, ids: Sequence[int]) -> str:
        skip = (self.pad_id, self.bos_id, self.eos_id)
        return " ".join(self.tokens[int(i)] for i in ids if int(i) not in skip)

    def encode_batch(self, texts: Sequence[str], max_len: int) -> dict[str, np.ndarray]:
        return pack([self.encode(t) for t in texts], self.bos_id, self.eos_id, self.pad_id, max_len)

    def word_starts(self, ids: np.ndarray) -> np.ndarray:
        """Every token is a whole word."""
        return np.ones(np.shape(ids), bool)


# ----------------------------------------------------------------------------------------------------
# BERT WordPiece


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    """Characters the cleaning step drops: categories Cc, Cf, Co (and Cs), but not tab/newline, which
    are whitespace. Unassigned code points (Cn) are kept, as in the HF tokenizers library."""
    if ch in "\t\n\r":
        return False
    category = unicodedata.category(ch)
    return category.startswith("C") and category != "Cn"


def _is_punctuation(ch: str) -> bool:
    """BERT's punctuation: all non-alphanumeric ASCII (so "$", "^", "`" too), plus Unicode P* categories."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)  # HF tokenizers starts the sixth block at 0x2B920 (original BERT: 0x2B820); matched for id parity


def _is_cjk(ch: str) -> bool:
    """CJK ideographs, which BERT splits into one token each (kana and hangul are not in these blocks)."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


class WordPieceTokenizer:
    """BERT tokenizer: basic tokenisation, then greedy longest-match-first WordPiece.

    Gives the same ids as HF BertTokenizer (transformers 5, backed by the tokenizers library), including
    its quirks: unassigned code points are kept, and the CJK block list starts its sixth range at 0x2B920.
    Two known differences remain: special tokens written inside the text (e.g. "[MASK]") are tokenised
    as ordinary text, and the tokenizers library classifies characters with Unicode 8.0 tables, so the
    few hundred marks and punctuation characters added since (rare scripts) are split or stripped here
    but treated as plain letters there.
    """

    def __init__(self, vocab: Sequence[str], lowercase: bool = True, max_chars_per_word: int = 100):
        self.tokens: list[str] = list(vocab)
        self._ids: dict[str, int] = {}
        for i, tok in enumerate(self.tokens):
            self._ids.setdefault(tok, i)
        self.lowercase = lowercase
        self.max_chars_per_word = max_chars_per_word
        self.vocab_size = len(self.tokens)
        self.pad_id = self._special("[PAD]")
        self.unk_id = self._special("[UNK]")
        self.cls_id = self._special("[CLS]")
        self.sep_id = self._special("[SEP]")
        self.mask_id = self._special("[MASK]")
        self.bos_id = self.cls_id
        self.eos_id = self.sep_id
        self._cache: dict[str, list[int]] = {}

    def _special(self, token: str) -> int:
        if token not in self._ids:
            raise ValueError(f"WordPiece vocabulary lacks the special token {token}")
        return self._ids[token]

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike, lowercase: bool = True) -> WordPieceTokenizer:
        """Reads a BERT vocab.txt: one token per line, the id is the line number."""
        with open(path, encoding="utf-8") as f:
            vocab = [line.rstrip("\n").rstrip("\r") for line in f]
        while vocab and vocab[-1] == "":  # a trailing newline is not a token
            vocab.pop()
        return cls(vocab, lowercase=lowercase)

    def basic_tokenize(self, text: str) -> list[str]:
        """BERT basic tokenisation: clean, split CJK, lower-case and strip accents, split on punctuation."""
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                chars.append(" ")
            elif _is_cjk(ch):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        words = []
        for word in "".join(chars).split():
            if self.lowercase:
                # Strip accents first, then lower-case char by char (no final-sigma rule), as HF does.
                word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
                word = "".join(c.lower() for c in word)
            current = ""
            for ch in word:
                if _is_punctuation(ch):
                    if current:
                        words.append(current)
                        current = ""
                    words.append(ch)
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def _wordpiece(self, word: str) -> list[int]:
        """Greedy longest-match-first pieces; the whole word becomes [UNK] if any part cannot be matched."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        if len(word) > self.max_chars_per_word:
            return [self.unk_id]
        pieces = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self._ids:
                    found = self._ids[piece]
                    break
                end -= 1
            if found is None:
                pieces = [self.unk_id]
                break
            pieces.append(found)
            start = end
        if len(self._cache) < 100_000:
            self._cache[word] = pieces
        return pieces

    def tokenize(self, text: str) -> list[str]:
        return [self.tokens[i] for i in self.encode(text)]

    def word_starts(self, ids: np.ndarray) -> np.ndarray:
        """True where a token begins a word (not a ``##`` continuation), for whole-word masking."""
        return np.array([not self.tokens[int(i)].startswith("##") for i in np.asarray(ids).ravel()],
                        bool).reshape(np.shape(ids))

    def encode(self, text: str) -> list[int]:
        return [i for word in self.basic_tokenize(text) for i in self._wordpiece(word)]

    def decode(self, ids: Sequence[int]) -> str:
        skip = (self.pad_id, self.cls_id, self.sep_id)
        text = " ".join(self.tokens[int(i)] for i in ids if int(i) not in skip)
        return text.replace(" ##", "")

    def encode_batch(self, texts: Sequence[str], max_len: int) -> dict[str, np.ndarray]:
        out = pack([self.encode(t) for t in texts], self.cls_id, self.sep_id, self.pad_id, max_len)
        out["type_ids"] = np.zeros_like(out["ids"])
        return out


# ----------------------------------------------------------------------------------------------------
# SentencePiece

SP_SPECIALS = {"pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3}
SP_MASK = "<mask>"


class SentencePieceTokenizer:
    """A SentencePiece model (unigram or BPE) behind the common protocol.

    Models trained by ``train_sentencepiece`` have pad 0, unk 1, bos 2, eos 3 and ``<mask>`` 4. Other
    ``.model`` files keep their own ids; a model without a pad piece pads with its unk id, and one
    without ``<mask>`` (or ``[MASK]``) has ``mask_id = None`` and cannot be used for MLM. The processor
    is rebuilt from the serialized model after pickling (grain worker processes).
    """

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm  # optional dependency, only for SentencePiece tokenizers

        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        sp = self._sp
        self.vocab_size = sp.get_piece_size()
        self.unk_id = sp.unk_id()
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else self.unk_id
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        self.eos_id = sp.eos_id() if sp.eos_id() >= 0 else None
        self.cls_id = self.bos_id
        self.mask_id = None
        for piece in (SP_MASK, "[MASK]"):
            i = sp.piece_to_id(piece)
            if i != self.unk_id:
                self.mask_id = i
                break
        self._word_start = np.array([sp.id_to_piece(i).startswith("\u2581") or sp.is_control(i)
                                     for i in range(self.vocab_size)], bool)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        with open(path, "rb") as f:
            return cls(f.read())

    def __getstate__(self) -> dict:
        return {"model_proto": self._proto}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_proto"])

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        skip = {self.pad_id, self.bos_id, self.eos_id}
        return self._sp.decode([int(i) for i in ids if int(i) not in skip])

    def word_starts(self, ids: np.ndarray) -> np.ndarray:
        """True where a token begins a word (its piece starts with the space marker), for whole-word masking."""
        return self._word_start[np.asarray(ids)]

    def encode_batch(self, texts: Sequence[str], max_len: int) -> dict[str, np.ndarray]:
        if self.bos_id is None or self.eos_id is None:
            raise ValueError("this SentencePiece model has no bos/eos pieces, which encode_batch needs")
        return pack(self._sp.encode(list(texts)), self.bos_id, self.eos_id, self.pad_id, max_len)


def train_sentencepiece(inputs: Sequence[str | os.PathLike], model_prefix: str | os.PathLike, vocab_size: int,
                        model_type: str = "unigram", character_coverage: float = 1.0,
                        max_sentences: int = 2_000_000, num_threads: int = 2, lowercase: bool = False,
                        hard_vocab_limit: bool = False) -> str:
    """Trains a SentencePiece model on text files (one sentence or document per line).

    Writes ``<model_prefix>.model`` and ``.vocab`` and returns the ``.model`` path. Ids: pad 0, unk 1,
    bos 2, eos 3, ``<mask>`` 4. ``max_sentences`` lines are sampled from large corpora. With
    ``hard_vocab_limit=False`` a vocabulary too large for the corpus is shrunk instead of failing.
    """
    import sentencepiece as spm  # optional dependency, only for SentencePiece tokenizers

    files = [os.fspath(p) for p in inputs]
    for path in files:
        if not os.path.exists(path):
            raise FileNotFoundError(f"sentencepiece training input {path} does not exist")
    prefix = os.fspath(model_prefix)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=files, model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage, input_sentence_size=max_sentences, shuffle_input_sentence=True,
        num_threads=num_threads, hard_vocab_limit=hard_vocab_limit, user_defined_symbols=[SP_MASK],
        normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc", minloglevel=2, **SP_SPECIALS)
    return prefix + ".model"


TOKENIZER_KINDS = ("word_shapes", "wordpiece", "sentencepiece", "bpe")


def build_tokenizer(kind: str, **kwargs: Any) -> Tokenizer:
    """Builds a tokenizer by name: "word_shapes" (no arguments), "wordpiece" (path=vocab.txt, lowercase=),
    "sentencepiece" (path=model file) or "bpe" (GPT-2 / RoBERTa byte-level BPE: vocab=vocab.json,
    merges=merges.txt)."""
    if kind == "word_shapes":
        if kwargs:
            raise TypeError(f"tokenizer 'word_shapes' takes no arguments, got {sorted(kwargs)}")
        return WordTokenizer.for_shapes()
    if kind == "wordpiece":
        if "path" not in kwargs:
            raise TypeError("tokenizer 'wordpiece' needs path=<vocab.txt>")
        return WordPieceTokenizer.from_vocab_file(**kwargs)
    if kind == "sentencepiece":
        if set(kwargs) != {"path"}:
            raise TypeError(f"tokenizer 'sentencepiece' takes path=<model file> only, got {sorted(kwargs)}")
        return SentencePieceTokenizer.from_file(kwargs["path"])
    if kind == "bpe":
        if set(kwargs) != {"vocab", "merges"}:
            raise TypeError(f"tokenizer 'bpe' takes vocab=<vocab.json> and merges=<merges.txt>, got {sorted(kwargs)}")
        return ByteLevelBPETokenizer.from_files(kwargs["vocab"], kwargs["merges"])
    raise ValueError(f"unknown tokenizer kind {kind!r}; valid kinds: {', '.join(TOKENIZER_KINDS)}")
