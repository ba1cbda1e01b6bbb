"""Built-in sounds: synthetic one-second clips with a pitch, a pattern and a caption, so audio configs
learn without downloads.

Each clip is drawn from its own seeded generator (identical on every machine, any slice on its own):
a tone at one of three pitches (low 220 Hz, medium 440 Hz, high 880 Hz, each +-3%) with one of four
patterns (steady, rising and falling chirps over an octave, pulsing beeps), a random onset, loudness
and harmonic content, in background noise of random level. The label is ``pattern * 3 + pitch``
(12 classes); captions name both in varied words ("a high tone rising", "low beeps").

The ``audio_tags`` view is multi-label, as AudioSet: each clip mixes one to three distinct events of
those 12 classes, overlapping in time, and carries them as a multi-hot ``labels`` vector (for
``sigmoid_xent`` and the ``multilabel_map`` evaluator); about 1.8 events per clip, so a class's prior
is about 0.15 and so is the mAP of a prior-only (or random) ranking.
"""

from __future__ import annotations

import functools

import grain
import numpy as np

from vlfm.data.audio import AUDIOSET_MEAN_STD, AudioField
from vlfm.data.pipeline import DATASETS, DatasetBundle
from vlfm.data.tokenizers import WordTokenizer

PITCHES = ("low", "medium", "high")
PATTERNS = ("steady", "rising", "falling", "pulsing")
BASE_HZ = (220.0, 440.0, 880.0)
SAMPLE_RATE = 16000
SPLIT_SEEDS = {"train": 104723, "validation": 7907, "test": 611953}
CLASS_NAMES = tuple(f"{pitch} {pattern} tone" for pattern in PATTERNS for pitch in PITCHES)
VIEWS = ("audio_label", "audio_caption", "audio_tags")
TAG_COUNTS = (0.4, 0.4, 0.2)  # probabilities of one, two and three events in an ``audio_tags`` clip
TAGS_STREAM = 7  # the multi-label clips' own random streams (single-label clips use 0 and 1)

_PITCH_WORDS = {"low": ("low", "deep"), "medium": ("medium", "middle"), "high": ("high", "shrill")}
_CAPTIONS = {
    "steady": ("a steady {p} tone", "a {p} tone holding", "a constant {p} sound"),
    "rising": ("a {p} tone rising", "a rising {p} chirp", "a {p} sound going up"),
    "falling": ("a {p} tone falling", "a falling {p} chirp", "a {p} sound going down"),
    "pulsing": ("{p} beeps", "a {p} tone pulsing", "a pulsing {p} sound"),
}
_PROMPTS = ("a {name}.", "the sound of a {name}.")
VOCAB = tuple(sorted({w for forms in (*_CAPTIONS.values(), _PROMPTS, CLASS_NAMES) for form in forms
                      for w in form.replace(".", "").split() if "{" not in w}
                     | {w for words in _PITCH_WORDS.values() for w in words}))


def _rng(split: str, index: int) -> np.random.Generator:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_SEEDS)}")
    return np.random.default_rng([SPLIT_SEEDS[split], index])


def attributes(split: str, index: int) -> tuple[int, int]:
    """(pitch, pattern) of clip ``index`` of ``split``."""
    rng = _rng(split, index)
    return int(rng.integers(len(PITCHES))), int(rng.integers(len(PATTERNS)))


def _tone(rng: np.random.Generator, pitch: int, pattern: int, t: np.ndarray, seconds: float, sample_rate: int,
          onset: tuple[float, float], offset: tuple[float, float]) -> np.ndarray:
    """One sound event: a tone of ``pitch`` and ``pattern`` between a random onset and offset (fractions
    of the clip drawn from the given ranges), with random harmonic content and loudness; no noise."""
    f0 = BASE_HZ[pitch] * rng.uniform(0.97, 1.03)
    start, stop = rng.uniform(*onset) * seconds, rng.uniform(*offset) * seconds
    span = max(stop - start, 1e-3)
    progress = np.clip((t - start) / span, 0.0, 1.0)
    if PATTERNS[pattern] == "rising":  # up one octave, linear in log frequency
        freq = f0 * 2.0 ** progress
    elif PATTERNS[pattern] == "falling":
        freq = f0 * 2.0 ** (1.0 - progress)
    else:
        freq = np.full(t.shape[0], f0)
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    second = rng.uniform(0.0, 0.4)  # harmonic content varies; the fundamental names the pitch
    tone = np.sin(phase) + second * np.sin(2 * phase + rng.uniform(0, 2 * np.pi))
    gate = ((t >= start) & (t <= stop)).astype(np.float64)
    if PATTERNS[pattern] == "pulsing":
        rate = rng.uniform(4.0, 6.0)  # beeps per second, each on for half its period
        gate *= (np.floor((t - start) * rate * 2) % 2 == 0)
    ramp = np.minimum(1.0, np.minimum(np.abs(t - start), np.abs(stop - t)) * 200)  # 5 ms fades, no clicks
    return rng.uniform(0.2, 0.6) * tone * gate * ramp / (1 + second)


def clip(split: str, index: int, seconds: float = 1.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The float32 waveform of clip ``index`` of ``split``, in [-1, 1]."""
    rng = _rng(split, index)
    pitch, pattern = int(rng.integers(len(PITCHES))), int(rng.integers(len(PATTERNS)))
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    wave = _tone(rng, pitch, pattern, t, seconds, sample_rate, onset=(0.0, 0.15), offset=(0.85, 1.0))
    wave += rng.uniform(0.002, 0.03) * rng.standard_normal(n)
    return np.clip(wave, -1, 1).astype(np.float32)


def tags(split: str, index: int) -> np.ndarray:
    """The classes (``pattern * 3 + pitch``) sounding in multi-label clip ``index`` of ``split``: one to
    three distinct ones (probabilities 0.4, 0.4, 0.2), sorted."""
    rng = np.random.default_rng([SPLIT_SEEDS[split], index, TAGS_STREAM])
    count = 1 + int(rng.choice(len(TAG_COUNTS), p=TAG_COUNTS))
    return np.sort(rng.choice(len(CLASS_NAMES), size=count, replace=False))


def tagged_clip(split: str, index: int, seconds: float = 1.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The float32 waveform of multi-label clip ``index`` of ``split``: the events ``tags`` names mixed
    (each between its own onset in the first 40% and offset in the last 40% of the clip, so they
    overlap in time), divided by the square root of their number, in background noise."""
    rng = np.random.default_rng([SPLIT_SEEDS[split], index, TAGS_STREAM + 1])
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    events = tags(split, index)
    wave = sum(_tone(rng, int(c) % len(PITCHES), int(c) // len(PITCHES), t, seconds, sample_rate,
                     onset=(0.0, 0.4), offset=(0.6, 1.0)) for c in events) / np.sqrt(len(events))
    wave += rng.uniform(0.002, 0.03) * rng.standard_normal(n)
    return np.clip(wave, -1, 1).astype(np.float32)


def caption(split: str, index: int) -> str:
    rng = np.random.default_rng([SPLIT_SEEDS[split], index, 1])
    pitch, pattern = attributes(split, index)
    form = _CAPTIONS[PATTERNS[pattern]][int(rng.integers(3))]
    words = _PITCH_WORDS[PITCHES[pitch]]
    return form.format(p=words[int(rng.integers(len(words)))])


def tokenizer() -> WordTokenizer:
    return WordTokenizer(VOCAB)


class _Clips(grain.sources.RandomAccessDataSource):
    """index -> {"waveform", "label"(, "text", "text_mask")}, generated on access (picklable)."""

    def __init__(self, split: str, num_examples: int, seconds: float, sample_rate: int, max_len: int | None):
        self.split, self.num_examples, self.seconds, self.sample_rate = split, num_examples, seconds, sample_rate
        self.max_len = max_len

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        pitch, pattern = attributes(self.split, index)
        out = {"waveform": clip(self.split, index, self.seconds, self.sample_rate),
               "label": np.int32(pattern * len(PITCHES) + pitch)}
        if self.max_len is not None:
            tokens = tokenizer().encode_batch([caption(self.split, index)], self.max_len)
            out["text"], out["text_mask"] = tokens["ids"][0], tokens["mask"][0]
        return out


class _TaggedClips(grain.sources.RandomAccessDataSource):
    """index -> {"waveform", "labels" (multi-hot float32 over the 12 classes)}, generated on access."""

    def __init__(self, split: str, num_examples: int, seconds: float, sample_rate: int):
        self.split, self.num_examples, self.seconds, self.sample_rate = split, num_examples, seconds, sample_rate

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        labels = np.zeros(len(CLASS_NAMES), np.float32)
        labels[tags(self.split, index)] = 1.0
        return {"waveform": tagged_clip(self.split, index, self.seconds, self.sample_rate), "labels": labels}


class _Features:
    """waveform -> ``audio`` features in the data workers (SpecAugment when training)."""

    def __init__(self, field: AudioField):
        self.field = field

    def __call__(self, example: dict, rng: np.random.Generator) -> dict:
        out = {k: v for k, v in example.items() if k != "waveform"}
        out.update(self.field.process(example["waveform"], rng))
        return out


@DATASETS.register("sounds")
def sounds_dataset(split: str, num_examples: int = 10_000, view: str = "audio_label", seconds: float = 1.0,
                   num_mel_bins: int = 128, num_frames: int = 100, max_len: int = 8,
                   mean_std: tuple[float, float] = AUDIOSET_MEAN_STD, spec_augment: dict | None = None) -> DatasetBundle:
    """Built-in sounds: ``audio`` ``[num_frames, num_mel_bins]`` log-mel features (16 kHz, AST's
    settings) with ``label`` (``audio_label``), with the caption as ``text`` / ``text_mask`` too
    (``audio_caption``), or mixtures of events with multi-hot ``labels`` (``audio_tags``; ``info``
    says ``multi_label``). ``spec_augment`` (kwargs of ``audio.spec_augment``) masks training features."""
    if view not in VIEWS:
        raise ValueError(f"unknown sounds view {view!r}; valid views: {', '.join(VIEWS)}")
    if view == "audio_tags":
        source = _TaggedClips(split, num_examples, seconds, SAMPLE_RATE)
    else:
        source = _Clips(split, num_examples, seconds, SAMPLE_RATE, max_len if view == "audio_caption" else None)
    field = AudioField(train=split == "train", sample_rate=SAMPLE_RATE, num_mel_bins=num_mel_bins,
                       num_frames=num_frames, mean_std=mean_std, spec_augment=spec_augment)
    tok = tokenizer()
    prompts = [[form.format(name=name) for form in _PROMPTS] for name in CLASS_NAMES]
    info = dict(name="sounds", num_classes=len(CLASS_NAMES), class_names=list(CLASS_NAMES), class_prompts=prompts,
                tokenizer=tok, vocab_size=tok.vocab_size, max_len=max_len,
                reference_captions=functools.partial(_references, split), multi_label=view == "audio_tags")
    return DatasetBundle(grain.MapDataset.source(source), _Features(field), info)


def _references(split: str, index: int, num: int) -> list[str]:
    return [caption(split, int(index))][:num]
