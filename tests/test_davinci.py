"""DaVinci (vlfm.models.davinci): the generation contract (cached decoding, prefixes, captions in words
only), prefix image modelling (hidden rows never reach the encoder; targets are the offset codes of
the hidden rows), one tied vocabulary, text-only prefix LM, the base config's size, and learning."""

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlfm.losses import LOSSES
from vlfm.models import build_model
from vlfm.models.davinci import DaVinci, paint_config
from vlfm.models.decoding import GenerateConfig, generate
from vlfm.models.image_tokenizer import ImageTokenizer, fit_kmeans
from vlfm.train.config import load_config

TEXT_VOCAB, CODES, PAD, BOS, EOS = 20, 8, 0, 2, 3


@functools.cache
def _tokenizer_path(folder: str) -> str:
    images = np.random.default_rng(0).uniform(-1, 1, (16, 16, 16, 3)).astype(np.float32)
    tok = fit_kmeans(images, CODES, 4, iters=3, normalise=False)
    path = f"{folder}/codes.npz"
    tok.save(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = _tokenizer_path(str(tmp_path_factory.mktemp("davinci")))
    model = DaVinci(image_size=16, patch_size=4, text_vocab_size=TEXT_VOCAB, image_vocab_size=CODES, width=32,
                    encoder_depth=1, decoder_depth=2, num_heads=2, mlp_dim=64, max_text_len=12, max_decode_len=17,
                    dropout_rate=0.0, attn_dropout_rate=0.0, init_std=0.3, tokenizer=path)  # large: sensitive
    rng = np.random.default_rng(1)
    batch = {"image": jnp.asarray(rng.uniform(-1, 1, (3, 16, 16, 3)), jnp.float32),
             "text": jnp.asarray([[BOS, 5, 6, 7, EOS, 0, 0, 0], [BOS, 8, EOS, 0, 0, 0, 0, 0],
                                  [BOS, 9, 10, 11, 12, 13, EOS, 0]], jnp.int32)}
    params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
    return model, params, batch, ImageTokenizer.load(path)


@functools.cache
def _jitted(model):
    """``model.apply`` compiled once per method and shape (eager flax with a scanned stack is slow)."""
    return jax.jit(model.apply, static_argnames=("method",))


def test_one_tied_vocabulary_of_words_codes_and_img_bos(tiny):
    model, params, batch, _ = tiny
    shapes = jax.tree.map(lambda x: x.shape, nn.meta.unbox(params))
    vocab = TEXT_VOCAB + CODES + 1
    assert shapes["word_embed"]["embedding"] == (vocab, 32)
    # No other table or kernel has a vocabulary axis (the output reuses the input embedding), but the bias.
    with_vocab = [jax.tree_util.keystr(p) for p, s in jax.tree_util.tree_leaves_with_path(
        shapes, is_leaf=lambda x: isinstance(x, tuple)) if vocab in s]
    assert sorted(with_vocab) == ["['lm_bias']", "['word_embed']['embedding']"]
    apply = _jitted(model)
    img = apply({"params": params}, batch, method="prefix_image")
    logits = np.asarray(img["image_logits"])
    assert logits.shape[-1] == vocab
    # Paintings are written in image codes: every word and IMG_BOS is masked out (captions: see below).
    assert np.all(logits[..., :TEXT_VOCAB] <= -1e8) and np.all(logits[..., -1] <= -1e8)
    assert np.all(logits[..., TEXT_VOCAB:TEXT_VOCAB + CODES] > -1e8)


def test_prefix_image_targets_and_hidden_rows_never_reach_the_encoder(tiny):
    model, params, batch, tok = tiny
    apply = _jitted(model)
    out = apply({"params": params}, batch, method="prefix_image")  # evaluation: top 2 of 4 rows kept
    codes = np.asarray(tok(batch["image"])).reshape(3, 16) + TEXT_VOCAB
    labels = np.asarray(out["image_labels"])
    np.testing.assert_array_equal(labels[:, :8], codes[:, 8:])
    assert np.all(labels[:, 8:] == PAD)

    # A different bottom half: the encoder states the decoder can see are unchanged.
    other = batch["image"].at[:, 8:].set(-batch["image"][:, 8:])
    visible = jnp.repeat(jnp.arange(4)[None] < 2, 4, axis=1).repeat(3, axis=0)
    enc = jax.jit(lambda image, visible: model.apply({"params": params}, image, batch["text"], visible=visible,
                                                     method="encode"))
    a = enc(batch["image"], visible)
    b = enc(other, visible)
    seen = np.asarray(a["mask"])
    assert not seen[:, 8:16].any() and seen[:, :8].all()
    np.testing.assert_allclose(np.asarray(a["states"])[seen], np.asarray(b["states"])[seen], atol=1e-5)
    tokens = jnp.asarray(np.where(labels > 0, labels, TEXT_VOCAB))
    la = apply({"params": params}, tokens, a, method="decode_logits")
    lb = apply({"params": params}, tokens, b, method="decode_logits")
    np.testing.assert_allclose(np.asarray(la), np.asarray(lb), atol=1e-4)
    # ... while the full image does change them (the test can fail).
    c = enc(other, jnp.ones_like(visible))
    assert not np.allclose(np.asarray(a["states"])[:, :8], np.asarray(c["states"])[:, :8], atol=1e-3)


def test_generation_cached_equals_uncached_with_prefixes_and_prompts(tiny):
    model, params, batch, _ = tiny
    config = GenerateConfig(max_length=6, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    prefix = jnp.asarray([[5, 6, 0], [0, 0, 0], [9, 0, 0]], jnp.int32)
    prompt = jnp.asarray([[7, 0], [0, 0], [11, 12]], jnp.int32)
    inputs = {"image": batch["image"], "prefix": prefix}
    cached = generate(model, params, inputs, config, prompt=prompt)
    full = generate(model, params, inputs, config, prompt=prompt, use_cache=False)
    np.testing.assert_array_equal(cached["tokens"], full["tokens"])
    np.testing.assert_allclose(cached["scores"], full["scores"], rtol=1e-4)
    assert np.all(np.asarray(cached["tokens"]) < TEXT_VOCAB)  # words only
    # An all-pad prefix is no prefix (captioning from the image alone), and a prefix is read.
    context = jax.jit(functools.partial(model.apply, {"params": params}, method="generation_context"))
    logits = functools.partial(_jitted(model), {"params": params}, jnp.asarray([[BOS, 5]] * 3), method="decode_logits")
    with_prefix = np.asarray(logits(context(inputs)))
    alone = np.asarray(logits(context({"image": batch["image"]})))
    np.testing.assert_allclose(with_prefix[1], alone[1], atol=1e-5)
    assert not np.allclose(with_prefix[[0, 2]], alone[[0, 2]], atol=1e-3)


def test_painting_follows_prefix_image_modelling_and_caches(tiny):
    model, params, batch, _ = tiny
    inputs = dict(batch, visible_rows=jnp.full((3,), 2, jnp.int32))  # prefix_image also keeps 2 rows in evaluation
    apply = _jitted(model)
    forced = apply({"params": params}, batch, method="prefix_image")
    context = jax.jit(functools.partial(model.apply, {"params": params}, method="generation_context"))(inputs)
    img_bos = jnp.full((3, 1), model.img_bos_id, jnp.int32)
    tokens = jnp.concatenate([img_bos, forced["image_labels"][:, :7]], axis=1)
    logits = apply({"params": params}, tokens, context, method="decode_logits")
    np.testing.assert_allclose(np.asarray(logits), np.asarray(forced["image_logits"])[:, :8], atol=1e-4)

    config = paint_config(model, 2)
    cached = generate(model, params, inputs, config)
    full = generate(model, params, inputs, config, use_cache=False)
    painted = np.asarray(cached["tokens"])
    np.testing.assert_array_equal(painted, full["tokens"])
    assert painted.shape == (3, 8) and np.all((painted >= TEXT_VOCAB) & (painted < TEXT_VOCAB + CODES))
    np.testing.assert_array_equal(painted[:, 0], np.argmax(np.asarray(forced["image_logits"])[:, 0], -1))


def test_text_only_prefix_lm_needs_no_image_and_truncates_long_captions(tiny):
    model, params, batch, _ = tiny
    long = jnp.asarray([[BOS] + [5 + i % 10 for i in range(27)] + [EOS]], jnp.int32)  # 29 > 12 and > 17
    text = jnp.concatenate([jnp.pad(batch["text"], ((0, 0), (0, 21))), long])
    out = _jitted(model)({"params": params}, {"text": text}, method="prefix_lm", rngs={"sampling": jax.random.key(3)})
    labels = np.asarray(out["caption_labels"])
    assert labels.shape == (4, 17) and np.all(np.isfinite(np.asarray(out["caption_logits"])))
    # Each short suffix ends in EOS and keeps at least one token; the prefix (BOS ...) is never a label.
    assert all(EOS in row for row in labels[:3]) and not np.any(labels == BOS)
    text_params = jax.eval_shape(lambda: model.init(jax.random.key(0), {"text": batch["text"]}))["params"]
    assert "patch_embed" not in text_params and "word_embed" in text_params


def test_base_config_parameter_count():
    cfg = load_config("configs/davinci_base.py").model
    model = build_model(cfg)
    batch = {"image": jnp.zeros((1, 256, 256, 3)), "text": jnp.zeros((1, 16), jnp.int32)}
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))["params"]
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nn.meta.unbox(boxed)))
    d, mlp, vocab = 768, 3072, 30522 + 1024 + 1
    attn, ln = 4 * (d * d + d), 2 * d
    enc_layer = attn + (d * mlp + mlp + mlp * d + d) + 2 * ln
    dec_layer = enc_layer + attn + ln  # cross-attention and its LayerNorm
    embeddings = vocab * d + (16 * 16 * 3 * d + d) + 256 * d + 512 * d + 2 * d + 512 * d + 2 * ln
    head = (d * d + d) + ln + vocab
    assert n == 6 * enc_layer + 6 * dec_layer + embeddings + head == 125_667_899


def test_tiny_config_builds():
    c = load_config("configs/davinci_tiny.py")
    assert build_model(c.model).vocab_size == 57 + 64 + 1
    assert set(c.tasks) == {"pairs", "pim", "text"}


@pytest.mark.slow
def test_learns_prefix_image_modelling_and_captions(tmp_path):
    """A tiny DaVinci trained on built-in pairs (prefix LM + prefix image modelling together) for 40
    steps: held-out image-code accuracy rises from chance to above the unigram baseline, and held-out
    caption token accuracy rises."""
    from vlfm.data import shapes
    from vlfm.data.builtin import IMAGE_MEAN, IMAGE_STD
    from vlfm.data.tokenizers import WordTokenizer

    start = time.time()
    data = shapes.load("train", 1000, 16, 1)
    images = (data["image"].astype(np.float32) / 255.0 - IMAGE_MEAN) / IMAGE_STD
    text = WordTokenizer.for_shapes().encode_batch(list(data["caption"]), 20)["ids"]
    fit_kmeans(images[:500], 16, 4, iters=10, normalise=False).save(str(tmp_path / "codes.npz"))
    model = DaVinci(image_size=16, patch_size=4, text_vocab_size=57, image_vocab_size=16, width=64,
                    encoder_depth=1, decoder_depth=1, num_heads=4, mlp_dim=128, max_text_len=20, max_decode_len=20,
                    dropout_rate=0.0, attn_dropout_rate=0.0, tokenizer=str(tmp_path / "codes.npz"))
    train = {"image": jnp.asarray(images[:800]), "text": jnp.asarray(text[:800])}
    held = {"image": jnp.asarray(images[800:]), "text": jnp.asarray(text[800:])}
    ce = LOSSES.get("caption_ce")

    def loss_fn(params, batch, rng):
        rngs = {"sampling": rng}
        lm = model.apply({"params": params}, batch, method="prefix_lm", rngs=rngs)
        pim = model.apply({"params": params}, batch, method="prefix_image", rngs=rngs)
        return ce(lm, batch)[0] + ce(pim, batch, logits_key="image_logits", labels_key="image_labels")[0]

    @jax.jit
    def evaluate(params, held):  # data as arguments, not constants XLA would fold
        lm = model.apply({"params": params}, held, method="prefix_lm")
        pim = model.apply({"params": params}, held, method="prefix_image")
        out = {"caption": ce(lm, held)[1]["token_accuracy"],
               "pim": ce(pim, held, logits_key="image_logits", labels_key="image_labels")[1]["token_accuracy"]}
        labels = pim["image_labels"]
        counts = jnp.bincount(jnp.where(labels > 0, labels, 0).ravel(), length=model.vocab_size).at[0].set(0)
        return out, counts.max() / counts.sum()

    params = jax.jit(model.init)(jax.random.key(0), {k: v[:2] for k, v in train.items()})["params"]
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, i, train):
        idx = jax.random.randint(jax.random.fold_in(jax.random.key(1), i), (48,), 0, 800)
        batch = {k: v[idx] for k, v in train.items()}
        grads = jax.grad(loss_fn)(params, batch, jax.random.fold_in(jax.random.key(2), i))
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state

    before, unigram = evaluate(params, held)
    for i in range(40):
        params, state = step(params, state, i, train)
    after, _ = evaluate(params, held)
    print({k: (float(before[k]), float(after[k])) for k in before}, "unigram", float(unigram),
          f"{time.time() - start:.0f}s")
    assert float(after["pim"]) > float(unigram) + 0.1 and float(after["pim"]) > float(before["pim"]) + 0.1
    assert float(after["caption"]) > float(before["caption"]) + 0.2


def test_tokenizer_mismatch_and_unknown_source_fail_naming_what_is_valid(tiny):
    model, _, batch, _ = tiny
    wrong = model.clone(image_vocab_size=CODES + 1)
    with pytest.raises(ValueError, match="image_vocab_size=9"):
        jax.eval_shape(lambda: wrong.init(jax.random.key(0), batch, method="prefix_image"))
    with pytest.raises(ValueError, match="valid: 'kmeans'"):
        jax.eval_shape(lambda: model.clone(tokenizer="vqgan").init(jax.random.key(0), batch, method="prefix_image"))


def test_token_accuracy_evaluator_scores_non_pad_labels_against_the_unigram_baseline():
    from vlfm.evaluators import EVALUATORS

    data = dict(name="shapes", num_examples=40, image_size=8, view="pairs", max_len=12)

    def fn(shift):
        return lambda params, b: {"labels": b["text"], "predicted": (b["text"] + shift) * (b["text"] > 0)}

    def run(shift):
        ev = EVALUATORS.get("token_accuracy")({"image_tokens": fn(shift)}, data=data, num_examples=32, batch_size=8)
        return dict(ev.run(None))

    right, wrong = run(0), run(1)
    assert right["accuracy"] == 1.0 and wrong["accuracy"] == 0.0  # pad positions never count
    from vlfm.data.pipeline import build_dataset

    bundle = build_dataset(data, "validation")
    ids = np.concatenate([np.asarray(bundle.examples[i]["text"]) for i in range(32)])
    _, counts = np.unique(ids[ids > 0], return_counts=True)
    assert right["unigram_baseline"] == pytest.approx(counts.max() / counts.sum())
    with pytest.raises(ValueError, match="valid: image_tokens"):
        EVALUATORS.get("token_accuracy")({"image_tokens": fn(0)}, data=data, predict="caption_tokens")
