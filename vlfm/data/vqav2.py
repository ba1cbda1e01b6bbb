"""VQAv2 as released: question JSON, annotation JSON and COCO image files.

Files (visualqa.org): ``v2_OpenEnded_mscoco_{train2014,val2014,test2015,test-dev2015}_questions.json``
(``{"questions": [{"question_id", "image_id", "question"}, ...]}``) and
``v2_mscoco_{train2014,val2014}_annotations.json`` (``{"annotations": [{"question_id", "image_id",
"answer_type", "question_type", "multiple_choice_answer", "answers": [{"answer", "answer_confidence",
"answer_id"} x 10]}, ...]}``); images ``COCO_train2014_000000000009.jpg`` and so on. The test splits
have no annotations: their examples carry no targets, and the ``vqav2`` evaluator writes the submission
file instead of scoring.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from etils import epath

from vlfm.data.bad_data import BadSample
from vlfm.data.pipeline import DATASETS, DatasetBundle
from vlfm.data.preprocess import build_processor
from vlfm.data.vqa_answers import answer_scores, answer_vocabulary


def by_split(value: str | Mapping[str, str] | None, split: str, what: str) -> str | None:
    """A reader's file argument: one path for every split, or ``{split: path}``."""
    if value is None or isinstance(value, str):
        return value
    if split not in value:
        raise ValueError(f"{what} has no entry for split {split!r}; it has {', '.join(value)}")
    return value[split]


def _read_json(path: str) -> Any:
    return json.loads(epath.Path(path).read_text())


def read_questions(path: str) -> list[dict]:
    """The ``questions`` list of a VQAv2 question file."""
    return list(_read_json(path)["questions"])


def read_annotations(path: str) -> dict[int, dict]:
    """A VQAv2 annotation file's entries by question id."""
    return {int(a["question_id"]): a for a in _read_json(path)["annotations"]}


def build_vocabulary(annotation_files: str | Sequence[str], size: int = 3129,
                     field: str = "answers") -> list[str]:
    """``vqa_answers.answer_vocabulary`` over one or more annotation files (e.g. train, or train + val
    for test-dev submissions)."""
    files = [annotation_files] if isinstance(annotation_files, str) else list(annotation_files)
    return answer_vocabulary((a for f in files for a in _read_json(f)["annotations"]), size, field)


class _Record:
    """index -> raw record (image bytes, question, index, sparse targets); picklable for grain workers."""

    def __init__(self, questions: list[dict], images: str, targets: list[dict[int, float]] | None):
        self.questions, self.images, self.targets = questions, images, targets

    def __call__(self, index: int, question: dict) -> dict:
        path = epath.Path(self.images.format(image_id=int(question["image_id"])))
        record = {"image": path.read_bytes(), "question": question["question"], "index": np.int32(index),
                  "__key__": str(question["question_id"]), "__url__": str(path)}
        if self.targets is not None:
            record["targets"] = self.targets[index]
        return record


class _Transform:
    """Processor (image, question) plus ``index`` and the dense ``vqa_targets``."""

    def __init__(self, processor, num_answers: int):
        self.processor, self.num_answers = processor, num_answers

    def __call__(self, record: dict, rng: np.random.Generator) -> dict | BadSample:
        out = self.processor(record, rng)
        if isinstance(out, BadSample):
            return out
        out["index"] = record["index"]
        if "targets" in record:
            targets = np.zeros(self.num_answers, np.float32)
            for k, v in record["targets"].items():
                targets[k] = v
            out["vqa_targets"] = targets
        return out


@DATASETS.register("vqav2")
def vqav2_dataset(split: str, questions: str | Mapping[str, str], images: str | Mapping[str, str],
                  annotations: str | Mapping[str, str] | None = None, answers: str | None = None,
                  vocabulary_annotations: str | Sequence[str] | None = None, num_answers: int = 3129,
                  vocabulary_field: str = "answers", image: Mapping[str, Any] | None = None,
                  text: Mapping[str, Any] | None = None, augment: bool | None = None) -> DatasetBundle:
    """Questions of one split with their images, ``index`` (the question's position in the file) and,
    where the split has annotations, ``vqa_targets`` (each vocabulary answer's VQA accuracy).

    ``questions`` / ``annotations``: file paths, or ``{split: path}``. ``images``: a path pattern with
    ``{image_id}`` (e.g. ``coco/val2014/COCO_val2014_{image_id:012d}.jpg``), or ``{split: pattern}``.
    The answer vocabulary is ``answers`` (a JSON list, as the model's classes) or the top
    ``num_answers`` of ``vocabulary_annotations`` (training annotation files). ``image``/``text``: field
    specs (``text`` needs a tokenizer). ``info`` carries ``answers``, ``question_ids``,
    ``annotator_answers(index)`` and ``answer_types`` (None for unannotated splits).
    """
    if answers is not None:
        vocabulary = list(_read_json(answers))
    elif vocabulary_annotations is not None:
        vocabulary = build_vocabulary(vocabulary_annotations, num_answers, vocabulary_field)
    else:
        raise ValueError("vqav2 needs the answer vocabulary: answers=<JSON list> or "
                         "vocabulary_annotations=<training annotation file(s)>")
    question_list = read_questions(by_split(questions, split, "vqav2 questions"))
    annotation_path = by_split(annotations, split, "vqav2 annotations") if annotations is not None else None
    index_of = {a: i for i, a in enumerate(vocabulary)}
    annotator_answers, answer_types, targets = None, None, None
    if annotation_path is not None:
        by_id = read_annotations(annotation_path)
        missing = [q["question_id"] for q in question_list if int(q["question_id"]) not in by_id]
        if missing:
            raise ValueError(f"{len(missing)} questions have no annotation in {annotation_path} (first: {missing[0]})")
        anns = [by_id[int(q["question_id"])] for q in question_list]
        annotator_answers = [[a["answer"] for a in ann["answers"]] for ann in anns]
        answer_types = [ann.get("answer_type", "") for ann in anns]
        targets = [answer_scores(given, index_of) for given in annotator_answers]
    train = split.startswith("train") if augment is None else augment
    processor = build_processor("vqav2", train, image=dict(image or {}, key="image"),
                                text=None if text is None else dict(text, key="question"))
    record = _Record(question_list, by_split(images, split, "vqav2 images"), targets)
    examples = grain.MapDataset.source(question_list).map_with_index(record)
    info = dict(processor.info(), name="vqav2", answers=vocabulary, num_answers=len(vocabulary),
                question_ids=[int(q["question_id"]) for q in question_list], answer_types=answer_types,
                annotator_answers=None if annotator_answers is None else annotator_answers.__getitem__)
    return DatasetBundle(examples, _Transform(processor, len(vocabulary)), info)
