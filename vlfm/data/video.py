"""Video for the data workers: decoding (PyAV), frame sampling, per-frame preprocessing shared with images.

A clip is ``num_frames`` frames of the video: in evaluation spread uniformly over it (the centre of
each of ``num_frames`` equal segments, as TSN and ViViT's evaluation), in training at a random stride
from 1 to ``max_stride`` with a random start (a clip of that span must fit, or the stride shrinks).
Every frame of a clip goes through the same image preprocessing with the same random draws (one crop,
one flip for the clip), so augmentation never tears motion apart. Encoded videos are decoded up to the
clip's last frame only (where the container states its length), and only the clip's frames are
converted to RGB: ``benchmarks/av_throughput.py`` measures what that saves.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vlfm.data.bad_data import BAD_VALUE, CORRUPT_VIDEO, SHORT_CLIP, BadData
from vlfm.data.normalization import NORMALIZE
from vlfm.data.preprocess import FIELDS, Field, ImageField


def uniform_indices(num_available: int, num_frames: int) -> np.ndarray:
    """The centre frame of each of ``num_frames`` equal segments of the video."""
    return ((np.arange(num_frames) + 0.5) * num_available / num_frames).astype(np.int64)


def strided_indices(num_available: int, num_frames: int, rng: np.random.Generator, max_stride: int) -> np.ndarray:
    """``num_frames`` frames at a random stride (the largest that fits when ``max_stride`` does not) from
    a random start."""
    fits = max(1, min(max_stride, (num_available - 1) // max(num_frames - 1, 1)))
    stride = int(rng.integers(1, fits + 1))
    span = (num_frames - 1) * stride + 1
    start = int(rng.integers(0, num_available - span + 1))
    return start + stride * np.arange(num_frames)


def encode_video(frames: np.ndarray, fps: int = 8, container_format: str = "mp4", codec: str = "mpeg4",
                 options: Mapping[str, str] | None = None, bit_rate: int = 0) -> bytes:
    """``[T, H, W, 3]`` uint8 RGB frames -> the bytes of a ``container_format`` file (what a ``KEY.mp4`` or
    ``KEY.webm`` shard member holds), in ``codec`` with its ``options`` (e.g. ``{"qscale": "1"}``) and
    ``bit_rate`` (bits per second; 0: the codec's default)."""
    import av  # optional dependency: the ``video`` extra

    buf = io.BytesIO()
    with av.open(buf, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if options:
            stream.options = dict(options)
        if bit_rate:
            stream.bit_rate = bit_rate
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode_frames(data: bytes) -> list:
    """Encoded video (MP4, WebM, ...) -> every frame decoded (PyAV ``VideoFrame``s, still in the codec's
    pixel format)."""
    import av  # optional dependency: the ``video`` extra

    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(video=0))
    if not frames:
        raise ValueError("no video frames")
    return frames


def decode_sampled(data: bytes, choose: Callable[[int], np.ndarray]) -> list[np.ndarray]:
    """Encoded video -> the frames ``choose(number of frames)`` picks, ``[H, W, 3]`` uint8 RGB each.

    Decoding stops at the last frame picked when the container states its frame count (MP4 does; WebM
    may not: then every frame is decoded first), and only the picked frames are converted to RGB (which
    costs about as much as decoding). A video with fewer frames than its container states is sampled
    again over the frames it has."""
    import av  # optional dependency: the ``video`` extra

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stated, frames, index = int(stream.frames or 0), [], None
        if stated > 0:
            index = choose(stated)
            last = int(index.max())
            for frame in container.decode(stream):
                frames.append(frame)
                if len(frames) > last:
                    break
        else:
            frames = list(container.decode(stream))
    if not frames:
        raise ValueError("no video frames")
    if index is None or len(frames) <= int(index.max()):
        index = choose(len(frames))
    return [frames[i].to_ndarray(format="rgb24") for i in index]


def decode_video(data: bytes) -> np.ndarray:
    """Encoded video (MP4, WebM, ...) -> every frame as ``[T, H, W, 3]`` uint8 RGB (PyAV)."""
    return np.stack([f.to_ndarray(format="rgb24") for f in decode_frames(data)])


@FIELDS.register("video")
class VideoField(Field):
    """Encoded video (``KEY.mp4`` / ``KEY.webm``) or decoded frames ``[T, H, W, 3]`` (pre-extracted,
    or a TFDS ``Video`` feature) -> ``video`` ``[num_frames, size, size, 3]`` uint8, normalised as the
    image field's ``mean_std`` says (``info["normalize"]``, on the host or in the train step).

    ``image``: kwargs of the image field for every frame (``size``, crops, ``flip``, ``mean_std``; not
    ``mim``). ``max_stride``: the training stride range. A video that cannot be decoded is
    ``corrupt_video``; one with fewer than ``num_frames`` frames ``short_clip``: skipped and counted.
    """

    def __init__(self, key: str = "mp4;webm;avi;video", train: bool = False, num_frames: int = 8,
                 max_stride: int = 2, image: Mapping[str, Any] | None = None):
        super().__init__(key, train)
        spec = dict(image or {})
        if "mim" in spec:
            raise ValueError("the video field's image spec cannot mask (mim); mask tubelets in the model instead")
        self.frames = ImageField(key="frame", train=train, **spec)
        self.num_frames, self.max_stride = num_frames, max_stride

    def process(self, raw: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
        def choose(available: int) -> np.ndarray:
            if available < self.num_frames:
                raise BadData(SHORT_CLIP, f"{available} frames, the clip needs {self.num_frames}")
            if self.train:
                return strided_indices(available, self.num_frames, rng, self.max_stride)
            return uniform_indices(available, self.num_frames)

        if isinstance(raw, (bytes, bytearray)):
            try:
                picked = decode_sampled(bytes(raw), choose)
            except (OSError, ValueError, RuntimeError) as e:  # PyAV's errors are OSError / ValueError subclasses
                raise BadData(CORRUPT_VIDEO, f"{type(e).__name__}: {e}") from None
        elif isinstance(raw, np.ndarray) and raw.ndim == 4:
            picked = [np.ascontiguousarray(raw[i]) for i in choose(raw.shape[0])]
        else:
            raise BadData(BAD_VALUE, f"video is a {type(raw).__name__} {getattr(raw, 'shape', '')}, not bytes or "
                                     "[T, H, W, 3] frames")
        seed = int(rng.integers(2**63))  # one draw for the clip: every frame gets the same crop and flip
        clip = [self.frames.process(frame, np.random.default_rng(seed))["image"] for frame in picked]
        return {"video": np.stack(clip)}

    def info(self) -> dict[str, Any]:
        return {NORMALIZE: {"video": (self.frames.mean, self.frames.std)}}
