"""Run files go through one filesystem layer (etils.epath): a ``gs://`` workdir gets its metrics.jsonl and
TensorBoard event files in the bucket, next to orbax's checkpoints, and nothing lands in a local folder
named like the URL. The bucket is faked with fsspec's in-memory filesystem behind epath."""

import json
import os

from fsspec.implementations.memory import MemoryFileSystem
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from tensorboardX.proto import event_pb2

from vlfm.core.metrics_writer import MetricWriter


@pytest.fixture
def fake_gcs(monkeypatch, tmp_path):
    fs = MemoryFileSystem()
    monkeypatch.setattr(fs, "store", {})
    monkeypatch.setattr(fs, "pseudo_dirs", [""])
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # epath's fsspec backend, whatever is installed
    monkeypatch.setattr(epath_backend.fsspec_backend, "_get_filesystem", lambda name: fs)
    monkeypatch.chdir(tmp_path)  # a local folder named like the URL would appear here
    return fs


def _event_files() -> list:
    return [p for p in epath.Path("gs://bucket/run/tensorboard").iterdir() if p.name.startswith("events.out.tfevents.")]


def test_remote_workdir_writes_metrics_and_events_to_the_bucket(fake_gcs, tmp_path):
    writer = MetricWriter("gs://bucket/run", enabled=True)
    writer.write(1, {"train/loss": 2.0, "note": "not a number"})
    writer.write(2, {"train/loss": 1.5})
    writer.close()
    rows = [json.loads(line) for line in epath.Path("gs://bucket/run/metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "train/loss": 2.0}, {"step": 2, "train/loss": 1.5}]
    events = _event_files()
    assert len(events) == 1 and events[0].stat().length > 0
    assert os.listdir(tmp_path) == []

    # A resumed run keeps the earlier lines.
    writer = MetricWriter("gs://bucket/run", enabled=True)
    writer.write(3, {"train/loss": 1.0})
    writer.close()
    steps = [json.loads(line)["step"] for line in epath.Path("gs://bucket/run/metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_event_file_holds_the_scalars(fake_gcs):
    writer = MetricWriter("gs://bucket/run", enabled=True)
    writer.write(7, {"train/loss": 0.25})
    writer.close()
    (path,) = _event_files()
    data, values = path.read_bytes(), []
    while data:  # TFRecord framing: length (8), its crc (4), payload, payload crc (4)
        n = int.from_bytes(data[:8], "little")
        event = event_pb2.Event.FromString(data[12:12 + n])
        values += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
        data = data[16 + n:]
    assert values == [(7, "train/loss", 0.25)]


def test_local_workdir_appends(tmp_path):
    for step in (1, 2):
        writer = MetricWriter(tmp_path / "run", enabled=True)
        writer.write(step, {"loss": float(step)})
        writer.close()
    assert [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_unknown_url_scheme_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="unsupported URL scheme 'ftp'.*gs://"):
        MetricWriter("ftp://host/run", enabled=True)
    assert os.listdir(tmp_path) == []
