"""Captioning: CIDEr-D and BLEU-1..4 of generated captions against every reference of each held-out image.

Captions come from the ``generate`` predict function that every model following the generation contract
offers (``vlfm.train.evaluation.make_predict_fns``); the evaluator never sees the model. Generated ids are
turned back into words with the data's own tokenizer (``info["tokenizer"].decode``, which drops pad, BOS
and EOS), so the ids the model was trained on and the words scored agree. Both sides are then normalised
by ``caption_metrics.tokenize``.

References: a dataset that has several captions per example offers ``info["reference_captions"](index,
num)`` and an integer ``index`` field in its examples (the built-in shapes data does in its ``captions``
view, which this evaluator asks for by default); only that integer goes through the batch. Without them the
example's own ``text`` ids, decoded, are its single reference.

Baseline: ``baseline_cider_d`` scores the most frequent reference caption of the evaluated examples
(after ``tokenize``; ties broken alphabetically) as the caption of every image. It has seen the evaluated
references, so it is a generous baseline: a model "far above" it describes each image, not the split.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from vlfm.data.pipeline import DATASETS, build_dataset, eval_examples
from vlfm.evaluators.caption_metrics import bleu, cider_d, tokenize
from vlfm.evaluators.predict import predict_split
from vlfm.evaluators.registry import EVALUATORS
from vlfm.models.decoding import GenerateConfig

log = logging.getLogger("vlfm")
CAPTIONS_VIEW = "captions"  # the built-in data's view with an example ``index`` for reference look-ups


def most_frequent(captions: Sequence[str]) -> str:
    """The most frequent caption; ties go to the alphabetically first, so every host agrees."""
    counts = collections.Counter(captions)
    return min(counts, key=lambda c: (-counts[c], c))


def with_view(data: Mapping[str, Any], view: str | None) -> dict:
    """``data`` reading ``view``. A dataset without views (webdataset, tfds, ...) is read as configured
    when ``view`` is the default, ``captions``; any other view for it is an error."""
    name = data.get("name")
    takes_view = name in DATASETS and "view" in inspect.signature(DATASETS.get(name)).parameters
    if view is None or (not takes_view and view == CAPTIONS_VIEW):
        return dict(data)
    if not takes_view:
        raise ValueError(f"captioning view {view!r}: dataset {name!r} has no views (set view=None)")
    return dict(data, view=view)


@EVALUATORS.register("captioning")
class CaptioningEvaluator:
    """Generates a caption per held-out image and scores it against all of the image's references.

    ``generate``: decoding options (``GenerateConfig`` fields: ``method``, ``max_length``, ``beam_size``,
    ...; an unknown one fails naming the valid ones). ``bos_id``, ``eos_id`` and ``pad_id`` default to the
    data tokenizer's and ``max_length`` to the data's ``max_len - 1`` (BOS is not generated). ``inputs``:
    the batch keys the model's ``generation_context`` reads. ``num_references``: references per image
    where the data offers several. ``view``: the data view to read (None: the data config's own; the
    default, ``captions``, applies to data that has views). ``seed``:
    for ``method="sample"``.
    """

    CONFIG_SECTIONS = {"generate": GenerateConfig}  # config keys under ``generate`` are checked at load

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 64, generate: Mapping[str, Any] | None = None,
                 num_references: int = 5, inputs: Sequence[str] = ("image",), view: str | None = CAPTIONS_VIEW,
                 seed: int = 0):
        if "generate" not in predict_fns:
            raise ValueError("the captioning evaluator needs a model that follows the generation contract "
                             f"(generation_context and decode_logits); this model offers {', '.join(predict_fns)}")
        if num_references < 1:
            raise ValueError(f"num_references must be >= 1, got {num_references}")
        self.generate_fn = predict_fns["generate"]
        self.bundle = build_dataset(with_view(data, view), split)
        self.tokenizer = self.bundle.info["tokenizer"]
        options = dict(bos_id=self.tokenizer.bos_id, eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id)
        if "max_len" in self.bundle.info:
            options["max_length"] = int(self.bundle.info["max_len"]) - 1
        options.update(dict(generate or {}))
        self.config = GenerateConfig.from_dict(options)  # fails now, naming the valid options, not mid-run
        self.options = options
        self.references = self.bundle.info.get("reference_captions")
        self.num_examples, self.batch_size, self.num_references = num_examples, batch_size, num_references
        self.inputs, self.seed = tuple(inputs), seed

    def _reference_key(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.references is not None and "index" in batch:
            return batch["index"]
        if "text" in batch:
            return batch["text"]
        raise ValueError("captioning needs references: data whose info has 'reference_captions' and whose examples "
                         f"have an 'index', or examples with 'text'; the batch has {', '.join(batch)}")

    def captions(self, params: Any) -> tuple[list[str], list[list[str]]]:
        """Every evaluated example's generated caption and its references (in split order, on every host)."""
        calls = itertools.count()

        def gen(p, b):
            rng = None
            if self.config.method == "sample":
                rng = jax.random.fold_in(jax.random.key(self.seed), next(calls))
            missing = [k for k in self.inputs if k not in b]
            if missing:
                raise ValueError(f"captioning inputs {missing} are not in the eval batch (it has {', '.join(b)})")
            return self.generate_fn(p, {k: b[k] for k in self.inputs}, self.options, rng=rng)

        fns = {"generated": gen, "reference": lambda p, b: self._reference_key(b)}
        out = predict_split(fns, params, eval_examples(self.bundle, self.num_examples), self.batch_size)
        tokens, lengths = out["generated"]["tokens"], out["generated"]["lengths"]
        hyps = [self.tokenizer.decode([int(t) for t in row[:n]]) for row, n in zip(tokens, lengths)]
        keys = out["reference"]
        if keys.ndim == 1:
            refs = [list(self.references(int(i), self.num_references)) for i in keys]
        else:
            refs = [[self.tokenizer.decode([int(t) for t in row])] for row in keys]
        return hyps, refs

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        hyps, refs = self.captions(params)
        refs_t = {i: [tokenize(r) for r in rs] for i, rs in enumerate(refs)}
        hyps_t = {i: [tokenize(h)] for i, h in enumerate(hyps)}
        score, _ = cider_d(refs_t, hyps_t)
        yield "cider_d", score
        for k, value in enumerate(bleu(refs_t, hyps_t), start=1):
            yield f"bleu_{k}", value
        baseline = most_frequent([r for rs in refs_t.values() for r in rs])
        base_score, _ = cider_d(refs_t, {i: [baseline] for i in refs_t})
        log.info("captioning: %d images; e.g. %r (references %r); baseline caption %r", len(hyps), hyps[0],
                 refs[0], baseline)
        yield "baseline_cider_d", base_score
        yield "mean_words", float(np.mean([len(h[0].split()) for h in hyps_t.values()]))
