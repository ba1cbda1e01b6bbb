"""VQAv2 with the official rule: predicted answer strings scored against the ten annotators' raw answers,
and the submission file of the evaluation server."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath

from vlfm.data.pipeline import build_dataset, eval_examples
from vlfm.data.vqa_answers import vqa_accuracy
from vlfm.evaluators.predict import predict_split
from vlfm.evaluators.registry import EVALUATORS

ANSWER_TYPES = {"yes/no": "yes_no", "number": "number", "other": "other"}


def write_results(path: str, question_ids: Sequence[int], answers: Sequence[str]) -> None:
    """The evaluation server's results file: ``[{"question_id": int, "answer": str}, ...]``."""
    if len(question_ids) != len(answers):
        raise ValueError(f"{len(question_ids)} question ids but {len(answers)} answers")
    rows = [{"question_id": int(q), "answer": str(a)} for q, a in zip(question_ids, answers)]
    out = epath.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows))


@EVALUATORS.register("vqav2")
class Vqav2Evaluator:
    """VQAv2 accuracy by the official rule (``vlfm.data.vqa_answers.vqa_accuracy``: the server's answer
    normalisation, ``min(#matching / 3, 1)`` averaged over the ten leave-one-out subsets of the
    annotators) of the answer ``argmax(vqa_logits)`` names in the data's vocabulary (``info["answers"]``).

    The data must give ``index`` per example and ``info["annotator_answers"](index)`` (the ``vqav2``
    dataset does). Metrics: ``accuracy`` (mean over questions, as a fraction; the server reports it x100),
    ``accuracy_yes_no`` / ``accuracy_number`` / ``accuracy_other`` (per answer type, when the data gives
    ``info["answer_types"]``) and ``num_questions``. A split without annotations (test-dev, test) yields
    only ``num_questions``. ``results_file``: where to write the submission file
    (``[{"question_id", "answer"}]``, question ids from ``info["question_ids"]``), on the first host.
    """

    def __init__(self, predict_fns: Mapping[str, Callable], *, data: Mapping[str, Any], split: str = "validation",
                 num_examples: int | None = None, batch_size: int = 256, results_file: str | None = None):
        self.predict = predict_fns["vqa_logits"]
        self.bundle, self.num_examples, self.batch_size = build_dataset(data, split), num_examples, batch_size
        for key in ("answers", "question_ids", "annotator_answers"):
            if key not in self.bundle.info:
                raise ValueError(f"vqav2 needs data that gives info[{key!r}] and an index per example (the "
                                 f"'vqav2' dataset); {self.bundle.name} does not")
        self.results_file = results_file

    def run(self, params: Any) -> Iterator[tuple[str, float]]:
        def predicted(p, b):
            return np.argmax(self.predict(p, {k: b[k] for k in ("image", "text", "text_mask") if k in b}), -1)

        out = predict_split({"predicted": predicted, "index": lambda p, b: b["index"]}, params,
                            eval_examples(self.bundle, self.num_examples), self.batch_size)
        info = self.bundle.info
        answers = [info["answers"][int(k)] for k in out["predicted"]]
        index = [int(i) for i in out["index"]]
        if self.results_file is not None and jax.process_index() == 0:
            write_results(self.results_file, [info["question_ids"][i] for i in index], answers)
        yield "num_questions", float(len(index))
        if info["annotator_answers"] is None:
            return
        scores = np.array([vqa_accuracy(a, info["annotator_answers"](i)) for a, i in zip(answers, index)])
        yield "accuracy", float(scores.mean())
        if info.get("answer_types") is not None:
            types = np.array([info["answer_types"][i] for i in index])
            for kind, name in ANSWER_TYPES.items():
                if (types == kind).any():
                    yield f"accuracy_{name}", float(scores[types == kind].mean())
