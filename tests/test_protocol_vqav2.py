"""VQAv2's official rule: answer normalisation, the leave-one-out accuracy (hand-worked cases), the answer
vocabulary, and the reader + evaluator on small files in the released format, with the submission file."""

import json

import numpy as np
import pytest
from PIL import Image

from vlfm.data.pipeline import build_dataset
from vlfm.data.vqa_answers import (CONTRACTIONS, answer_scores, answer_vocabulary, normalize_answer,
                                   vqa_accuracy)
from vlfm.evaluators import EVALUATORS


@pytest.mark.parametrize("raw, want", [
    ("Two dogs.", "2 dogs"),             # number word -> digit; a period not before a digit goes
    ("A Red Ball", "red ball"),          # lower case, article dropped
    ("the dog's toy", "dog's toy"),      # apostrophes are not punctuation
    ("dont know", "don't know"),         # contraction fixed
    ("couldnt've", "couldn't've"),
    ("yes!", "yes"),                     # a mark not touching a space becomes a space
    ("black-and-white", "black and white"),
    ("left - right", "left right"),      # a mark touching a space is deleted
    ("1,000", "1000"),                   # a digit-comma-digit group: marks deleted, not spaced
    ("3.5", "3.5"),                      # a period before a digit stays
    ("none", "0"),
    ("  on\tthe  table \n", "on table"),
])
def test_normalisation(raw, want):
    assert normalize_answer(raw) == want


def test_contraction_table_matches_the_official_one_in_size_and_quirks():
    assert len(CONTRACTIONS) == 109  # the official table's lower-case keys
    assert CONTRACTIONS["somebody'd"] == "somebodyd" and CONTRACTIONS["twas"] == "'twas"
    assert CONTRACTIONS["y'allll"] == "y'all'll" and "couldntve" not in CONTRACTIONS


@pytest.mark.parametrize("n, leave_one_out, plain", [
    # n of 10 annotators gave the answer. Leaving out one of the n matching ones leaves n - 1 matches,
    # leaving out one of the 10 - n others leaves n: the mean of min(m / 3, 1) over the ten subsets.
    (3, (3 * (2 / 3) + 7 * 1.0) / 10, 1.0),          # 0.9, where the plain rule says 1
    (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10, 2 / 3),    # 0.6, where the plain rule says 0.667
    (1, (1 * 0.0 + 9 * (1 / 3)) / 10, 1 / 3),        # 0.3
    (4, 1.0, 1.0),
    (0, 0.0, 0.0),
])
def test_leave_one_out_accuracy(n, leave_one_out, plain):
    answers = ["red"] * n + ["blue"] * (10 - n)
    got = vqa_accuracy("red", answers)
    assert got == pytest.approx(leave_one_out)
    if n == 3 or n == 2:
        assert got != pytest.approx(plain)  # the leave-one-out average is not the plain min(n / 3, 1)


def test_normalisation_applies_only_when_annotators_disagree():
    """The server normalises both sides only when the ten answers differ: against ten identical "2",
    the prediction "two" is compared as given (no match); with one dissenter it is normalised to "2"."""
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    assert vqa_accuracy("2", ["2"] * 10) == 1.0
    assert vqa_accuracy("two", ["2"] * 9 + ["3"]) == 1.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 1.0  # compared lower-cased all the same
    assert vqa_accuracy("a dog", ["dog"] * 3 + ["cat"] * 7) == pytest.approx(0.9)


def test_answer_vocabulary_counts_normalised_answers_top_k():
    anns = [{"answers": [{"answer": a} for a in ["Two", "2", "2", "yes", "cat"]], "multiple_choice_answer": "2"},
            {"answers": [{"answer": a} for a in ["yes", "Yes!", "dog", "cat", "a cat"]],
             "multiple_choice_answer": "yes"}]
    # counts after normalisation: 2 -> 3, yes -> 3, cat -> 3, dog -> 1; ties alphabetical
    assert answer_vocabulary(anns, size=3) == ["2", "cat", "yes"]
    assert answer_vocabulary(anns, size=10) == ["2", "cat", "yes", "dog"]
    assert answer_vocabulary(anns, field="multiple_choice_answer") == ["2", "yes"]


def test_training_targets_are_each_answers_official_accuracy():
    vocab = {"red": 0, "blue": 1, "green": 2}
    scores = answer_scores(["red"] * 3 + ["blue"] * 6 + ["pink"], vocab)
    assert scores == pytest.approx({0: 0.9, 1: 1.0})  # pink is not in the vocabulary, green was not given
    assert answer_scores(["Red."] * 2 + ["blue"] * 8, vocab) == pytest.approx({0: 0.6, 1: 1.0})
    # unanimous answers are normalised too (the server would compare "Two" as given)
    assert answer_scores(["Two"] * 10, {"2": 0}) == pytest.approx({0: 1.0})


def _write_vqav2(tmp_path):
    """Four questions on four 8x8 images of grey levels 0, 80, 160, 240, in the released format."""
    for image_id in range(4):
        Image.fromarray(np.full((8, 8, 3), 80 * image_id, np.uint8)).save(
            tmp_path / f"COCO_val2014_{image_id:012d}.png")
    given = [["yes"] * 10,                                  # the model answers "yes": 1
             ["2"] * 3 + ["3"] * 7,                         # the model answers "two" -> "2": 0.9
             ["red"] * 2 + ["blue"] * 8,                    # the model answers "red": 0.6
             ["no"] * 10]                                   # the model answers "yes": 0
    types = ["yes/no", "number", "other", "yes/no"]
    questions = {"questions": [{"question_id": 1000 + i, "image_id": i, "question": f"question {i}"}
                               for i in range(4)]}
    annotations = {"annotations": [
        {"question_id": 1000 + i, "image_id": i, "answer_type": types[i], "question_type": "what",
         "multiple_choice_answer": given[i][-1],
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(given[i])]}
        for i in range(4)]}
    (tmp_path / "questions.json").write_text(json.dumps(questions))
    (tmp_path / "annotations.json").write_text(json.dumps(annotations))
    (tmp_path / "answers.json").write_text(json.dumps(["yes", "no", "two", "red", "blue", "3"]))
    return dict(name="vqav2", questions=str(tmp_path / "questions.json"),
                annotations=str(tmp_path / "annotations.json"), answers=str(tmp_path / "answers.json"),
                images=str(tmp_path / "COCO_val2014_{image_id:012d}.png"),
                image=dict(size=8, eval_crop="resize", mean_std="half"),
                text=dict(tokenizer=dict(kind="word_shapes"), max_len=6))


def test_reader_and_evaluator_on_released_format_files(tmp_path):
    data = _write_vqav2(tmp_path)
    bundle = build_dataset(data, "validation")
    assert bundle.info["question_ids"] == [1000, 1001, 1002, 1003]
    example = bundle.random_transform(bundle.examples[1], np.random.default_rng(0))
    assert example["image"].shape == (8, 8, 3) and example["index"] == 1
    # vocabulary ["yes", "no", "two", "red", "blue", "3"]: "3" given by 7 of 10 scores 1, "two" (normalised
    # to "2", not "two") nothing
    np.testing.assert_allclose(example["vqa_targets"], [0, 0, 0, 0, 0, 1.0])

    answer_of_level = {0: 0, 1: 2, 2: 3, 3: 0}  # image grey level (0..3) -> answer index: yes, two, red, yes

    def vqa_logits(params, batch):
        level = np.rint((batch["image"].mean(axis=(1, 2, 3)) + 1) / 2 * 255 / 80).astype(int)
        return np.eye(6)[[answer_of_level[int(k)] for k in level]]

    results = tmp_path / "out" / "results.json"
    ev = EVALUATORS.get("vqav2")({"vqa_logits": vqa_logits}, data=data, batch_size=3, results_file=str(results))
    got = dict(ev.run(None))
    assert got["accuracy"] == pytest.approx((1.0 + 0.9 + 0.6 + 0.0) / 4)
    assert got["accuracy_yes_no"] == pytest.approx(0.5)
    assert got["accuracy_number"] == pytest.approx(0.9) and got["accuracy_other"] == pytest.approx(0.6)
    assert json.loads(results.read_text()) == [{"question_id": 1000, "answer": "yes"},
                                               {"question_id": 1001, "answer": "two"},
                                               {"question_id": 1002, "answer": "red"},
                                               {"question_id": 1003, "answer": "yes"}]

    # test-dev: no annotations, only the submission file
    test_data = {k: v for k, v in data.items() if k != "annotations"}
    got = dict(EVALUATORS.get("vqav2")({"vqa_logits": vqa_logits}, data=test_data, split="test",
                                       results_file=str(results)).run(None))
    assert got == {"num_questions": 4.0}
    assert len(json.loads(results.read_text())) == 4


def test_vocabulary_from_training_annotations(tmp_path):
    data = _write_vqav2(tmp_path)
    data = {k: v for k, v in data.items() if k != "answers"}
    bundle = build_dataset(dict(data, vocabulary_annotations=data["annotations"], num_answers=3), "validation")
    assert bundle.info["answers"] == ["no", "yes", "blue"]  # 10, 10, 8 of all forty answers; ties alphabetical


def test_builtin_vqa_with_annotator_answers():
    """The built-in VQA data offers its ten simulated answers, so the official rule runs on it too; its
    soft targets are unchanged (min(1, n / 3) of the same answers)."""
    data = dict(name="shapes_vqa", num_examples=24, image_size=8)
    plain = build_dataset(data, "validation")
    bundle = build_dataset(dict(data, annotations=True), "validation")
    answers = bundle.info["answers"]
    for i in range(24):
        given = bundle.info["annotator_answers"](i)
        counts = np.array([given.count(a) for a in answers])
        np.testing.assert_allclose(plain.examples[i]["vqa_targets"], np.minimum(1, counts / 3))
        np.testing.assert_allclose(bundle.examples[i]["vqa_targets"], plain.examples[i]["vqa_targets"])
        assert bundle.examples[i]["index"] == i

    yes = answers.index("yes")
    always_yes = lambda p, b: np.eye(len(answers))[np.full(len(b["image"]), yes)]  # noqa: E731
    got = dict(EVALUATORS.get("vqav2")({"vqa_logits": always_yes}, data=dict(data, annotations=True),
                                       batch_size=16).run(None))
    n = np.array([bundle.info["annotator_answers"](i).count("yes") for i in range(24)])
    leave_one_out = (n * np.minimum(1, (n - 1) / 3) + (10 - n) * np.minimum(1, n / 3)) / 10
    assert n.max() > 0 and got["accuracy"] == pytest.approx(leave_one_out.mean())
    assert got["accuracy_other"] == 0.0 and "accuracy_number" not in got


def test_vqa_vocab_command(tmp_path, capsys):
    from vlfm.data.__main__ import main

    data = _write_vqav2(tmp_path)
    out = tmp_path / "vocab.json"
    main(["vqa-vocab", "--annotations", data["annotations"], "--size", "4", "--out", str(out)])
    assert json.loads(out.read_text()) == ["no", "yes", "blue", "3"]
