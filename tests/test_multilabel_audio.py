"""AudioSet-style multi-label audio: the built-in sounds' ``audio_tags`` view (mixed events, multi-hot
``labels``), the ``labels`` field for shards, the ``sigmoid_xent`` loss and ``multilabel_map`` on
multi-hot targets, and the polyvit_tiny task that trains them."""

import numpy as np
import pytest

from vlfm.data import build_dataset, sounds
from vlfm.data.bad_data import BadData
from vlfm.data.multi_hot import MultiHotField
from vlfm.losses import LOSSES


def test_sigmoid_xent_hand_computed():
    logits = np.array([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]], np.float32)
    labels = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    want = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean()
    loss, metrics = LOSSES.get("sigmoid_xent")({"logits": logits}, {"labels": labels})
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    # decisions at 0.5: [T F T] vs [1 0 1] all right; [F F T] vs [0 1 0]: one miss, one false alarm
    np.testing.assert_allclose(float(metrics["label_accuracy"]), 4 / 6, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["positive_recall"]), 2 / 3, rtol=1e-6)
    # integer classes are read as one-hot
    one_hot, _ = LOSSES.get("sigmoid_xent")({"logits": logits}, {"labels": np.array([0, 1])})
    want = -(np.log(p[0, 0]) + np.log(1 - p[0, 1]) + np.log(1 - p[0, 2]) + np.log(1 - p[1, 0]) + np.log(p[1, 1])
             + np.log(1 - p[1, 2])) / 6
    np.testing.assert_allclose(float(one_hot), want, rtol=1e-6)
    with pytest.raises(ValueError, match="neither classes per example nor multi-hot"):
        LOSSES.get("sigmoid_xent")({"logits": logits}, {"labels": np.zeros((2, 4), np.float32)})


def test_labels_field_reads_indices_and_names_and_counts_bad_values():
    rng = np.random.default_rng(0)
    field = MultiHotField(num_classes=5)
    for raw in (b"0,3", "3 0", b"[3, 0]", [0, 3], np.array([3, 0])):
        np.testing.assert_array_equal(field.process(raw, rng)["labels"], [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(field.process(b"", rng)["labels"], np.zeros(5))
    for raw, message in ((b"0,5", "outside"), (b"0,x", "not an integer"), (b"[0, 1", "not a list"),
                         ({"a": 1}, "not a list")):
        with pytest.raises(BadData, match=message) as bad:
            field.process(raw, rng)
        assert bad.value.kind == "bad_value"
    mids = MultiHotField(class_ids=["/m/09x0r", "/m/04rlf", "/m/0jbk"], class_names=["Speech", "Music", "Animal"])
    np.testing.assert_array_equal(mids.process(b"/m/0jbk,/m/09x0r", rng)["labels"], [1, 0, 1])
    assert mids.info() == {"num_classes": 3, "multi_label": True, "class_names": ["Speech", "Music", "Animal"]}
    with pytest.raises(BadData, match="not one of the class_ids"):
        mids.process(b"/m/07rwj", rng)
    with pytest.raises(ValueError, match="give num_classes"):
        MultiHotField()


def test_audio_tags_clips_sound_as_labelled():
    """Labels are the clip's events: every clip with a low-pitched event (220 Hz, or a chirp through it)
    has more energy at 200-240 Hz than any clip without one; one to three events, about 0.4 / 0.4 / 0.2."""
    bundle = build_dataset(dict(name="sounds", view="audio_tags", num_examples=300, num_mel_bins=32, num_frames=64),
                           "validation")
    assert bundle.info["multi_label"] and bundle.info["num_classes"] == 12
    labels = np.stack([bundle.examples[i]["labels"] for i in range(300)])
    np.testing.assert_array_equal(labels[7], np.isin(np.arange(12), sounds.tags("validation", 7)))
    counts = np.bincount(labels.sum(1).astype(int), minlength=4)[1:] / 300
    np.testing.assert_allclose(counts, sounds.TAG_COUNTS, atol=0.07)
    np.testing.assert_array_equal(bundle.examples[5]["waveform"], sounds.tagged_clip("validation", 5))
    band, low = [], []
    for i in range(120):
        w = bundle.examples[i]["waveform"].astype(np.float64)
        power, freq = np.abs(np.fft.rfft(w)) ** 2, np.fft.rfftfreq(w.size, 1 / sounds.SAMPLE_RATE)
        band.append(power[(freq > 200) & (freq < 240)].sum() / power.sum())
        low.append(labels[i].reshape(4, 3)[:, 0].any())  # class = pattern * 3 + pitch; pitch 0 is low
    band, low = np.array(band), np.array(low)
    assert 0.2 < low.mean() < 0.8 and band[low].min() > 5 * band[~low].max()


def test_multilabel_map_scores_multi_hot_data():
    """The evaluator on the multi-hot view: a crude pitch detector (each class scored by its pitch's mel
    band) ranks well above a prior-only ranking, whose mAP is ``chance_map``."""
    from vlfm.data.audio import kaldi_mel
    from vlfm.evaluators import EVALUATORS

    edges = np.linspace(kaldi_mel(20.0), kaldi_mel(8000.0), 34)[1:-1]  # the 32 filters' centres (mel)
    bins = [int(np.argmin(np.abs(edges - kaldi_mel(hz)))) for hz in sounds.BASE_HZ]

    def pitch_scores(params, batch):
        assert "labels" not in batch  # the targets never reach the model
        energy = batch["audio"].max(axis=1)[:, bins]  # [B, 3]: loudest frame in each pitch's bin
        return np.tile(energy, (1, 4))  # class = pattern * 3 + pitch

    data = dict(name="sounds", view="audio_tags", num_examples=200, num_mel_bins=32, num_frames=64)
    evaluator = EVALUATORS.get("multilabel_map")({"logits": pitch_scores}, data=data, targets="labels", batch_size=100)
    metrics = dict(evaluator.run(None))
    assert metrics["num_classes_scored"] == 12 and 0.1 < metrics["chance_map"] < 0.2
    assert metrics["map"] > metrics["chance_map"] + 0.1 and metrics["mauc"] > 0.6


def test_polyvit_tiny_trains_audio_tags_with_sigmoid_and_map():
    from vlfm.train.config import load_config

    c = load_config("configs/polyvit_tiny.py:audio_tags")
    assert list(c.tasks) == ["audio_tags"] and list(c.tasks.audio_tags.losses) == ["sigmoid_xent"]
    assert c.evals.audio_tags.type == "multilabel_map" and c.evals.audio_tags.targets == "labels"
    assert c.model.heads.audio_tags == 12
    both = load_config("configs/polyvit_tiny.py:audio,audio_tags")
    assert sorted(both.tasks) == ["audio", "audio_tags"] and both.total_steps == 600
    assert sorted(load_config("configs/polyvit_tiny.py").tasks) == ["audio", "image", "video"]
    b16 = load_config("configs/polyvit_b16.py")
    assert dict(b16.tasks.audioset.data.labels) == {"key": "labels", "num_classes": 527}
    assert list(b16.tasks.audioset.losses) == ["sigmoid_xent"] and b16.evals.audioset.type == "multilabel_map"
    assert list(b16.tasks.vggsound.losses) == ["softmax_xent"]
