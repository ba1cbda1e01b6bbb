"""VQAv2's answer rules: the official answer normalisation, the leave-one-out accuracy and the answer
vocabulary.

These follow the VQA evaluation server (the VQA-Challenge ``vqaEval.py``), quirks included, so accuracies
computed here are those a test-dev submission would get:

- ``normalize_answer``: newlines and tabs become spaces and the ends are stripped; punctuation
  (``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``) is deleted when it touches a space or when the text
  holds a digit-comma-digit group, else replaced by a space; a period not followed by a digit is
  deleted; then, word by word after lower-casing, number words ``none``/``zero`` .. ``ten`` become digits,
  the articles ``a an the`` are dropped and contraction spellings without apostrophes are fixed
  (``dont`` -> ``don't``).
- ``vqa_accuracy``: both sides are normalised only when the annotators disagree (when all ten gave the
  same string it is compared as given, after stripping); the answer then scores, for each of the ten
  leave-one-out subsets of nine annotators, ``min(#matching / 3, 1)`` (strings compared lower-cased),
  and the ten scores are averaged. This differs from the plain ``min(#matching of 10 / 3, 1)``: an
  answer given by 3 of 10 annotators scores 0.9, not 1.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Sequence

NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES: tuple[str, ...] = ("a", "an", "the")
PUNCTUATION: tuple[str, ...] = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                                "@", "`", ",", "?", "!")

# Spellings without apostrophes -> the apostrophe form, as the official table has them (its keys with
# capitals, "Im" and the like, can never match a lower-cased word; "somebody'd" maps to "somebodyd").
_CONTRACTION_FORMS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd
he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't must've
needn't not've o'clock oughtn't shan't she'd've shouldn't shouldn't've should've somebody'd've somebody'll
somebody's someone'd someone'd've someone'll someone's something'd something'd've something'll that's
there'd there'd've there're there's they'd they'd've they'll they're they've wasn't we'd've we've weren't
what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's who've won't
would've wouldn't wouldn't've y'all you'd you'd've you'll you're you've
"""


def _contractions() -> dict[str, str]:
    """Two-part forms keyed by their spelling without the apostrophe; three-part forms (``couldn't've``)
    by the two spellings that keep one of their apostrophes, as the official table lists them; then the
    table's irregular entries."""
    table: dict[str, str] = {}
    for form in _CONTRACTION_FORMS.split():
        parts = form.split("'")
        if len(parts) == 3:
            table[f"{parts[0]}{parts[1]}'{parts[2]}"] = form
            table[f"{parts[0]}'{parts[1]}{parts[2]}"] = form
        else:
            table[form.replace("'", "")] = form
    table.update({"shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "twas": "'twas",
                  "somebody'd": "somebodyd", "y'allll": "y'all'll", "hed've": "he'd've", "he'dve": "he'd've",
                  "wed've": "we'd've", "we'dve": "we'd've",
                  "yall'll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
                  "y'all'dve": "y'all'd've"})
    return table


CONTRACTIONS: dict[str, str] = _contractions()

# The official pattern: its (?!<=\d) is a look-ahead (a typo for a look-behind), so any "." not before a digit.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")


def strip_punctuation(text: str) -> str:
    """The official ``processPunctuation``: each mark is deleted when it touches a space (in the input) or
    the input has a digit-comma-digit group, else replaced by a space; then periods not before a digit
    are deleted (the official call passes ``re.UNICODE`` as the count, so at most 32 of them)."""
    out = text
    digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=int(re.UNICODE))


def digits_and_articles(text: str) -> str:
    """The official ``processDigitArticle``: lower-cased words, number words as digits, articles dropped,
    contractions fixed, joined by single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """An answer as the official script compares it when annotators disagree (see the module docstring)."""
    return digits_and_articles(strip_punctuation(_clean(text)))


def vqa_accuracy(answer: str, annotator_answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one predicted answer against the annotators' answers (ten in VQAv2): the mean over
    the leave-one-out subsets of ``min(#matching / 3, 1)``, normalised as the evaluation server does."""
    if not annotator_answers:
        raise ValueError("vqa_accuracy needs at least one annotator answer")
    gts = [_clean(a) for a in annotator_answers]
    answer = _clean(answer)
    if len(set(gts)) > 1:
        gts = [normalize_answer(a) for a in gts]
        answer = normalize_answer(answer)
    matches = [a.lower() == answer.lower() for a in gts]
    total = sum(matches)
    scores = [min(1.0, (total - m) / 3.0) for m in matches]
    return sum(scores) / len(scores)


def answer_vocabulary(annotations: Iterable[dict], size: int = 3129, field: str = "answers") -> list[str]:
    """The ``size`` most frequent normalised answers of training annotations (VQAv2 ``annotations``
    entries), most frequent first, ties alphabetical. ``field="answers"`` counts all ten annotator
    answers of each question, ``"multiple_choice_answer"`` the one consensus answer per question."""
    if field not in ("answers", "multiple_choice_answer"):
        raise ValueError(f"field is 'answers' or 'multiple_choice_answer', got {field!r}")
    counts: collections.Counter[str] = collections.Counter()
    for ann in annotations:
        if field == "answers":
            counts.update(normalize_answer(a["answer"]) for a in ann["answers"])
        else:
            counts[normalize_answer(ann["multiple_choice_answer"])] += 1
    counts.pop("", None)
    return sorted(counts, key=lambda a: (-counts[a], a))[:size]


def answer_scores(annotator_answers: Sequence[str], vocabulary: dict[str, int]) -> dict[int, float]:
    """Training targets: for every vocabulary answer some annotator gave, its leave-one-out accuracy
    (``min(#matching / 3, 1)`` averaged over the subsets that leave one annotator out), with every answer
    normalised, as ``{vocabulary index: score}``. Unlike the server, this normalises unanimous answers too,
    so a question all annotators answered "two" targets the vocabulary's "2"."""
    given = [normalize_answer(a) for a in annotator_answers]
    out: dict[int, float] = {}
    for candidate in set(given):
        if candidate in vocabulary:
            n, m = given.count(candidate), len(given)
            out[vocabulary[candidate]] = (n * min(1.0, (n - 1) / 3) + (m - n) * min(1.0, n / 3)) / m
    return out
