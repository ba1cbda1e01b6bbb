"""Video in the data workers: frame sampling, decoding with bad clips counted, one augmentation per
clip, and the built-in moving shapes."""

import numpy as np
import pytest

from vlfm.data import build_dataset, videos
from vlfm.data.bad_data import BadData
from vlfm.data.normalization import host_normalize
from vlfm.data.video import VideoField, encode_video, strided_indices, uniform_indices

av = pytest.importorskip("av")


def _mp4(frames, fps=8, fmt="mp4", codec="mpeg4"):
    return encode_video(frames, fps, fmt, codec, options={"qscale": "1"})


def test_frame_sampling():
    np.testing.assert_array_equal(uniform_indices(16, 4), [2, 6, 10, 14])
    np.testing.assert_array_equal(uniform_indices(4, 4), [0, 1, 2, 3])
    rng = np.random.default_rng(0)
    seen_strides = set()
    for _ in range(50):
        idx = strided_indices(20, 4, rng, max_stride=3)
        steps = set(np.diff(idx).tolist())
        assert len(steps) == 1 and idx[0] >= 0 and idx[-1] < 20
        seen_strides |= steps
    assert seen_strides == {1, 2, 3}
    # Too short for the largest stride: the stride shrinks to what fits.
    assert set(np.diff(strided_indices(5, 4, rng, max_stride=3)).tolist()) == {1}


def test_video_field_decodes_samples_and_counts_bad_clips():
    # Twelve flat grey frames, 20 grey levels apart: a frame's level names it, through any codec.
    frames = np.repeat((np.arange(12, dtype=np.uint8) * 20 + 10)[:, None, None, None], 32, axis=1)
    frames = np.ascontiguousarray(np.broadcast_to(frames, (12, 32, 32, 3)))
    field = VideoField(num_frames=4, image=dict(size=32, eval_crop="resize", mean_std="half"))
    rng = np.random.default_rng(0)
    stats = field.info()["normalize"]  # frames leave the field uint8 and are normalised after the pipeline
    assert field.process(frames, rng)["video"].dtype == np.uint8
    from_mp4 = host_normalize(field.process(_mp4(frames), rng), stats)["video"]
    from_frames = host_normalize(field.process(frames, rng), stats)["video"]
    assert from_mp4.shape == from_frames.shape == (4, 32, 32, 3)
    want = frames[uniform_indices(12, 4)].astype(np.float32) / 127.5 - 1  # frames 1, 4, 7, 10
    np.testing.assert_allclose(from_frames, want, atol=1e-6)
    np.testing.assert_allclose(from_mp4, want, atol=8 / 127.5)  # lossy (YUV), but under half the 20-level gap
    with pytest.raises(BadData) as bad:
        field.process(b"\x00\x00\x00\x18ftypmp42 truncated", rng)
    assert bad.value.kind == "corrupt_video"
    with pytest.raises(BadData) as bad:
        field.process(frames[:3], rng)
    assert bad.value.kind == "short_clip"


def test_encoded_clips_sample_the_frames_the_array_path_samples():
    """Decoding stops at the last sampled frame where the container states its length (MP4) and decodes
    everything where it may not (WebM): either way the clip is the frames the same draw picks from the
    decoded array."""
    from vlfm.data.video import decode_sampled

    frames = np.repeat((np.arange(40, dtype=np.uint8) * 6 + 10)[:, None, None, None], 16, axis=1)
    frames = np.ascontiguousarray(np.broadcast_to(frames, (40, 16, 16, 3)))
    field = VideoField(train=True, num_frames=4, max_stride=3, image=dict(size=16, scale=(1.0, 1.0), flip=False))
    for fmt, codec in (("mp4", "mpeg4"), ("webm", "libvpx")):
        data = _mp4(frames, fmt=fmt, codec=codec)
        calls = []
        picked = decode_sampled(data, lambda n: calls.append(n) or np.array([3, 9, 15]))
        assert calls == [40]  # one draw, over all 40 frames
        np.testing.assert_allclose([p.mean() for p in picked], [28, 64, 100], atol=3)
        for seed in range(3):
            got = field.process(data, np.random.default_rng(seed))["video"].astype(float).mean(axis=(1, 2, 3))
            want = field.process(frames, np.random.default_rng(seed))["video"].astype(float).mean(axis=(1, 2, 3))
            np.testing.assert_allclose(got, want, atol=3)  # lossy codecs, levels 6 apart


def test_training_augmentation_is_one_draw_per_clip():
    still = np.repeat(videos.clip("train", 0, num_frames=1, image_size=32), 6, axis=0)  # six identical frames
    field = VideoField(train=True, num_frames=6, max_stride=1,
                       image=dict(size=24, train_crop="random_resized_crop", scale=(0.3, 1.0), flip=True,
                                  mean_std="half"))
    clips = [field.process(still, np.random.default_rng(seed))["video"] for seed in range(4)]
    for clip in clips:  # the same crop and flip on every frame
        assert all(np.array_equal(clip[0], frame) for frame in clip[1:])
    assert not all(np.array_equal(clips[0], c) for c in clips[1:])  # but another draw per clip
    with pytest.raises(ValueError, match="cannot mask"):
        VideoField(image=dict(mim=dict(num_patches=4)))


def _centre(frame):
    """Centroid (x, y) of the saturated (object) pixels of a uint8 frame."""
    sat = frame.max(-1).astype(int) - frame.min(-1).astype(int) > 70
    ys, xs = np.nonzero(sat)
    return np.array([xs.mean(), ys.mean()])


def test_built_in_moving_shapes_move_as_labelled():
    bundle = build_dataset(dict(name="moving_shapes", num_examples=40, view="video_caption", image_size=48), "train")
    assert bundle.info["num_classes"] == 8
    tok = bundle.info["tokenizer"]
    shifts = {0: [], 1: []}
    for i in range(40):
        e = bundle.examples[i]
        a = videos.attributes("train", i)
        assert int(e["label"]) == a["direction"] * 2 + a["speed"] and int(e["color"]) == a["color"]
        assert (int(e["direction"]), int(e["speed"])) == (a["direction"], a["speed"])
        frames = videos.clip("train", i, 8, 48)
        np.testing.assert_allclose(e["video"], frames / 127.5 - 1, atol=1e-6)
        move = _centre(frames[-1]) - _centre(frames[0])
        want = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[videos.DIRECTIONS[a["direction"]]]
        assert np.dot(move, want) > 3 * np.abs(np.dot(move, want[::-1])), (i, move, want)
        shifts[a["speed"]].append(np.abs(move).max())
        words = tok.decode(e["text"]).split()
        assert 1 not in e["text"] and videos.DIRECTIONS[a["direction"]].rstrip("s") in " ".join(words)
    assert max(shifts[0]) < min(shifts[1])  # slowly covers less ground than quickly, every time
