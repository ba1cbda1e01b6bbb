"""The evaluation progress report: batch observers see every batch with its pass's total, never change
the batches, and the report's lines say batches done / total and examples/s."""

import io

import numpy as np
import pytest

from vlfm.data.pipeline import HintedRows, build_dataset, eval_examples
from vlfm.evaluate.progress import ProgressReport, resolve_mode
from vlfm.evaluators.predict import eval_batches, observe_batches, predict_all


def _rows(n):
    return [(i, {"x": np.full(2, i, np.int32)}) for i in range(n)]


def _batches(rows, batch_size):
    return [(dict(b), i.copy()) for b, i in eval_batches(rows, batch_size)]


def test_observers_see_each_batch_with_the_total_and_leave_the_batches_alone():
    plain = _batches(_rows(10), 4)
    seen = []
    with observe_batches(lambda *a: seen.append(a)):
        hinted = _batches(HintedRows(lambda: iter(_rows(10)), 10), 4)
        unsized = _batches((r for r in _rows(10)), 4)  # a generator: no total
    assert seen == [(1, 3, 4), (2, 3, 8), (3, 3, 10), (1, None, 4), (2, None, 8), (3, None, 10)]
    for got in (hinted, unsized):
        assert len(got) == len(plain)
        for (b, i), (pb, pi) in zip(got, plain):
            np.testing.assert_array_equal(b["x"], pb["x"])
            np.testing.assert_array_equal(i, pi)
    with observe_batches(lambda *a: seen.append(a)):  # predict_all's rows carry their count
        predict_all(lambda p, b: b["x"], None, {"x": np.zeros((5, 2))}, batch_size=2)
    assert seen[-3:] == [(1, 3, 2), (2, 3, 4), (3, 3, 5)]
    seen.clear()
    _batches(_rows(3), 2)  # outside the context nobody is told
    assert seen == []


def test_eval_examples_hint_the_rows_each_host_reads():
    bundle = build_dataset(dict(name="shapes", num_examples=64, image_size=16, max_len=12), "validation")
    for limit, p, count in ((13, 0, 3), (13, 2, 3), (None, 0, 1)):
        rows = eval_examples(bundle, limit, process_index=p, process_count=count)
        got = sum(1 for _ in rows)
        assert rows.__length_hint__() == got, (limit, p, count)
    assert sum(1 for _ in rows) == got  # each iteration starts afresh


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_log_lines_give_batches_examples_per_second_and_eta():
    out, clock = io.StringIO(), _Clock()
    report = ProgressReport("log", stream=out, every=10, clock=clock)
    with report.evaluator("coco5k", 1, 2):
        for done in range(1, 5):
            clock.now += 2.0  # 2 s per batch of 8
            report(done, 4, 8 * done)
        clock.now += 1.0
        report(1, None, 3)  # a second pass of unknown length
    lines = out.getvalue().splitlines()
    assert lines[0] == "eval coco5k (1/2): 1/4 batches, 8 examples, 4.0 examples/s, 2s elapsed, ETA 6s"
    assert lines[1] == "eval coco5k (1/2): 4/4 batches, 32 examples, 4.0 examples/s, 8s"  # the end of a pass
    assert lines[2] == "eval coco5k (1/2): 1 batches, 3 examples, 3.0 examples/s, 1s"
    assert len(lines) == 3  # batches 2 and 3 came within `every` seconds of the last line


def test_bar_redraws_one_line_and_off_writes_nothing():
    out, clock = io.StringIO(), _Clock()
    report = ProgressReport("bar", stream=out, clock=clock, width=4)
    with report.evaluator("probe", 2, 2):
        for done in (1, 2):
            clock.now += 1.0
            report(done, 2, 10 * done)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert "\reval probe (2/2): [##..] 1/2 batches" in text and "[####] 2/2 batches, 20 examples" in text
    quiet = io.StringIO()
    off = ProgressReport("off", stream=quiet)
    off(1, 2, 10)
    assert quiet.getvalue() == ""
    assert resolve_mode("auto", io.StringIO()) == "off"  # not a terminal
    with pytest.raises(ValueError, match="valid: auto, bar, log, off"):
        resolve_mode("verbose", io.StringIO())
