"""Audio in the data workers: Kaldi-compatible log-mel features (against HF's AST feature extractor),
SpecAugment, decoding with bad clips counted, and the built-in sounds."""

import io

import numpy as np
import pytest

from vlfm.data import build_dataset, sounds
from vlfm.data.audio import AudioField, audio_features, log_mel_fbank, mel_filters, spec_augment
from vlfm.data.bad_data import BadData

soundfile = pytest.importorskip("soundfile")


def _tone(hz, seconds=0.5, rate=16000, noise=0.01, seed=0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t) + noise * np.random.default_rng(seed).standard_normal(t.size)).astype(
        np.float32)


def _encoded(wave, rate, fmt):
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format=fmt)
    return buf.getvalue()


def _peak_bin(features):
    """The mel bin with the most energy in each frame."""
    return np.argmax(features, axis=-1)


def test_frames_and_mel_triangles():
    # 1 + (len - 400) // 160 frames (Kaldi's snip_edges), 128 bins.
    assert log_mel_fbank(np.zeros(16000, np.float32)).shape == (98, 128)
    filters = mel_filters(128, 512, 16000)
    assert filters.shape == (257, 128) and filters.min() >= 0 and filters.max() <= 1
    # The lowest triangles are narrower than the 31.25 Hz bin spacing: one of them holds no bin.
    assert np.flatnonzero(filters.sum(0) == 0).tolist() == [3]
    assert filters[-1].sum() == 0  # Nyquist lies on the last triangle's right edge
    # A 1 kHz tone peaks in the filter whose centre is nearest 1 kHz on Kaldi's mel scale.
    lo, hi = 1127 * np.log1p(20 / 700), 1127 * np.log1p(8000 / 700)
    centres = lo + (hi - lo) / 129 * np.arange(1, 129)
    want = int(np.argmin(np.abs(centres - 1127 * np.log1p(1000 / 700))))
    assert abs(int(np.median(_peak_bin(log_mel_fbank(_tone(1000))))) - want) <= 1
    with pytest.raises(ValueError, match="shorter than one 25.0 ms frame"):
        log_mel_fbank(np.zeros(399, np.float32))


@pytest.mark.parity
def test_same_features_as_hf_ast_feature_extractor():
    transformers = pytest.importorskip("transformers")
    wave = _tone(440, seconds=1.3, noise=0.05)
    with pytest.warns(UserWarning, match="mel filter has all zero values"):  # the same empty triangle
        hf = transformers.ASTFeatureExtractor(max_length=128)
    want = hf(wave, sampling_rate=16000, return_tensors="np")["input_values"][0]
    got = audio_features(wave, 16000, dict(sample_rate=16000, num_mel_bins=128, num_frames=128))
    assert got.shape == want.shape == (128, 128)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_spec_augment_masks_one_band_and_one_span():
    features = np.ones((50, 20), np.float32)
    out = spec_augment(features, np.random.default_rng(3), max_freq_width=6, max_time_width=10, fill=-1.0)
    assert (features == 1).all()  # a copy
    masked_cols = np.flatnonzero((out == -1).all(axis=0))
    masked_rows = np.flatnonzero((out == -1).all(axis=1))
    assert len(masked_cols) <= 6 and len(masked_rows) <= 10
    for idx in (masked_cols, masked_rows):  # each mask is one contiguous span
        assert len(idx) == 0 or (np.diff(idx) == 1).all()
    assert ((out == -1) == (np.isin(np.arange(20), masked_cols)[None] | np.isin(np.arange(50), masked_rows)[:, None])).all()


def test_audio_field_decodes_resamples_and_counts_bad_clips():
    spec = dict(sample_rate=16000, num_mel_bins=64, num_frames=40)
    field = AudioField(**spec)
    rng = np.random.default_rng(0)
    wave = _tone(500)
    for fmt in ("WAV", "FLAC"):
        got = field.process(_encoded(wave, 16000, fmt), rng)["audio"]
        np.testing.assert_allclose(got, audio_features(wave, 16000, spec), atol=1e-3)  # 16-bit quantisation
    # At 8 kHz the same tone lands in the same mel bins after resampling.
    at_8k = field.process(_encoded(_tone(500, rate=8000), 8000, "WAV"), rng)["audio"]
    np.testing.assert_array_equal(_peak_bin(at_8k[:30]), _peak_bin(audio_features(wave, 16000, spec)[:30]))
    with pytest.raises(BadData) as bad:
        field.process(b"RIFF\x00\x00not audio at all", rng)
    assert bad.value.kind == "corrupt_audio"
    with pytest.raises(BadData) as bad:
        field.process(np.zeros(100, np.int16), rng)
    assert bad.value.kind == "short_clip"
    with pytest.raises(ValueError, match="unknown window 'hanning'"):
        AudioField(window="hanning")


def test_built_in_sounds_are_deterministic_and_carry_their_labels():
    bundle = build_dataset(dict(name="sounds", num_examples=64, view="audio_caption", num_mel_bins=64, num_frames=98),
                           "validation")
    again = build_dataset(dict(name="sounds", num_examples=64, view="audio_caption", num_mel_bins=64,
                               num_frames=98), "validation")
    rng = np.random.default_rng(0)
    examples = [bundle.random_transform(bundle.examples[i], rng) for i in range(64)]
    np.testing.assert_array_equal(examples[5]["audio"], again.random_transform(again.examples[5], rng)["audio"])
    assert bundle.info["num_classes"] == 12 and len(bundle.info["class_prompts"]) == 12
    tok = bundle.info["tokenizer"]
    for i, e in enumerate(examples):
        pitch, pattern = sounds.attributes("validation", i)
        assert int(e["label"]) == pattern * 3 + pitch
        words = tok.decode(e["text"]).split()
        assert set(words) & set(sounds._PITCH_WORDS[sounds.PITCHES[pitch]])
        assert 1 not in e["text"]  # no unknown word
    # The features carry the attributes: higher pitches peak in higher mel bins, rising chirps climb.
    peak = {}
    for i, e in enumerate(examples):
        pitch, pattern = sounds.attributes("validation", i)
        band = e["audio"][:, :100]  # below ~3.4 kHz: the tones and their second harmonics
        loud = band.max(-1) >= np.percentile(band.max(-1), 40)  # frames where the tone sounds
        bins = _peak_bin(band)[loud]
        if sounds.PATTERNS[pattern] == "steady":
            peak.setdefault(pitch, []).append(np.median(bins))
        if sounds.PATTERNS[pattern] == "rising" and len(bins) > 10:
            assert bins[-5:].mean() > bins[:5].mean()
    assert np.mean(peak[0]) < np.mean(peak[1]) < np.mean(peak[2])
    with pytest.raises(ValueError, match="valid views: audio_label, audio_caption"):
        build_dataset(dict(name="sounds", view="audio"), "train")
