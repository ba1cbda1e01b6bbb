"""Caption scorers against pycocoevalcap 1.2 on fixed caption sets."""

import pytest

from vlfm.evaluators import caption_metrics as cm

REFS = {
    "a": ["a red circle above a blue square", "a blue square below a red circle", "red circle"],
    "b": ["two green triangles", "a pair of green triangles side by side"],
    "c": ["a yellow star", "yellow star in the corner", "the star is yellow", "a star"],
    "d": ["one small white dot", "a white dot"],
}
HYPS = {"a": ["a red circle"], "b": ["green green green triangles triangles"],
        "c": ["a yellow star in the corner of the image"], "d": ["purple hexagon"]}


def test_tokenize():
    assert cm.tokenize("A Red, circle!  Above.") == "a red circle above"


def test_perfect_match_scores_one():
    refs = {"x": ["a b c d e"], "y": ["f g h i j"]}
    assert cm.bleu(refs, refs) == pytest.approx([1.0] * 4)


@pytest.mark.parity
def test_parity_with_pycocoevalcap():
    bleu_mod = pytest.importorskip("pycocoevalcap.bleu.bleu")
    cider_mod = pytest.importorskip("pycocoevalcap.cider.cider")
    want_bleu, _ = bleu_mod.Bleu(4).compute_score(REFS, HYPS)
    assert cm.bleu(REFS, HYPS) == pytest.approx(want_bleu, abs=1e-9)
    want_cider, want_each = cider_mod.Cider().compute_score(REFS, HYPS)
    got, each = cm.cider_d(REFS, HYPS)
    assert got == pytest.approx(want_cider, abs=1e-9)
    assert list(each) == pytest.approx(list(want_each), abs=1e-9)


def test_reference_captions_first_is_the_example_caption():
    from vlfm.data import shapes

    data = shapes.generate("train", num_examples=4, image_size=16)
    for k in range(4):
        refs = shapes.reference_captions("train", k, 5)
        assert len(refs) == 5 and refs[0] == data["caption"][k]
        assert refs == shapes.reference_captions("train", k, 5)
