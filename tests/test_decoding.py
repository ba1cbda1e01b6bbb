"""Generation (vlfm.models.decoding) on a tiny test-only captioner that follows the generation contract:
cached decoding against re-running the prefix and against a plain reference loop, beam search, sampling,
prompts, truncation, options, the mesh; and the cross-attention keys/values cache of ``Attention``."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import TinyCaptioner
from vlfm.core.sharding import make_mesh
from vlfm.models import layers
from vlfm.models.decoding import GenerateConfig, generate, make_generate_fn

VOCAB, MAX_LEN = TinyCaptioner.vocab_size, TinyCaptioner.max_len
PAD, BOS, EOS = 0, 1, 2


@functools.cache
def _setup(batch_size=4):
    model = TinyCaptioner()
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(batch_size, 3, 3, 4)), jnp.float32)}
    text = jnp.zeros((batch_size, MAX_LEN), jnp.int32)
    params = model.init(jax.random.key(0), dict(batch, text=text))["params"]
    return model, params, batch


PROMPT = jnp.asarray([[5, 7, 3], [4, PAD, PAD], [PAD, PAD, PAD], [9, 6, PAD]], jnp.int32)  # lengths 3, 1, 0, 2


@functools.partial(jax.jit, static_argnums=0)
def _logp_at(model, params, seq, context):
    """Log-probabilities of a causal pass over ``seq`` padded to the decoder's length (one compile)."""
    padded = jnp.pad(seq, ((0, 0), (0, MAX_LEN - seq.shape[1]))) if seq.shape[1] < MAX_LEN else seq
    return jax.nn.log_softmax(model.apply({"params": params}, padded, context, method="decode_logits"))


def _reference_greedy(model, params, batch, prompt, max_length, eos=EOS):
    """Greedy by re-running the decoder over [BOS, prompt, generated] for each row alone, in plain Python."""
    context = model.apply({"params": params}, batch, method="generation_context")
    out = []
    for i in range(len(prompt)):
        seq = [BOS] + [int(t) for t in prompt[i] if t != PAD]
        gen = []
        while len(gen) < max_length:
            padded = jnp.asarray([seq + [PAD] * (MAX_LEN - len(seq))])
            token = int(jnp.argmax(_logp_at(model, params, padded, context[i:i + 1])[0, len(seq) - 1]))
            gen.append(token)
            seq.append(token)
            if token == eos:
                break
        out.append(gen + [PAD] * (max_length - len(gen)))
    return np.asarray(out)


def _score(model, params, batch, prompt, tokens, lengths):
    """Sum of the model's log-probabilities of each row's generated tokens (teacher-forced, full pass)."""
    context = model.apply({"params": params}, batch, method="generation_context")
    scores = []
    for i in range(len(tokens)):
        p = [int(t) for t in prompt[i] if t != PAD]
        gen = [int(t) for t in tokens[i][:lengths[i]]]
        seq = [BOS] + p + gen
        logp = _logp_at(model, params, jnp.asarray([seq + [PAD] * (MAX_LEN - len(seq))]), context[i:i + 1])[0]
        scores.append(sum(float(logp[len(p) + j, g]) for j, g in enumerate(gen)))
    return np.asarray(scores)


def test_greedy_with_cache_matches_a_reference_loop_and_the_uncached_run():
    model, params, batch = _setup()
    config = GenerateConfig(max_length=6, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    cached = generate(model, params, batch, config, prompt=PROMPT)
    full = generate(model, params, batch, config, prompt=PROMPT, use_cache=False)
    want = _reference_greedy(model, params, batch, np.asarray(PROMPT), 6)
    np.testing.assert_array_equal(cached["tokens"], want)
    np.testing.assert_array_equal(full["tokens"], want)
    lengths = np.asarray(cached["lengths"])
    np.testing.assert_array_equal(lengths, [row.index(EOS) + 1 if EOS in row else 6 for row in want.tolist()])
    np.testing.assert_array_equal(full["lengths"], lengths)
    assert cached["tokens"].dtype == jnp.int32 and cached["lengths"].dtype == jnp.int32
    assert cached["scores"].dtype == jnp.float32
    np.testing.assert_allclose(cached["scores"], _score(model, params, batch, np.asarray(PROMPT), want, lengths),
                               rtol=1e-4, atol=1e-4)


def test_eos_stops_one_row_while_the_others_go_on():
    model, params, batch = _setup()
    config = GenerateConfig(max_length=8, bos_id=BOS, eos_id=VOCAB + 5, pad_id=PAD)  # an EOS never generated
    free = np.asarray(generate(model, params, batch, config)["tokens"])
    # The token that some row generates earliest, strictly before every other row does: make it EOS.
    first = [{t: row.index(t) for t in reversed(row)} for row in free.tolist()]
    choices = [(first[i][t], i, t) for i in range(len(free)) for t in first[i] if t not in (PAD, BOS)
               and all(first[i][t] < first[j].get(t, 99) for j in range(len(free)) if j != i)]
    assert choices, f"no token stops one row first: {free}"
    step, row, eos = min(choices)
    out = generate(model, params, batch, GenerateConfig(max_length=8, bos_id=BOS, eos_id=eos, pad_id=PAD))
    tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
    assert lengths[row] == step + 1
    np.testing.assert_array_equal(tokens[row, :step + 1], free[row, :step + 1])
    assert (tokens[row, step + 1:] == PAD).all()
    others = [j for j in range(len(free)) if j != row]
    assert (lengths[others] > step + 1).all()
    for j in others:
        np.testing.assert_array_equal(tokens[j, :lengths[j]], free[j, :lengths[j]])


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_cached_equals_uncached_and_scores_are_the_models(length_penalty):
    model, params, batch = _setup()
    config = GenerateConfig(method="beam", beam_size=3, max_length=6, length_penalty=length_penalty,
                            bos_id=BOS, eos_id=3, pad_id=PAD)
    cached = generate(model, params, batch, config, prompt=PROMPT)
    full = generate(model, params, batch, config, prompt=PROMPT, use_cache=False)
    for key in ("tokens", "lengths"):
        np.testing.assert_array_equal(cached[key], full[key])
    np.testing.assert_allclose(cached["scores"], full["scores"], rtol=1e-5, atol=1e-5)
    tokens, lengths = np.asarray(cached["tokens"]), np.asarray(cached["lengths"])
    for row, n in zip(tokens, lengths):
        assert (row[n:] == PAD).all() and (n == 6 or row[n - 1] == 3)
    raw = _score(model, params, batch, np.asarray(PROMPT), tokens, lengths)
    np.testing.assert_allclose(cached["scores"], raw / lengths ** length_penalty, rtol=1e-4, atol=1e-4)


def test_beam_size_one_is_greedy():
    model, params, batch = _setup()
    base = dict(max_length=6, bos_id=BOS, eos_id=3, pad_id=PAD)
    greedy = generate(model, params, batch, GenerateConfig(**base), prompt=PROMPT)
    beam = generate(model, params, batch, GenerateConfig(method="beam", beam_size=1, length_penalty=1.0, **base),
                    prompt=PROMPT)
    np.testing.assert_array_equal(beam["tokens"], greedy["tokens"])
    np.testing.assert_array_equal(beam["lengths"], greedy["lengths"])


def test_sampling_filters_and_rngs():
    model, params, batch = _setup()
    base = dict(max_length=6, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    greedy = np.asarray(generate(model, params, batch, GenerateConfig(**base))["tokens"])
    rng = jax.random.key(1)
    for opts in (dict(top_k=1, temperature=0.7), dict(top_p=1e-3, temperature=2.0)):
        out = generate(model, params, batch, GenerateConfig(method="sample", **opts, **base), rng=rng)
        np.testing.assert_array_equal(out["tokens"], greedy)
    hot = functools.partial(generate, model, params, batch, GenerateConfig(method="sample", temperature=2.0, **base))
    a, b, again = (np.asarray(hot(rng=jax.random.key(s))["tokens"]) for s in (1, 2, 1))
    np.testing.assert_array_equal(a, again)
    assert (a != b).any()
    with pytest.raises(ValueError, match="needs an rng"):
        hot()


def test_over_long_prompt_is_truncated_to_fit_the_decoder():
    model, params, batch = _setup()
    config = GenerateConfig(max_length=6, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    long = jnp.asarray(np.random.default_rng(1).integers(3, VOCAB, size=(4, 12)), jnp.int32)
    room = MAX_LEN - 1 - 6
    np.testing.assert_array_equal(generate(model, params, batch, config, prompt=long)["tokens"],
                                  generate(model, params, batch, config, prompt=long[:, :room])["tokens"])
    with pytest.raises(ValueError, match="max_length 16"):
        generate(model, params, batch, GenerateConfig(max_length=16), prompt=long)


def test_options_fail_naming_the_valid_ones():
    with pytest.raises(ValueError, match="valid: .*beam_size.*top_p"):
        GenerateConfig.from_dict({"method": "beam", "beams": 3})
    with pytest.raises(ValueError, match="valid: greedy, beam, sample"):
        GenerateConfig.from_dict({"method": "nucleus"})
    with pytest.raises(ValueError, match="top_p"):
        GenerateConfig(method="sample", top_p=0.0)
    assert GenerateConfig.from_dict({"method": "sample", "top_k": 5}) == GenerateConfig(method="sample", top_k=5)


def test_sharded_generation_matches_unsharded():
    model, params, batch = _setup(batch_size=8)
    mesh = make_mesh((-1, 1, 1))
    config = GenerateConfig(method="beam", beam_size=2, max_length=5, bos_id=BOS, eos_id=3, pad_id=PAD)
    prompt = jnp.tile(PROMPT, (2, 1))
    sharded = make_generate_fn(model, config, mesh)(params, batch, prompt=prompt)
    assert len(sharded["tokens"].sharding.device_set) == 8
    plain = make_generate_fn(model, config)(params, batch, prompt=prompt)
    np.testing.assert_array_equal(sharded["tokens"], plain["tokens"])
    np.testing.assert_allclose(sharded["scores"], plain["scores"], rtol=1e-5, atol=1e-5)


def test_cross_attention_projects_the_context_once_when_decoding():
    block = dict(num_heads=2, mlp_dim=32, causal=True, cross_attention=True)
    r = np.random.default_rng(0)
    x, ctx = (jnp.asarray(r.normal(size=s), jnp.float32) for s in ((2, 5, 16), (2, 4, 16)))
    decoder = layers.Encoder(2, dict(block, decode=True), scan=True)
    variables = decoder.init(jax.random.key(0), x, context=ctx)
    assert variables["cache"]["layers"]["cross_attn"]["cached_context_key"].value.shape == (2, 2, 4, 2, 8)
    full = layers.Encoder(2, block, scan=True).apply({"params": variables["params"]}, x, context=ctx)
    step = jax.jit(lambda cache, t: decoder.apply({"params": variables["params"], "cache": cache}, t,
                                                  context=jnp.zeros_like(ctx), mutable=["cache"]))
    state = variables
    outs = []
    for i in range(5):  # later steps get a zero context: the cached projections are what they read
        out, state = step(state["cache"], x[:, i:i + 1])
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)
