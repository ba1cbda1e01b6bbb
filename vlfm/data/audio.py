"""Audio for the data workers: decoding, resampling, Kaldi-compatible log-mel filterbanks, SpecAugment.

The features are those of AST and PolyViT (Gong et al. 2021; Likhosherstov et al. 2022): Kaldi's
``fbank`` at 16 kHz with 25 ms frames every 10 ms (snipped edges, no dither), DC offset removed,
pre-emphasis 0.97, a Hann window (Kaldi's ``hanning``: symmetric), a 512-point power spectrum, 128
triangular filters on Kaldi's mel scale (``1127 ln(1 + f / 700)``) from 20 Hz to Nyquist, and the
natural log floored at float32's epsilon. ``tests/test_audio.py`` checks them against HF's
``ASTFeatureExtractor``.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from vlfm.data.bad_data import BAD_VALUE, CORRUPT_AUDIO, SHORT_CLIP, BadData
from vlfm.data.preprocess import FIELDS, Field

AUDIOSET_MEAN_STD = (-4.2677393, 4.5689974)  # AST's normalisation statistics of AudioSet fbanks
LOG_FLOOR = float(np.finfo(np.float32).eps)
WINDOWS = ("hann", "povey", "hamming", "rectangular")


def kaldi_mel(freq: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(freq, np.float64) / 700.0)


@functools.cache
def mel_filters(num_mel_bins: int, fft_size: int, sample_rate: int, low_freq: float = 20.0,
                high_freq: float | None = None) -> np.ndarray:
    """``[fft_size // 2 + 1, num_mel_bins]``: Kaldi's triangles, built in mel space over the FFT bins'
    frequencies (the Nyquist bin never falls inside one)."""
    high = sample_rate / 2 if high_freq is None or high_freq <= 0 else high_freq
    if not 0 <= low_freq < high <= sample_rate / 2:
        raise ValueError(f"mel range must satisfy 0 <= low_freq < high_freq <= {sample_rate / 2}, got {low_freq}, {high}")
    lo, hi = kaldi_mel(low_freq), kaldi_mel(high)
    delta = (hi - lo) / (num_mel_bins + 1)
    left = lo + delta * np.arange(num_mel_bins)
    centre, right = left + delta, left + 2 * delta
    mel = kaldi_mel(np.arange(fft_size // 2 + 1) * sample_rate / fft_size)[:, None]
    rising = (mel - left) / (centre - left)
    falling = (right - mel) / (right - centre)
    return np.where((mel > left) & (mel < right), np.where(mel <= centre, rising, falling), 0.0)


@functools.cache
def _window(kind: str, length: int) -> np.ndarray:
    n = np.arange(length)
    if kind == "hann":
        return 0.5 - 0.5 * np.cos(2 * np.pi * n / (length - 1))
    if kind == "povey":
        return (0.5 - 0.5 * np.cos(2 * np.pi * n / (length - 1))) ** 0.85
    if kind == "hamming":
        return 0.54 - 0.46 * np.cos(2 * np.pi * n / (length - 1))
    if kind == "rectangular":
        return np.ones(length)
    raise ValueError(f"unknown window {kind!r}; valid: {', '.join(WINDOWS)}")


def log_mel_fbank(waveform: np.ndarray, sample_rate: int = 16000, num_mel_bins: int = 128,
                  frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0, window: str = "hann",
                  preemphasis: float = 0.97, low_freq: float = 20.0, high_freq: float | None = None,
                  remove_dc_offset: bool = True) -> np.ndarray:
    """Mono ``waveform`` -> ``[frames, num_mel_bins]`` float32 log-mel energies (Kaldi ``fbank``,
    ``snip_edges``: ``1 + (len - frame_length) // frame_shift`` frames)."""
    x = np.asarray(waveform, np.float64)
    if x.ndim != 1:
        raise ValueError(f"log_mel_fbank takes a mono waveform [samples], got shape {x.shape}")
    length = int(round(sample_rate * frame_length_ms / 1000))
    shift = int(round(sample_rate * frame_shift_ms / 1000))
    if x.shape[0] < length:
        raise ValueError(f"{x.shape[0]} samples is shorter than one {frame_length_ms} ms frame ({length} samples)")
    frames = np.lib.stride_tricks.sliding_window_view(x, length)[::shift].copy()
    if remove_dc_offset:
        frames -= frames.mean(axis=1, keepdims=True)
    if preemphasis:
        frames[:, 1:] -= preemphasis * frames[:, :-1]
        frames[:, 0] -= preemphasis * frames[:, 0]
    frames *= _window(window, length)
    fft_size = 1 << (length - 1).bit_length()
    power = np.abs(np.fft.rfft(frames, n=fft_size)) ** 2
    energies = power @ mel_filters(num_mel_bins, fft_size, sample_rate, low_freq, high_freq)
    return np.log(np.maximum(energies, LOG_FLOOR)).astype(np.float32)


def fit_frames(features: np.ndarray, num_frames: int) -> np.ndarray:
    """Truncated or zero-padded at the end to ``num_frames`` (as AST pads its 10 s clips)."""
    if features.shape[0] >= num_frames:
        return features[:num_frames]
    return np.pad(features, ((0, num_frames - features.shape[0]), (0, 0)))


def spec_augment(features: np.ndarray, rng: np.random.Generator, freq_masks: int = 1, max_freq_width: int = 48,
                 time_masks: int = 1, max_time_width: int = 192, fill: float = 0.0) -> np.ndarray:
    """SpecAugment's frequency and time masking (Park et al. 2019; AST's setting: one mask of up to 48
    mel bins, one of up to 192 frames): each mask covers ``[start, start + width)`` with ``width``
    uniform in ``[0, max]`` and is set to ``fill``. Returns a masked copy."""
    out = np.array(features, copy=True)
    for axis, count, max_width in ((1, freq_masks, max_freq_width), (0, time_masks, max_time_width)):
        size = out.shape[axis]
        for _ in range(count):
            width = int(rng.integers(0, min(max_width, size) + 1))
            start = int(rng.integers(0, size - width + 1))
            index = [slice(None), slice(None)]
            index[axis] = slice(start, start + width)
            out[tuple(index)] = fill
    return out


def resample(waveform: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy's ``resample_poly``, a Kaiser-windowed FIR) to ``target_rate``."""
    if rate == target_rate:
        return np.asarray(waveform, np.float32)
    from scipy.signal import resample_poly

    g = np.gcd(int(rate), int(target_rate))
    return resample_poly(np.asarray(waveform, np.float64), target_rate // g, rate // g).astype(np.float32)


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Encoded audio (WAV, FLAC, OGG, ... through ``soundfile``) -> (mono float32 in [-1, 1], rate);
    channels are averaged. Raises on undecodable bytes (the caller turns that into bad data)."""
    import soundfile  # optional dependency: the ``audio`` extra

    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples.mean(axis=1), int(rate)


def audio_features(waveform: np.ndarray, rate: int, spec: Mapping[str, Any]) -> np.ndarray:
    """A waveform at ``rate`` -> normalised ``[num_frames, num_mel_bins]`` features per ``spec`` (the
    audio field's settings: ``sample_rate``, ``num_mel_bins``, ``num_frames``, ``window``, ``mean_std``)."""
    x = resample(waveform, rate, spec["sample_rate"])
    features = log_mel_fbank(x, spec["sample_rate"], spec["num_mel_bins"], window=spec.get("window", "hann"))
    features = fit_frames(features, spec["num_frames"])
    mean, std = spec.get("mean_std", AUDIOSET_MEAN_STD)
    return ((features - mean) / (2 * std)).astype(np.float32)  # AST divides by twice the std


@FIELDS.register("audio")
class AudioField(Field):
    """Encoded audio (``KEY.wav`` / ``KEY.flac``) or a waveform array -> ``audio`` ``[num_frames,
    num_mel_bins]`` float32: resampled to ``sample_rate``, log-mel filterbank, cut or zero-padded to
    ``num_frames``, normalised as AST (``(x - mean) / (2 std)``, AudioSet statistics by default).

    Arrays (e.g. a TFDS ``Audio`` feature) are taken at ``source_rate`` (default ``sample_rate``); int16
    samples are scaled to [-1, 1]. In training, ``spec_augment`` (kwargs of ``spec_augment``, e.g.
    ``{}`` for AST's one frequency and one time mask) masks the normalised features. Undecodable bytes are
    ``corrupt_audio`` and a clip shorter than one frame ``short_clip``: skipped and counted.
    """

    def __init__(self, key: str = "wav;flac;audio", train: bool = False, sample_rate: int = 16000,
                 num_mel_bins: int = 128, num_frames: int = 1024, window: str = "hann",
                 mean_std: tuple[float, float] = AUDIOSET_MEAN_STD, source_rate: int | None = None,
                 spec_augment: Mapping[str, Any] | None = None):
        super().__init__(key, train)
        _window(window, 2)  # an unknown window fails here, not in every worker
        self.spec = dict(sample_rate=sample_rate, num_mel_bins=num_mel_bins, num_frames=num_frames, window=window,
                         mean_std=tuple(mean_std))
        self.source_rate = source_rate or sample_rate
        self.augment = dict(spec_augment) if spec_augment is not None and train else None

    def process(self, raw: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if isinstance(raw, (bytes, bytearray)):
            try:
                waveform, rate = decode_audio(bytes(raw))
            except (RuntimeError, ValueError, TypeError) as e:  # soundfile raises its own LibsndfileError and RuntimeError subclasses
                raise BadData(CORRUPT_AUDIO, f"{type(e).__name__}: {e}") from None
        elif isinstance(raw, np.ndarray):
            waveform, rate = raw.astype(np.float32), self.source_rate
            if raw.dtype == np.int16:
                waveform = waveform / 32768.0
            if waveform.ndim == 2:  # [samples, channels]
                waveform = waveform.mean(axis=1)
        else:
            raise BadData(BAD_VALUE, f"audio is a {type(raw).__name__}, not bytes or an array")
        frame = int(round(rate * 0.025))
        if waveform.shape[0] < frame:
            raise BadData(SHORT_CLIP, f"{waveform.shape[0]} samples at {rate} Hz: shorter than one 25 ms frame")
        features = audio_features(waveform, rate, self.spec)
        if self.augment is not None:
            features = spec_augment(features, rng, **self.augment)
        return {"audio": features}
