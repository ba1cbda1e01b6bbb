"""Bad input on the way into captioning: a caption longer than the decoder's maximum length is truncated
by the data (EOS kept) and trains through ``caption_ce`` without an error; an empty (all-pad) prompt
generates from BOS exactly as no prompt does."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tests.helpers import TinyCaptioner
from vlfm.data import shapes
from vlfm.data.pipeline import build_dataset, eval_arrays
from vlfm.data.preprocess import TextField
from vlfm.data.tokenizers import WordTokenizer
from vlfm.losses import LOSSES
from vlfm.models.decoding import GenerateConfig, generate

TOKENIZER = WordTokenizer.for_shapes()
MAX_LEN = 6  # the decoder's positions; shapes captions of two objects are much longer


def test_a_caption_longer_than_the_decoder_is_truncated_not_an_error():
    assert shapes.max_caption_words(2) + 2 > MAX_LEN
    data = dict(name="shapes", num_examples=8, image_size=8, max_objects=2, max_len=MAX_LEN)
    batch = eval_arrays(build_dataset(data, "train"), 8)
    captions = shapes.generate("train", 8, image_size=8, max_objects=2)["caption"]
    text = np.asarray(batch["text"])
    assert text.shape == (8, MAX_LEN)
    # A text field (webdataset / text files) truncates the same way.
    field = TextField(tokenizer={"kind": "word_shapes"}, max_len=MAX_LEN)
    for row, caption in zip(text, captions):
        words = TOKENIZER.encode(caption)
        assert len(words) > MAX_LEN - 2  # every caption is too long for the decoder
        np.testing.assert_array_equal(row, [TOKENIZER.bos_id, *words[:MAX_LEN - 2], TOKENIZER.eos_id])
        np.testing.assert_array_equal(field.process(caption, np.random.default_rng(0))["text"], row)

    # Teacher forcing over the whole (truncated) row fits the decoder's positions; every label counts.
    model = TinyCaptioner(vocab_size=TOKENIZER.vocab_size, max_len=MAX_LEN, width=16)

    @jax.jit
    def forward(images, text):
        logits = model.init_with_output(jax.random.key(0), {"image": images, "text": text})[0]["logits"]
        outputs = {"caption_logits": logits[:, :-1], "caption_labels": text[:, 1:]}
        return LOSSES.get("caption_ce")(outputs, {}, pad_id=TOKENIZER.pad_id)[0], logits

    loss, logits = forward(jnp.asarray(batch["image"]), jnp.asarray(text))  # one compile
    logits = np.asarray(logits[:, :-1], np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    want = -np.take_along_axis(logp, text[:, 1:, None], -1).mean()
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_an_empty_prompt_generates_from_bos():
    """An all-pad prompt gives what no prompt (internally a prompt with no columns) gives; that generating
    from BOS alone is greedy's reference, and an all-pad row beside real prompts, is checked in
    test_decoding."""
    model = TinyCaptioner()
    image = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 3, 4)), jnp.float32)
    inputs = {"image": image, "text": jnp.zeros((3, model.max_len), jnp.int32)}
    params = jax.jit(model.init)(jax.random.key(0), inputs)["params"]
    config = GenerateConfig(max_length=5, bos_id=1, eos_id=2, pad_id=0)
    plain = generate(model, params, {"image": image}, config)
    out = generate(model, params, {"image": image}, config, prompt=jnp.zeros((3, 4), jnp.int32))
    for key in ("tokens", "lengths"):
        np.testing.assert_array_equal(out[key], plain[key])
