"""Byte-level BPE (GPT-2 / RoBERTa): hand-checked merges, and the same ids as HF RobertaTokenizer."""

import json

import numpy as np
import pytest

from vlfm.data.bpe import ByteLevelBPETokenizer, byte_alphabet
from vlfm.data.tokenizers import build_tokenizer

SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}


def _tiny(merges):
    """Specials, the 256 byte characters, then each merge's result, in merge order; <mask> last."""
    vocab = dict(SPECIALS)
    for ch in byte_alphabet().values():
        vocab[ch] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<mask>"] = len(vocab)
    return vocab


def test_byte_alphabet_is_gpt2s():
    table = byte_alphabet()
    assert len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[0] == "Ā"


def test_merges_apply_lowest_rank_first_within_each_piece():
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w"), ("o", "r")]
    tok = ByteLevelBPETokenizer(_tiny(merges), merges)
    # "hello" -> h e l l o -> he l l o -> he ll o -> hell o; " world" -> Ġ w o r l d -> Ġw o r l d -> Ġw or l d
    assert tok.tokenize("hello world") == ["hell", "o", "Ġw", "or", "l", "d"]
    assert tok.decode(tok.encode("hello world")) == "hello world"
    # Non-ASCII text goes through its UTF-8 bytes and comes back whole.
    assert tok.decode(tok.encode("café – 3.5 ")) == "café – 3.5 "
    batch = tok.encode_batch(["hello", "hello world again"], 6)
    assert batch["ids"][0].tolist() == [0, tok.vocab["hell"], tok.vocab["o"], 2, 1, 1]
    assert batch["mask"][0].tolist() == [1, 1, 1, 1, 0, 0]
    assert batch["ids"][1][-1] == 2 and batch["mask"][1].sum() == 6  # truncated inside, </s> kept
    np.testing.assert_array_equal(tok.word_starts(batch["ids"][1]), [True, True, False, True, False, False])


def test_build_tokenizer_names_its_arguments(tmp_path):
    merges = [("h", "e")]
    (tmp_path / "vocab.json").write_text(json.dumps(_tiny(merges)))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nh e\n")
    tok = build_tokenizer("bpe", vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    assert tok.tokenize("he") == ["he"] and tok.mask_id == tok.vocab_size - 1
    with pytest.raises(TypeError, match="vocab=<vocab.json> and merges=<merges.txt>"):
        build_tokenizer("bpe", path="vocab.json")
    (tmp_path / "bad.txt").write_text("h e x\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: a merge is two tokens"):
        build_tokenizer("bpe", vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "bad.txt"))


TEXTS = ["A man riding a horse on the beach.", "it's two dogs'   playing; they've 42 balls!!",
         "Ünïcödé naïve café — 東京 3.14159", "  leading and trailing spaces  ", "line\nbreak\ttab",
         "I'll we'd she's THEY'RE", "emoji 🙂 and ñ", ""]


@pytest.mark.parity
def test_same_ids_as_hf_roberta_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    corpus = ["a man riding a horse on the beach", "two dogs are playing with balls on the grass",
              "the café in Tokyo serves naïve dishes", "they've got 42 balls and it's sunny"] * 20
    trainer = tokenizers.ByteLevelBPETokenizer()
    trainer.train_from_iterator(corpus, vocab_size=400, min_frequency=2,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    trainer.save_model(str(tmp_path))
    ours = build_tokenizer("bpe", vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    hf = transformers.RobertaTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert len(ours.ranks) > 50  # the trained merges are really used
    for text in TEXTS:
        want = hf(text, add_special_tokens=False)["input_ids"]
        assert ours.encode(text) == want, text
        assert ours.decode(want) == hf.decode(want), text
    want = hf(TEXTS[:3], padding="max_length", truncation=True, max_length=12)
    got = ours.encode_batch(TEXTS[:3], 12)
    np.testing.assert_array_equal(got["ids"], want["input_ids"])
    np.testing.assert_array_equal(got["mask"], want["attention_mask"])
