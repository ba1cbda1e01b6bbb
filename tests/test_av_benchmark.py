"""The video / audio throughput benchmark runs on tiny settings and its worker count follows from its
own figures."""

import importlib.util
import json
import math
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_av_throughput_prints_rates_and_workers(capsys):
    pytest.importorskip("av")
    pytest.importorskip("soundfile")
    spec = importlib.util.spec_from_file_location("av_throughput", os.path.join(REPO, "benchmarks", "av_throughput.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--clips", "2", "--seconds", "0.5", "--video_size", "64", "--crop", "32", "--frames", "4",
                "--max_stride", "2", "--measure_s", "0.1", "--source_rate", "22050"])
    result = json.loads(capsys.readouterr().out)
    for kind in ("video", "audio"):
        r = result[kind]
        assert r["examples_per_core_s"] > 0 and r["examples_measured"] >= 2
        assert r["workers_per_gpu"] == math.ceil(r["gpu_examples_per_s"] / r["examples_per_core_s"])
        assert r["gpu_examples_per_s"] == pytest.approx(0.45 * 989e12 / (r["train_gflops_per_example"] * 1e9),
                                                        rel=1e-2)
    assert result["video"]["decoded_frames_per_clip"] == 12  # 0.5 s at 25 fps
    assert result["video"]["examples_per_core_s_every_frame_decoded_and_converted"] > 0
    assert set(result["audio"]["stages_cpu_ms"]) == {"decode", "resample", "fbank", "spec_augment"}
    # AST-B reads 1,212 patches + 2 prefix tokens: its 12 layers alone are ~0.78 TFLOP per trained example
    assert 700 < result["audio"]["train_gflops_per_example"] < 850
