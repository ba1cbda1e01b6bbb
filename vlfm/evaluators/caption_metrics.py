"""Corpus-level CIDEr-D and BLEU-1..4, computed the way pycocoevalcap 1.2 reports them.

Pure Python so the captioning evaluator needs no extra dependency. Inputs are already tokenised,
lower-case strings (``tokenize`` below); words are split on whitespace.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Mapping, Sequence

import numpy as np

_PUNCT = re.compile(r"[^\w\s]")


def tokenize(text: str) -> str:
    """Lower-case, drop punctuation, collapse whitespace: a light stand-in for the PTB tokenizer."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def _ngrams(sentence: str, n: int) -> collections.Counter:
    words = sentence.split()
    return collections.Counter(
        tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _check(refs: Mapping, hyps: Mapping) -> list:
    if set(refs) != set(hyps):
        raise ValueError("references and hypotheses must have the same keys")
    for key in hyps:
        if len(hyps[key]) != 1 or len(refs[key]) < 1:
            raise ValueError(f"{key!r}: need exactly one hypothesis and at least one reference")
    return list(hyps)


def bleu(refs: Mapping[str, Sequence[str]], hyps: Mapping[str, Sequence[str]],
         n: int = 4) -> list[float]:
    """Corpus BLEU-1..n with the closest reference length, as pycocoevalcap's Bleu(n) reports it."""
    tiny, small = 1e-15, 1e-9
    correct, guess = [0] * n, [0] * n
    testlen_sum = reflen_sum = 0
    for key in _check(refs, hyps):
        test = hyps[key][0]
        maxref: dict = {}
        for ref in refs[key]:
            for gram, count in _ngrams(ref, n).items():
                maxref[gram] = max(maxref.get(gram, 0), count)
        testlen = len(test.split())
        reflens = [len(r.split()) for r in refs[key]]
        testlen_sum += testlen
        reflen_sum += min((abs(l - testlen), l) for l in reflens)[1]
        for gram, count in _ngrams(test, n).items():
            correct[len(gram) - 1] += min(maxref.get(gram, 0), count)
        for k in range(n):
            guess[k] += max(0, testlen - k)
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (testlen_sum + tiny) / (reflen_sum + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def cider_d(refs: Mapping[str, Sequence[str]], hyps: Mapping[str, Sequence[str]],
            n: int = 4, sigma: float = 6.0) -> tuple[float, np.ndarray]:
    """CIDEr-D (clipped tf-idf n-gram cosine, Gaussian length penalty, x10); df from the references.

    Returns (corpus mean, per-image scores in key order), as pycocoevalcap's Cider.compute_score.
    """
    keys = _check(refs, hyps)
    df: collections.Counter = collections.Counter()
    for key in keys:
        df.update(set(g for r in refs[key] for g in _ngrams(r, n)))
    log_n = math.log(float(len(keys)))

    def vec(sentence):
        v = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in _ngrams(sentence, n).items():
            k = len(gram) - 1
            v[k][gram] = float(tf) * (log_n - math.log(max(1.0, df[gram])))
            norm[k] += v[k][gram] ** 2
            if k == 1:  # pycocoevalcap measures length in bigrams
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for key in keys:
        vh, nh, lh = vec(hyps[key][0])
        total = np.zeros(n)
        for ref in refs[key]:
            vr, nr, lr = vec(ref)
            delta = float(lh - lr)
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * math.exp(-(delta ** 2) / (2 * sigma ** 2))
        scores.append(float(np.mean(total)) / len(refs[key]) * 10.0)
    scores = np.asarray(scores)
    return float(np.mean(scores)), scores
