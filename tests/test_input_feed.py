"""The train loop's input side: data-wait reporting."""

import logging

from vlfm.train.input_feed import DataWait


def test_data_wait_reports_per_step_and_fraction_and_warns_once(caplog):
    wait = DataWait(threshold=0.5)
    wait.add(0.3)
    wait.add(0.1)
    with caplog.at_level(logging.WARNING, logger="vlfm"):
        assert wait.report(steps=4, elapsed=2.0) == {"data_wait_s": 0.1, "data_wait_fraction": 0.2}
        assert not caplog.records  # 20%: not input-bound
        wait.reset()
        wait.add(1.5)
        assert wait.report(steps=2, elapsed=2.0)["data_wait_fraction"] == 0.75
        wait.reset()
        wait.add(1.8)
        wait.report(steps=2, elapsed=2.0)
    assert [r.getMessage()[:12] for r in caplog.records] == ["input-bound:"]  # once, at the first such interval
