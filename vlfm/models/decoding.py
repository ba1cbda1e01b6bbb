"""Generation from a model's text decoder: greedy, beam search and sampling, with an incremental KV cache.

A generative model follows the generation contract: a ``decode`` field (``model.clone(decode=True)`` keeps a
KV cache in the ``cache`` collection), ``generation_context(batch, *, train=False)`` (what the decoder reads
besides its tokens; every leaf has a leading batch axis) and ``decode_logits(tokens, context, *,
positions=None, train=False) -> [B, L, V]``. Optionally ``max_decode_length`` (the most positions its
decoder embeds) bounds the sequence; ``GenerateConfig.max_positions`` overrides it.

The decoder runs over one sequence per row, ``[BOS, prompt..., generated...]``, one token per step with
every row at the same position; while a row is still inside its prompt the prompt token is forced, so
prompts of different lengths (an all-pad row is an empty prompt: generation starts right after BOS) need
no left-padding. With the cache each step costs one position; ``use_cache=False`` re-runs the whole
(fixed-length, causally masked) sequence every step, which gives the same tokens.

Truncation: the sequence holds at most ``max_positions`` tokens, so a prompt keeps its first
``max_positions - 1 - max_length`` tokens (the rest is dropped, as over-long captions are elsewhere);
``max_length + 1 > max_positions`` is a configuration error.

Scores: greedy and sampling report the sum of the model's log-probabilities (temperature 1, no
filtering) of the generated tokens, EOS included; beam search reports that sum divided by
``length ** length_penalty`` (Hugging Face's convention; ``length`` counts the generated tokens, EOS
included). Beam search keeps finished hypotheses (EOS) aside, adds an EOS hypothesis only when it ranks
among the best ``beam_size`` candidates of its step, and stops a row once it holds ``beam_size`` finished
hypotheses or reaches ``max_length`` (then its live beams count as finished), as Hugging Face's
``early_stopping=True``; so beam size 1 is greedy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlfm.core.sharding import DEFAULT_RULES, batch_sharding, replicated

Array = jax.Array
METHODS = ("greedy", "beam", "sample")
NEG = -1.0e9  # the score of an impossible beam (finite, so sums and divisions stay NaN-free)


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """How to generate.

    ``max_length`` counts generated tokens (EOS included, BOS and prompt not). ``beam_size`` and
    ``length_penalty`` are for ``beam``; ``temperature``, ``top_k`` (0: off) and ``top_p`` (1.0: off) for
    ``sample``. ``max_positions`` bounds BOS + prompt + generated tokens (None: the model's
    ``max_decode_length`` if it has one, else unbounded).
    """

    method: str = "greedy"
    max_length: int = 20
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 0
    beam_size: int = 4
    length_penalty: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_positions: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown generation method {self.method!r}; valid: {', '.join(METHODS)}")
        checks = [
            (self.max_length >= 1, "max_length must be >= 1"),
            (min(self.bos_id, self.eos_id, self.pad_id) >= 0, "bos_id, eos_id and pad_id must be >= 0"),
            (self.beam_size >= 1, "beam_size must be >= 1"),
            (math.isfinite(self.length_penalty), "length_penalty must be finite"),
            (self.temperature > 0, "temperature must be > 0 (use method='greedy' for the argmax)"),
            (self.top_k >= 0, "top_k must be >= 0 (0: no top-k filtering)"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1] (1.0: no nucleus filtering)"),
            (self.max_positions is None or self.max_positions >= 2, "max_positions must be >= 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"GenerateConfig: {message}; got {self}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GenerateConfig:
        """Builds a config from a dict (e.g. an evaluator's config); an unknown key fails naming the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown generation option(s) {unknown}; valid: {', '.join(valid)}")
        return cls(**dict(d))


def make_generate_fn(model: nn.Module, config: GenerateConfig, mesh: Mesh | None = None, *, use_cache: bool = True,
                     rules: tuple | None = None) -> Callable[..., dict]:
    """``fn(params, batch, rng=None, prompt=None) -> {"tokens", "lengths", "scores"}``, compiled once per
    batch shape. Under ``mesh`` the batch (and prompt) rows are split over the data axes and the
    parameters replicated unless already placed on the mesh; the model's logical axes follow ``rules``
    (default ``DEFAULT_RULES``). The batch size must then be a multiple of the data-parallel size."""
    jitted = jax.jit(functools.partial(_generate, model, config, use_cache=use_cache))
    if mesh is None:
        def fn(params, batch, rng=None, prompt=None):
            return jitted(params, batch, rng, prompt)
        return fn
    rules = DEFAULT_RULES if rules is None else rules

    def place(x, sharding):
        if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh:
            return x
        return jax.device_put(x, sharding)

    def sharded_fn(params, batch, rng=None, prompt=None):
        params = jax.tree.map(lambda x: place(x, replicated(mesh)), params)
        batch = jax.tree.map(lambda x: place(x, batch_sharding(mesh, np.ndim(x))), batch)
        if prompt is not None:
            prompt = place(prompt, batch_sharding(mesh, 2))
        if rng is not None:
            rng = place(rng, replicated(mesh))
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return jitted(params, batch, rng, prompt)
    return sharded_fn


def generate(model: nn.Module, params: Any, batch: Mapping[str, Any], config: GenerateConfig, *,
             rng: Array | None = None, prompt: Array | None = None, use_cache: bool = True) -> dict:
    """Generates a continuation per row (see the module docstring). Returns ``tokens`` int32
    ``[B, max_length]`` (after BOS and prompt, EOS included, ``pad_id`` after it), ``lengths`` int32 [B]
    (tokens up to and including EOS) and ``scores`` float32 [B]. Compiled functions are reused across
    calls with the same model, config and shapes."""
    return _cached_fn(_ModelKey(model), config, use_cache)(params, batch, rng, prompt)


class _ModelKey:
    """A cache key for a module. Modules built from config dicts (as the model registry builds them) are
    unhashable; equal modules have equal ``repr`` (their type and every field), which then keys them."""

    def __init__(self, model: nn.Module):
        self.model = model
        try:
            hash(model)
            self.key: tuple = (model,)
        except TypeError:
            self.key = (type(model), repr(model))

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ModelKey) and self.key == other.key


@functools.lru_cache(maxsize=32)
def _cached_fn(key: _ModelKey, config: GenerateConfig, use_cache: bool) -> Callable[..., dict]:
    return make_generate_fn(key.model, config, use_cache=use_cache)


# ----------------------------------------------------------------------------------------------------
# The loop


def _max_positions(model: nn.Module, config: GenerateConfig) -> int | None:
    if config.max_positions is not None:
        return config.max_positions
    return getattr(model, "max_decode_length", None)


def _prompt(prompt: Array | None, batch_size: int, config: GenerateConfig, limit: int | None) -> tuple[Array, Array]:
    """The prompt truncated to fit (int32 [B, P]) and each row's length (its tokens before the first pad)."""
    if limit is not None and config.max_length + 1 > limit:
        raise ValueError(f"max_length {config.max_length} + BOS exceeds the decoder's {limit} positions "
                         "(GenerateConfig.max_positions or the model's max_decode_length)")
    if prompt is None:
        prompt = jnp.zeros((batch_size, 0), jnp.int32)
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt.ndim != 2 or prompt.shape[0] != batch_size:
        raise ValueError(f"prompt must be int32 [batch={batch_size}, P], got shape {prompt.shape}")
    if limit is not None:
        prompt = prompt[:, :limit - 1 - config.max_length]
    real = jnp.cumprod(prompt != config.pad_id, axis=1)
    return jnp.where(real > 0, prompt, config.pad_id), real.sum(axis=1).astype(jnp.int32)


def _repeat(tree: Any, k: int) -> Any:
    return jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), tree)


def _batch_size(batch: Any) -> int:
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("the batch is empty")
    return leaves[0].shape[0]


def _generate(model: nn.Module, config: GenerateConfig, params: Any, batch: Any, rng: Array | None,
              prompt: Array | None, *, use_cache: bool) -> dict:
    if config.method == "sample" and rng is None:
        raise ValueError("method='sample' needs an rng")
    b = _batch_size(batch)
    prompt, plen = _prompt(prompt, b, config, _max_positions(model, config))
    total = 1 + prompt.shape[1] + config.max_length
    seq = jnp.full((b, total), config.pad_id, jnp.int32).at[:, 0].set(config.bos_id)
    seq = seq.at[:, 1:1 + prompt.shape[1]].set(prompt)
    context = model.apply({"params": params}, batch, method="generation_context")
    k = config.beam_size if config.method == "beam" else 1
    if k > 1:
        seq, context = jnp.repeat(seq, k, axis=0), _repeat(context, k)
    logits_fn, cache = _logits_fn(model, params, context, seq, use_cache)
    if config.method == "beam":
        return _beam_search(config, logits_fn, cache, seq, plen)
    return _sample_loop(config, logits_fn, cache, seq, plen, rng)


def _logits_fn(model: nn.Module, params: Any, context: Any, seq: Array, use_cache: bool):
    """``(fn(cache, seq, t) -> (logits [N, V] for position t + 1, cache), initial cache)``."""
    n, total = seq.shape
    if not use_cache:
        def full(cache, seq, t):
            logits = model.apply({"params": params}, seq, context, method="decode_logits")
            return jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False).astype(jnp.float32), cache
        return full, None
    decoder = model.clone(decode=True)
    positions = jnp.broadcast_to(jnp.arange(total, dtype=jnp.int32), (n, total))
    _, state = decoder.apply({"params": params}, seq, context, positions=positions, method="decode_logits",
                             mutable=["cache"])

    def step(cache, seq, t):
        token = jax.lax.dynamic_slice_in_dim(seq, t, 1, axis=1)
        pos = jnp.full((n, 1), t, jnp.int32)
        logits, state = decoder.apply({"params": params, "cache": cache}, token, context, positions=pos,
                                      method="decode_logits", mutable=["cache"])
        return logits[:, -1].astype(jnp.float32), state["cache"]
    return step, state["cache"]


def _set_column(seq: Array, t: Array, tokens: Array) -> Array:
    return jax.lax.dynamic_update_slice_in_dim(seq, tokens[:, None].astype(seq.dtype), t, axis=1)


def _continuation(seq: Array, plen: Array, max_length: int) -> Array:
    idx = 1 + plen[:, None] + jnp.arange(max_length)[None, :]
    return jnp.take_along_axis(seq, jnp.minimum(idx, seq.shape[1] - 1), axis=1)


def _filter_logits(logits: Array, config: GenerateConfig) -> Array:
    """Temperature, then top-k, then top-p (the smallest set of tokens whose probability reaches top_p)."""
    logits = logits / config.temperature
    if config.top_k > 0:
        kth = jax.lax.top_k(logits, min(config.top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if config.top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly better tokens
        keep = before < config.top_p  # always keeps the best token
        threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def _sample_loop(config: GenerateConfig, logits_fn, cache, seq: Array, plen: Array, rng: Array | None) -> dict:
    """Greedy and sampling: one token per row per step."""
    n, total = seq.shape

    def cond(state):
        t, _, _, done, _, _ = state
        return jnp.logical_and(t < total - 1, jnp.logical_not(jnp.all(done)))

    def body(state):
        t, seq, cache, done, logp, lengths = state
        logits, cache = logits_fn(cache, seq, t)
        if config.method == "greedy":
            choice = jnp.argmax(logits, axis=-1)
        else:
            choice = jax.random.categorical(jax.random.fold_in(rng, t), _filter_logits(logits, config), axis=-1)
        in_prompt = t < plen
        generating = jnp.logical_and(jnp.logical_not(in_prompt), jnp.logical_not(done))
        forced = jax.lax.dynamic_index_in_dim(seq, t + 1, axis=1, keepdims=False)
        token = jnp.where(in_prompt, forced, jnp.where(done, config.pad_id, choice)).astype(jnp.int32)
        token_logp = jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], axis=-1)[:, 0]
        logp = logp + jnp.where(generating, token_logp, 0.0)
        count = t - plen + 1
        lengths = jnp.where(generating, count, lengths)
        stop = jnp.logical_or(token == config.eos_id, count >= config.max_length)
        done = jnp.logical_or(done, jnp.logical_and(generating, stop))
        return t + 1, _set_column(seq, t + 1, token), cache, done, logp, lengths

    state = (jnp.zeros((), jnp.int32), seq, cache, jnp.zeros((n,), bool), jnp.zeros((n,), jnp.float32),
             jnp.zeros((n,), jnp.int32))
    _, seq, _, _, logp, lengths = jax.lax.while_loop(cond, body, state)
    return {"tokens": _continuation(seq, plen, config.max_length), "lengths": lengths, "scores": logp}


# ----------------------------------------------------------------------------------------------------
# Beam search


def _reorder_cache(cache: Any, index: Array) -> Any:
    """Gathers rows ``index`` of every cache entry along its batch axis (``cache_batch`` for logically
    named entries, else the leading axis; scalars such as ``cache_index`` stay)."""
    def gather(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            axis = leaf.names.index("cache_batch") if "cache_batch" in leaf.names else 0
            return leaf.replace_boxed(jnp.take(leaf.value, index, axis=axis))
        if jnp.ndim(leaf) == 0 or leaf.shape[0] != index.shape[0]:
            return leaf
        return jnp.take(leaf, index, axis=0)
    return jax.tree.map(gather, cache, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def _beam_search(config: GenerateConfig, logits_fn, cache, seq: Array, plen: Array) -> dict:
    k, eos, pad = config.beam_size, config.eos_id, config.pad_id
    n, total = seq.shape
    b = n // k
    seq = seq.reshape(b, k, total)
    ranks = jnp.arange(2 * k)
    beams = jnp.broadcast_to(jnp.arange(k), (b, k))

    def penalised(logp, length):
        return logp / jnp.maximum(length, 1).astype(jnp.float32) ** config.length_penalty

    def cond(state):
        return jnp.logical_and(state[0] < total - 1, jnp.logical_not(jnp.all(state[4])))

    def body(state):
        t, seq, cache, alive_logp, done, fin_seq, fin_score, fin_len = state
        logits, cache = logits_fn(cache, seq.reshape(n, total), t)
        vocab = logits.shape[-1]
        cand = (alive_logp[:, :, None] + jax.nn.log_softmax(logits).reshape(b, k, vocab)).reshape(b, k * vocab)
        values, flat = jax.lax.top_k(cand, 2 * k)
        parent, token = flat // vocab, flat % vocab
        real = values > NEG / 2
        count = (t - plen + 1)[:, None]  # generated tokens once this one is added, [B, 1]
        is_eos = token == eos
        # Live beams: the best k candidates that are not EOS (at most k of the 2k are EOS, one per parent).
        live_values = jnp.where(is_eos, 2 * NEG, values)
        new_logp, pick = jax.lax.top_k(live_values, k)
        new_parent = jnp.take_along_axis(parent, pick, axis=1)
        new_token = jnp.take_along_axis(token, pick, axis=1)
        # Finished candidates: EOS among the best k, and at max_length every live beam.
        last = count >= config.max_length
        eos_score = jnp.where(is_eos & real & (ranks < k)[None], penalised(values, count), NEG)
        last_score = jnp.where(last & (new_logp > NEG / 2), penalised(new_logp, count), NEG)

        def with_token(parents, tokens):
            rows = jnp.take_along_axis(seq, parents[:, :, None], axis=1)
            return jax.lax.dynamic_update_slice_in_dim(rows, tokens[:, :, None].astype(rows.dtype), t + 1, axis=2)

        pool_seq = jnp.concatenate([fin_seq, with_token(parent, token), with_token(new_parent, new_token)], axis=1)
        pool_score = jnp.concatenate([fin_score, eos_score, last_score], axis=1)
        pool_len = jnp.concatenate([fin_len, jnp.broadcast_to(count, (b, 3 * k))], axis=1)
        top_score, top = jax.lax.top_k(pool_score, k)
        gen_fin_seq = jnp.take_along_axis(pool_seq, top[:, :, None], axis=1)
        gen_fin_len = jnp.take_along_axis(pool_len, top, axis=1)
        # Rows inside their prompt, or done, keep their beams and force the prompt token (or pad).
        in_prompt = t < plen
        generating = (~in_prompt & ~done)[:, None]
        forced = jnp.where(in_prompt[:, None], jax.lax.dynamic_index_in_dim(seq, t + 1, axis=2, keepdims=False), pad)
        parents = jnp.where(generating, new_parent, beams)
        tokens = jnp.where(generating, new_token, forced)
        seq = with_token(parents, tokens)
        alive_logp = jnp.where(generating, new_logp, alive_logp)
        fin_seq = jnp.where(generating[:, :, None], gen_fin_seq, fin_seq)
        fin_score = jnp.where(generating, top_score, fin_score)
        fin_len = jnp.where(generating, gen_fin_len, fin_len)
        full = jnp.all(fin_score > NEG / 2, axis=1)
        done = done | (generating[:, 0] & (full | last[:, 0]))
        if cache is not None:
            cache = _reorder_cache(cache, (parents + jnp.arange(b)[:, None] * k).reshape(n))
        return t + 1, seq, cache, alive_logp, done, fin_seq, fin_score, fin_len

    alive_logp = jnp.where(jnp.arange(k)[None] == 0, 0.0, NEG) * jnp.ones((b, 1), jnp.float32)
    state = (jnp.zeros((), jnp.int32), seq, cache, alive_logp, jnp.zeros((b,), bool),
             jnp.full((b, k, total), pad, jnp.int32), jnp.full((b, k), NEG, jnp.float32),
             jnp.zeros((b, k), jnp.int32))
    state = jax.lax.while_loop(cond, body, state)
    fin_seq, fin_score, fin_len = state[5:]
    best = jnp.argmax(fin_score, axis=1)
    tokens = jnp.take_along_axis(fin_seq, best[:, None, None], axis=1)[:, 0]
    return {"tokens": _continuation(tokens, plen, config.max_length),
            "lengths": jnp.take_along_axis(fin_len, best[:, None], axis=1)[:, 0],
            "scores": jnp.take_along_axis(fin_score, best[:, None], axis=1)[:, 0]}
