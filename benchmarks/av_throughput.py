"""Measures the video and audio input pipelines per core and prints JSON, with the data workers a GPU
step needs.

    python benchmarks/av_throughput.py [--clips 8] [--seconds 10] [--video_size 256] [--codec libx264] [--video_kbps 0]
        [--frames 8] [--max_stride 8] [--crop 224] [--source_rate 44100] [--audio_format FLAC]
        [--measure_s 10] [--peak_tflops 989] [--mfu 0.45]

Clips are generated (no download) and encoded in memory: videos of ``--seconds`` at 25 fps,
``--video_size`` square frames (Kinetics' short side), moving shapes over a textured, drifting, noisy
background, H.264 (``--codec``); audio clips of ``--seconds`` at ``--source_rate`` (AudioSet's 10 s
clips come at 44.1 / 48 kHz), a tone with harmonics and noise, FLAC. Each is then run through the
data workers' own fields, one example at a time, in this process:

- video: the ``video`` field in training mode: ``--frames`` frames at a random stride up to
  ``--max_stride`` from a random start, PyAV decoding up to the last of them and converting them to
  RGB, the image field's random-resized crop to ``--crop`` and flip (and, for comparison, the same
  with every frame of the clip decoded and converted first);
- audio: the ``audio`` field in training mode: soundfile decode, resampling to 16 kHz, 128-bin Kaldi
  fbank over 1024 frames (AST / PolyViT), SpecAugment (one mask of up to 48 bins, one of up to 192 frames).

Rates are examples per CPU second of this process (``time.process_time``: all its threads, so a
decoder's own threads count, and other jobs on the machine do not distort it): what one worker core
does. ``cpu_ms`` (video) and ``stages_cpu_ms`` (audio) split the CPU time per example.

How many workers a GPU step needs: no GPU is measured here. The step's examples/s is derived from the
model's traced training FLOPs per example (``vlfm.core.flops``: forward matmuls x 3, as the trainer
counts them) at ``--mfu`` of ``--peak_tflops`` (defaults: 45% of 989 TFLOP/s, the H100 / H200 dense
bf16 peak: the MFU this project targets for CLIP B/16): TimeSformer-B/16 (divided attention, the
``--frames`` x ``--crop`` clip) for video and AST-B (1024 x 128 features, 16 x 16 patches every 10)
for audio. ``workers_per_gpu`` = that rate over the per-core rate, rounded up.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from typing import Any

import numpy as np

VIDEO_FPS = 25


def _video_frames(index: int, seconds: float, size: int) -> np.ndarray:
    """``[frames, size, size, 3]`` uint8: two shapes moving over a textured background that drifts, with
    sensor-like noise (so the encoder cannot skip most of each frame, as with real footage)."""
    from vlfm.data import shapes

    rng = np.random.default_rng(index)
    n = int(seconds * VIDEO_FPS)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    texture = rng.uniform(0, 255, (size // 8 + 2, size // 8 + 2, 3)).astype(np.float32)
    out = np.empty((n, size, size, 3), np.uint8)
    paths = rng.uniform(0.15, 0.85, (2, 2)), rng.uniform(-0.3, 0.3, (2, 2))
    for t in range(n):
        shift = int(t * 0.8)  # the background pans
        frame = np.kron(np.roll(texture, shift // 8, axis=1), np.ones((8, 8, 1), np.float32))[:size, :size]
        frame = 0.6 * frame + 0.4 * (128 + 100 * np.sin((xx + 2 * t) / 23.0)[..., None])
        for k in range(2):
            cx, cy = (paths[0][k] + paths[1][k] * t / n) * size
            shapes.draw(frame, shapes.SHAPES[k], shapes.COLOR_RGB[k], cx, cy, 0.12 * size)
        frame += rng.normal(0, 4, frame.shape)
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def encode_audio(index: int, seconds: float, rate: int, fmt: str) -> bytes:
    import soundfile

    rng = np.random.default_rng(index)
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(150, 1500)
    wave = sum(rng.uniform(0.05, 0.3) / k * np.sin(2 * np.pi * k * f0 * t * (1 + 0.05 * np.sin(t))) for k in (1, 2, 3))
    wave = wave + rng.uniform(0.01, 0.1) * rng.standard_normal(t.shape[0])
    buf = io.BytesIO()
    soundfile.write(buf, np.clip(wave, -1, 1).astype(np.float32), rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def _cpu_rate(fn, items: list, measure_s: float) -> tuple[float, int]:
    """Examples per CPU second of ``fn`` cycling over ``items`` (one warm-up call), and how many ran."""
    fn(items[0])
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < measure_s or done < len(items):
        fn(items[done % len(items)])
        done += 1
    return done / max(time.process_time() - cpu, 1e-9), done


def video_rate(clips: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    from vlfm.data.video import VideoField, decode_frames, decode_video

    field = VideoField(train=True, num_frames=args.frames, max_stride=args.max_stride,
                       image=dict(size=args.crop, flip=True, scale=(0.5, 1.0)))
    rng = np.random.default_rng(0)
    rate, done = _cpu_rate(lambda c: field.process(c, rng), clips, args.measure_s)
    cpu = time.process_time()
    for c in clips:
        decode_frames(c)
    decode_ms = 1e3 * (time.process_time() - cpu) / len(clips)
    # For comparison: every frame decoded and converted to RGB first (what the field did before it
    # stopped at the last sampled frame and converted only the sampled ones), then sampled and preprocessed.
    everything = lambda c: field.process(decode_video(c), rng)  # noqa: E731
    all_rate, _ = _cpu_rate(everything, clips, min(args.measure_s, 2.0))
    return {"examples_per_core_s": round(rate, 2), "examples_measured": done,
            "cpu_ms": {"per_example": round(1e3 / rate, 1), "decoding_every_frame": round(decode_ms, 1)},
            "examples_per_core_s_every_frame_decoded_and_converted": round(all_rate, 2),
            "mean_clip_kb": round(sum(map(len, clips)) / len(clips) / 1024, 1),
            "decoded_frames_per_clip": len(decode_frames(clips[0]))}


def audio_rate(clips: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    from vlfm.data.audio import AudioField, decode_audio, fit_frames, log_mel_fbank, resample, spec_augment

    field = AudioField(train=True, sample_rate=16000, num_mel_bins=128, num_frames=1024, spec_augment={})
    rng = np.random.default_rng(0)
    rate, done = _cpu_rate(lambda c: field.process(c, rng), clips, args.measure_s)
    stages = {"decode": 0.0, "resample": 0.0, "fbank": 0.0, "spec_augment": 0.0}
    for c in clips:
        t0 = time.process_time()
        wave, sr = decode_audio(c)
        t1 = time.process_time()
        x = resample(wave, sr, 16000)
        t2 = time.process_time()
        features = fit_frames(log_mel_fbank(x, 16000, 128), 1024)
        t3 = time.process_time()
        spec_augment(features, rng)
        t4 = time.process_time()
        for name, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[name] += seconds / len(clips)
    return {"examples_per_core_s": round(rate, 2), "examples_measured": done,
            "stages_cpu_ms": {k: round(1e3 * v, 2) for k, v in stages.items()},
            "mean_clip_kb": round(sum(map(len, clips)) / len(clips) / 1024, 1)}


def train_flops_per_example(model_cfg: dict, batch: dict) -> float:
    """The trainer's count: traced forward matmul / convolution FLOPs x 3, for one example."""
    import jax

    from vlfm.core.flops import TRAIN_FACTOR, traced_flops
    from vlfm.models import build_model

    model = build_model(model_cfg)
    variables = jax.eval_shape(model.init, jax.random.key(0), batch)
    return TRAIN_FACTOR * traced_flops(lambda v, b: model.apply(v, b), variables, batch)


def gpu_demand(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    base = dict(width=768, depth=12, num_heads=12, mlp_dim=3072, scan=True, pool="cls")
    models = {
        "video": ("TimeSformer-B/16, divided attention", dict(
            name="image_classifier", input_key="video", image=dict(
                base, name="video_vit", image_size=args.crop, patch_size=16, tubelet_size=1, attention_type="divided",
                pos_embedding="space_time", num_frames=args.frames, num_classes=400)),
            {"video": jax.ShapeDtypeStruct((1, args.frames, args.crop, args.crop, 3), jnp.float32)}),
        "audio": ("AST-B (patch 16, strides 10)", dict(
            name="image_classifier", input_key="audio", image=dict(
                base, name="spectrogram_vit", patch_size=16, frequency_stride=10, time_stride=10, pool="prefix",
                num_classes=527)),
            {"audio": jax.ShapeDtypeStruct((1, 1024, 128), jnp.float32)}),
    }
    out = {}
    for kind, (label, cfg, batch) in models.items():
        flops = train_flops_per_example(cfg, batch)
        per_s = args.mfu * args.peak_tflops * 1e12 / flops
        out[kind] = {"model": label, "train_gflops_per_example": round(flops / 1e9, 1),
                     "gpu_examples_per_s": round(per_s, 1),
                     "step_ms_at_batch_32": round(1e3 * 32 / per_s, 1)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=8, help="generated clips of each kind")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--video_size", type=int, default=256)
    parser.add_argument("--codec", default="libx264")
    parser.add_argument("--video_kbps", type=int, default=0, help="video bit rate (0: the codec's default quality)")
    parser.add_argument("--frames", type=int, default=8, help="frames per training clip")
    parser.add_argument("--max_stride", type=int, default=8)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--source_rate", type=int, default=44100)
    parser.add_argument("--audio_format", default="FLAC")
    parser.add_argument("--measure_s", type=float, default=10.0, help="CPU-rate measurement per kind (wall s)")
    parser.add_argument("--peak_tflops", type=float, default=989.0)
    parser.add_argument("--mfu", type=float, default=0.45)
    args = parser.parse_args(argv)
    from vlfm.data.video import encode_video

    videos = [encode_video(_video_frames(i, args.seconds, args.video_size), VIDEO_FPS, "mp4", args.codec,
                           bit_rate=args.video_kbps * 1000)
              for i in range(args.clips)]
    audio = [encode_audio(i, args.seconds, args.source_rate, args.audio_format) for i in range(args.clips)]
    settings = ("clips", "seconds", "video_size", "codec", "video_kbps", "frames", "max_stride", "crop", "source_rate",
                "audio_format")
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2), "settings": {k: getattr(args, k) for k in settings},
        "video": video_rate(videos, args), "audio": audio_rate(audio, args),
        "assumed_gpu": {"peak_tflops": args.peak_tflops, "mfu": args.mfu}}
    demand = gpu_demand(args)
    for kind in ("video", "audio"):
        need = demand[kind]["gpu_examples_per_s"] / result[kind]["examples_per_core_s"]
        result[kind].update(demand[kind], workers_per_gpu=math.ceil(need))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
