"""The captioning evaluator and the ``generate`` predict function: metrics equal the scorers run by hand on
the same captions, references line up with their images, the baseline, option typos."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.helpers import TinyCaptioner
from vlfm.core.sharding import make_mesh
from vlfm.data import shapes
from vlfm.data.pipeline import build_dataset, eval_arrays
from vlfm.data.tokenizers import WordTokenizer
from vlfm.evaluators import EVALUATORS
from vlfm.evaluators.caption_metrics import bleu, cider_d, tokenize
from vlfm.evaluators.captioning import with_view
from vlfm.models.decoding import GenerateConfig, generate
from vlfm.train.config import ConfigError, apply_overrides, base_config, validate_config
from vlfm.train.evaluation import build_evaluators, make_predict_fns

DATA = dict(name="shapes", num_examples=24, image_size=8, max_objects=2, max_len=shapes.max_caption_words(2) + 2)
N, REFS = 20, 3  # 20 examples in batches of 8: the last batch is padded
TOKENIZER = WordTokenizer.for_shapes()


@functools.cache
def _model():
    model = TinyCaptioner(vocab_size=TOKENIZER.vocab_size, max_len=DATA["max_len"], width=16)
    batch = {"image": jnp.zeros((1, 8, 8, 3)), "text": jnp.zeros((1, DATA["max_len"]), jnp.int32)}
    return model, jax.jit(model.init)(jax.random.key(3), batch)["params"]


def _evaluator(fns, **kwargs):
    return EVALUATORS.get("captioning")(fns, data=DATA, num_examples=N, batch_size=8, num_references=REFS, **kwargs)


def _scores(hyps, refs):
    r = {i: [tokenize(x) for x in rs] for i, rs in enumerate(refs)}
    h = {i: [tokenize(x)] for i, x in enumerate(hyps)}
    return cider_d(r, h)[0], bleu(r, h)


def test_evaluator_scores_the_models_greedy_captions_against_all_references():
    model, params = _model()
    with jax.set_mesh(mesh := make_mesh((-1, 1, 1))):
        fns = make_predict_fns(model, mesh)
        ev = _evaluator(fns)
        metrics = dict(ev.run(params))
        hyps, refs = ev.captions(params)

    # The same captions by hand: the dataset's images, decoding without a mesh, the data's tokenizer.
    images = eval_arrays(build_dataset(DATA, "validation"), N)["image"]
    config = GenerateConfig(max_length=DATA["max_len"] - 1, bos_id=TOKENIZER.bos_id, eos_id=TOKENIZER.eos_id,
                            pad_id=TOKENIZER.pad_id)
    out = generate(model, params, {"image": jnp.asarray(images)}, config)
    want_hyps = [TOKENIZER.decode(list(np.asarray(t)[:n])) for t, n in zip(out["tokens"], out["lengths"])]
    want_refs = [shapes.reference_captions("validation", i, REFS, 2) for i in range(N)]
    assert hyps == want_hyps and refs == want_refs
    assert any(h.split() for h in hyps)
    cider, bleus = _scores(want_hyps, want_refs)
    assert metrics["cider_d"] == pytest.approx(cider, abs=1e-12)
    assert [metrics[f"bleu_{k}"] for k in range(1, 5)] == pytest.approx(bleus, abs=1e-12)

    # Baseline: the most frequent tokenised reference (alphabetically first among equals) for every image.
    flat = [tokenize(r) for rs in want_refs for r in rs]
    best = sorted(set(flat), key=lambda c: (-flat.count(c), c))[0]
    assert metrics["baseline_cider_d"] == pytest.approx(_scores([best] * N, want_refs)[0], abs=1e-12)
    assert metrics["mean_words"] == pytest.approx(np.mean([len(tokenize(h).split()) for h in want_hyps]))

    # A model without the generation contract offers no generate function, and the evaluator says why.
    class Encoder(nn.Module):
        PREDICT = {"logits": lambda m, b: b["image"]}

    assert "generate" not in make_predict_fns(Encoder(), mesh)
    with pytest.raises(ValueError, match="generation contract"):
        _evaluator(make_predict_fns(Encoder(), mesh))


def _oracle(arrays, captions):
    """A generate predict function that 'captions' each image with a given caption (found by its pixels);
    records the options it is called with."""
    by_image = {arrays["image"][i].tobytes(): captions[i] for i in range(len(captions))}
    calls = []

    def fn(params, batch, options, rng=None, prompt=None):
        calls.append((sorted(batch), dict(options)))
        tokens = TOKENIZER.encode_batch([by_image[im.tobytes()] for im in batch["image"]], DATA["max_len"])["ids"]
        tokens = tokens[:, 1:]  # no BOS: generated tokens start after it, EOS included
        return {"tokens": tokens, "lengths": (tokens != TOKENIZER.pad_id).sum(axis=1).astype(np.int32),
                "scores": np.zeros(len(tokens), np.float32)}

    return fn, calls


def test_references_belong_to_their_images_and_a_perfect_captioner_beats_the_baseline():
    arrays = eval_arrays(build_dataset(dict(DATA, view="captions"), "validation"), N)
    refs = [shapes.reference_captions("validation", int(i), REFS, 2) for i in arrays["index"]]
    fn, calls = _oracle(arrays, [r[1] for r in refs])  # the second wording: not the example's own caption
    metrics = dict(_evaluator({"generate": fn}, generate={"method": "beam", "beam_size": 2}).run(None))
    assert metrics["bleu_4"] == pytest.approx(1.0, abs=1e-6)  # each caption is one of its image's references
    assert metrics["cider_d"] > 3 * metrics["baseline_cider_d"] > 0
    keys, options = calls[0]
    assert keys == ["image"] and options == dict(bos_id=TOKENIZER.bos_id, eos_id=TOKENIZER.eos_id,
                                                 pad_id=TOKENIZER.pad_id, max_length=DATA["max_len"] - 1,
                                                 method="beam", beam_size=2)
    # Without reference lookups (the data config's own view), the example's own text is the one reference.
    own = [shapes.reference_captions("validation", i, 1, 2)[0] for i in range(N)]
    fn, _ = _oracle(arrays, own)
    metrics = dict(_evaluator({"generate": fn}, view=None).run(None))
    assert metrics["bleu_4"] == pytest.approx(1.0, abs=1e-6)


def test_an_unknown_decoding_option_fails_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"beam_szie.*valid:.*beam_size.*length_penalty"):
        _evaluator({"generate": None}, generate={"method": "beam", "beam_szie": 3})
    with pytest.raises(ValueError, match="unknown generation method 'bean'"):
        _evaluator({"generate": None}, generate={"method": "bean"})


def test_a_config_names_the_evaluator_with_its_options():
    """``config.evals`` entry -> the evaluator, as the trainer and ``vlfm.evaluate`` build it: decoding options,
    references, split and example count reach it; a decoding typo fails when the config is loaded."""
    c = base_config()
    c.data = ml_collections.ConfigDict(dict(DATA, batch_size=8))
    c.evals = ml_collections.ConfigDict(dict(caption=dict(
        type="captioning", split="train", num_examples=N, batch_size=8, num_references=REFS, every=50,
        generate=dict(method="beam", beam_size=2))))
    apply_overrides(c, ["evals.caption.generate.length_penalty=0", "evals.caption.generate.max_length=7"])
    assert c.evals.caption.generate.length_penalty == 0.0 and isinstance(c.evals.caption.generate.length_penalty,
                                                                         float)
    arrays = eval_arrays(build_dataset(dict(DATA, view="captions"), "train"), N)
    refs = [shapes.reference_captions("train", int(i), REFS, 2) for i in arrays["index"]]
    fn, calls = _oracle(arrays, [r[-1] for r in refs])  # pixels of another split would not be found
    (evaluator, every), = build_evaluators(c, {"generate": fn}).values()
    metrics = dict(evaluator.run(None))
    assert every == 50 and metrics["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert len(calls) == -(-N // 8) and calls[0][1] == dict(
        bos_id=TOKENIZER.bos_id, eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id, max_length=7, method="beam",
        beam_size=2, length_penalty=0.0)
    assert evaluator.captions(None)[1] == refs  # N examples of the split, REFS references each
    c.evals.caption.generate.beam_szie = 3
    with pytest.raises(ConfigError, match=r"evals.caption.generate.beam_szie.*valid keys: beam_size, bos_id"):
        validate_config(c)

    # Data without views (webdataset shards, ...) is read as configured unless a view is asked for.
    shards = dict(name="webdataset", urls="shards-{000..009}.tar")
    assert with_view(shards, "captions") == shards == with_view(shards, None)
    assert with_view(DATA, "captions") == dict(DATA, view="captions")
    with pytest.raises(ValueError, match="'webdataset' has no views"):
        with_view(shards, "pairs")
