"""Evaluators read each host's share of a split in fixed-size padded batches and gather the outputs;
predict functions return pytrees of any dtype; ties in retrieval count against the model; multi-task
evals name their data."""

import ml_collections
import numpy as np
import pytest

from vlfm.data.pipeline import build_dataset, eval_arrays, eval_examples
from vlfm.evaluators import EVALUATORS
from vlfm.evaluators.predict import eval_batches, predict_all, predict_split
from vlfm.evaluators.retrieval import recall_at_k
from vlfm.train.config import base_config
from vlfm.train.evaluation import build_evaluators, eval_data
from vlfm.train.schema import eval_schema, validate

SHAPES = dict(name="shapes", num_examples=64, image_size=16, max_len=12)


def test_ties_count_against_the_model():
    """A collapsed model (every similarity equal) ranks every correct column last, not first."""
    assert recall_at_k(np.ones((20, 20))) == {"r1": 0.0, "r5": 0.0, "r10": 0.0}
    sim = np.eye(4)
    sim[0, 1] = 1.0  # row 0: the correct column ties with one other -> rank 1
    assert recall_at_k(sim, ks=(1, 2)) == {"r1": 0.75, "r2": 1.0}
    assert recall_at_k(np.eye(30) + 0.5)["r1"] == 1.0  # no ties: unchanged


def test_eval_batches_pad_to_one_shape_and_mark_padding():
    rows = [(i, {"x": np.full(3, i, np.int32)}) for i in range(10)]
    batches = list(eval_batches(rows, batch_size=4))
    assert len(batches) == 3 and all(b["x"].shape == (4, 3) for b, _ in batches)
    np.testing.assert_array_equal(batches[-1][1], [8, 9, -1, -1])
    np.testing.assert_array_equal(batches[-1][0]["x"][:, 0], [8, 9, 9, 9])  # padding repeats the last row


def test_predict_outputs_keep_dtype_and_structure_and_drop_padding():
    """Token ids stay integers (they used to come back as float32); any pytree of per-row arrays works."""
    arrays = {"text": np.arange(10 * 3, dtype=np.int32).reshape(10, 3)}
    out = predict_all(lambda p, b: {"ids": b["text"] + p, "first": (b["text"][:, 0] > 5, b["text"][:, 0] * 0.5)},
                      7, arrays, batch_size=4)
    assert out["ids"].dtype == np.int32 and out["first"][0].dtype == np.bool_
    np.testing.assert_array_equal(out["ids"], arrays["text"] + 7)
    np.testing.assert_array_equal(out["first"][1], arrays["text"][:, 0] * 0.5)


def test_host_shares_cover_the_split_once_and_gather_in_order():
    """Host p of P reads examples p, p + P, ... and its share of num_examples; their union in index order is
    what one host reads, so gathered results equal a one-host evaluation."""
    bundle = build_dataset(SHAPES, "validation")
    whole = eval_arrays(bundle, 13)
    shares = [list(eval_examples(bundle, 13, process_index=p, process_count=3)) for p in range(3)]
    assert [len(s) for s in shares] == [5, 4, 4]
    rows = sorted((i, e) for share in shares for i, e in share)
    assert [i for i, _ in rows] == list(range(13))
    np.testing.assert_array_equal(np.stack([e["text"] for _, e in rows]), whole["text"])
    np.testing.assert_array_equal(np.stack([e["image"] for _, e in rows]), whole["image"])


def test_evaluators_do_not_hold_the_split():
    """An evaluator keeps no arrays of the split between runs; each run streams it again."""
    ev = EVALUATORS.get("retrieval")({"encode_image": None, "encode_text": None}, data=SHAPES, num_examples=32)
    assert not [k for k, v in vars(ev).items() if isinstance(v, (np.ndarray, dict))]


def test_streamed_classification_equals_the_whole_split_at_once():
    """Classification over padded batches of 16 equals argmax over the whole split in memory."""
    data = dict(SHAPES, view="image_label")
    arrays = eval_arrays(build_dataset(data, "validation"), 50)
    w = np.random.default_rng(0).normal(size=(16 * 16 * 3, 56))
    logits = lambda p, b: b["image"].reshape(len(b["image"]), -1) @ w  # noqa: E731
    got = dict(EVALUATORS.get("classification")({"logits": logits}, data=data, num_examples=50,
                                                batch_size=16).run(None))
    assert got["accuracy"] == pytest.approx(np.mean(np.argmax(logits(None, arrays), -1) == arrays["label"]))
    seen = predict_split({"label": lambda p, b: b["label"]}, None,
                         eval_examples(build_dataset(data, "validation"), 50), 16)["label"]
    np.testing.assert_array_equal(seen, arrays["label"])


def _multitask_config(evals):
    c = base_config()
    c.tasks = ml_collections.ConfigDict(dict(
        image=dict(data=dict(name="shapes", view="image_label", batch_size=8), losses=dict(softmax_xent={})),
        text=dict(data=dict(name="shapes_text", batch_size=8), losses=dict(mlm={}))))
    c.evals = ml_collections.ConfigDict(evals)
    return c


def test_multitask_eval_without_data_fails_instead_of_using_config_data():
    """config.data is the built-in shapes set even in multi-task runs; evaluating on it silently was wrong."""
    c = _multitask_config(dict(acc=dict(type="classification", num_examples=8)))
    with pytest.raises(KeyError, match=r"several tasks.*data='task:NAME' with NAME one of image, text"):
        build_evaluators(c, {"logits": None})
    assert eval_data(c, "acc", "task:image") == dict(c.tasks.image.data)
    with pytest.raises(KeyError, match="names no task; valid tasks: image, text"):
        eval_data(c, "acc", "task:audio")
    with pytest.raises(ValueError, match="neither a data config nor"):
        eval_data(c, "acc", "shapes")
    single = base_config()
    assert eval_data(single, "acc", None) == dict(single.data)


def test_multitask_eval_reads_a_task_data_by_name():
    c = _multitask_config(dict(acc=dict(type="classification", data="task:image", num_examples=8)))
    # The schema accepts the "task:NAME" string where a data section may stand.
    validate(c.evals.acc, eval_schema("acc", c.evals.acc, "evals.acc"))
    (ev, every), = build_evaluators(c, {"logits": None}).values()
    assert ev.bundle.info["name"] == "shapes" and every is None


def test_unknown_eval_names_list_the_valid_ones():
    c = base_config()
    c.evals = ml_collections.ConfigDict(dict(retrieval=dict(num_examples=8)))
    with pytest.raises(KeyError, match="unknown evals \\['retrievl'\\]; the config's evals: retrieval"):
        build_evaluators(c, {}, names=["retrievl"])
