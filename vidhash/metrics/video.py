"""Streaming video decode for the coherence metrics.

    with VideoReader("clip.mp4", analysis_fps=8, size=128) as reader:
        for frame in reader:          # Frame(index, t, rgb (height, width, 3) uint8)
            ...

Frames are decoded one at a time with PyAV and only the sampled ones are converted and
resized (by swscale, area filter), so memory does not depend on the length of the video.

Sampling: for a constant-frame-rate source the reader keeps every ``stride``-th frame with
``stride = round(source_fps / analysis_fps)``, so analysed frames are evenly spaced and the
effective rate is ``source_fps / stride`` (30 fps asked at 8 → 7.5). For a variable-frame-rate
source the reader picks the first frame at or after each tick of a clock at that rate and
records a warning, since frame-to-frame metrics then compare unequal time steps.

Working size: the longer side becomes ``size`` (aspect kept, both sides even), so the same
``--size`` gives comparable numbers for videos of any resolution.

Every problem with the input is a :class:`VideoError` (a ``ValueError``) whose message names
the file and says what is wrong; problems that still leave something to analyse (truncated
file, variable frame rate, fewer frames than the container lists) are collected in
``reader.warnings`` instead.

Frames already in memory — a uint8 ``(frames, height, width, 3)`` RGB array, as a generator
returns them — are read by :class:`FrameArrayReader` instead: the same analysed frames (the
constant-rate striding above, the same working size), with no file, no codec and no PyAV.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np

__all__ = [
    "MAX_SIZE", "Frame", "FrameArrayReader", "VideoError", "VideoInfo", "VideoReader", "check_analysis_fps", "check_frames",
    "check_size", "constant_rate_sampling", "resize_rgb", "working_size",
]


class VideoError(ValueError):
    """A video that cannot be read; the message names the file (or the frames' name) and the problem."""


@dataclass
class VideoInfo:
    """What the container says about the video stream (before decoding)."""

    path: str
    width: int
    height: int
    fps: float  # nominal source rate (average_rate, else guessed)
    frames: int  # frame count listed by the container; 0 when unknown
    duration_s: float  # container duration; 0.0 when unknown
    codec: str


@dataclass
class Frame:
    """One analysed frame: its index among analysed frames, time in seconds from the first
    decoded frame, and pixels as ``(height, width, 3)`` uint8 RGB at the working size."""

    index: int
    t: float
    rgb: np.ndarray


MAX_SIZE = 4096  # working sizes above this are refused (the metrics are made for small frames; 4K at most)


def working_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the longer side ``size`` and both sides even (at least 16)."""
    check_size(size)
    scale = size / max(width, height)
    w = max(16, int(round(width * scale / 2)) * 2)
    h = max(16, int(round(height * scale / 2)) * 2)
    return w, h


def check_size(size) -> None:
    """ValueError naming ``--size`` unless it is a whole number of pixels in [16, MAX_SIZE]."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"--size must be a whole number of pixels, got {size!r}")
    if size < 16:
        raise ValueError(f"--size must be at least 16 pixels, got {size}")
    if size > MAX_SIZE:
        raise ValueError(f"--size must be at most {MAX_SIZE} pixels (the longer side of the working size; "
                         f"the default is 128), got {size}")


def check_analysis_fps(analysis_fps) -> None:
    """ValueError naming ``--analysis-fps`` unless it is a finite number >= 0 (0: every frame)."""
    if isinstance(analysis_fps, (bool, np.bool_)) or not isinstance(analysis_fps, numbers.Real):
        raise ValueError(f"--analysis-fps must be a number of frames per second (or 0 for every frame), got {analysis_fps!r}")
    if analysis_fps < 0 or not math.isfinite(analysis_fps):
        raise ValueError(f"--analysis-fps must be a positive number (or 0 for every frame), got {analysis_fps}")


def constant_rate_sampling(src_fps: float, analysis_fps: float) -> tuple[int, float, str | None]:
    """``(stride, fps, warning)`` for a constant-rate source of ``src_fps`` analysed at ``analysis_fps``:
    every ``stride``-th frame, an effective rate ``src_fps / stride``; ``analysis_fps`` 0 or at or
    above the source rate keeps every frame (above it: a warning, else None)."""
    if analysis_fps == 0 or analysis_fps >= src_fps:
        warning = None
        if analysis_fps > src_fps:
            warning = f"--analysis-fps {analysis_fps:g} is above the source rate; analysing every frame at {src_fps:g} fps"
        return 1, src_fps, warning
    stride = max(1, int(round(src_fps / analysis_fps)))
    return stride, src_fps / stride, None


def resize_rgb(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(height, width, 3)`` uint8: ``rgb`` resized with OpenCV's area filter (a copy when it is
    already that size). The in-memory counterpart of the file reader's swscale area filter: the
    same kind of filter, not bit-identical to it (a level or so where the size changes)."""
    if rgb.shape[0] == height and rgb.shape[1] == width:
        return np.array(rgb, dtype=np.uint8, copy=True, order="C")
    return cv2.resize(np.ascontiguousarray(rgb), (width, height), interpolation=cv2.INTER_AREA)


def _open(path: str):
    import av

    if not os.path.exists(path):
        raise VideoError(f"{path}: no such file")
    if os.path.isdir(path):
        raise VideoError(f"{path}: is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(path, mode="r")
    except av.error.FFmpegError as err:
        raise VideoError(
            f"{path}: not a readable video ({_ffmpeg_reason(err)}); "
            "it may not be a video, or it may be truncated (an mp4 cut short loses its index)"
        ) from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: contains no video stream")
    return container


def _ffmpeg_reason(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return str(text).split(":")[0].strip() or type(err).__name__


@dataclass
class VideoReader:
    """Iterate over the analysed frames of one video, decoding as it goes.

    Args:
        path: any file FFmpeg can read (mp4, mkv, webm, avi, ...).
        analysis_fps: frames per second to analyse; ``0`` keeps every source frame.
        size: longer side of the working size in pixels.

    After iteration: ``source_frames`` (decoded), ``source_duration_s``, ``fps`` (effective
    analysis rate), ``vfr`` and ``warnings``.
    """

    path: str
    analysis_fps: float = 8.0
    size: int = 128
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_analysis_fps(self.analysis_fps)
        check_size(self.size)
        self.path = os.fspath(self.path)
        self._container = _open(self.path)
        stream = self._container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        src_fps = float(rate) if rate else 0.0
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            self._container.close()
            raise VideoError(f"{self.path}: the video stream has no frame size (corrupt header?)")
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif self._container.duration is not None:
            duration = self._container.duration / 1_000_000
        self.info = VideoInfo(
            path=self.path, width=width, height=height, fps=src_fps,
            frames=int(stream.frames or 0), duration_s=max(duration, 0.0), codec=ctx.name or "?",
        )
        base = float(stream.base_rate or stream.guessed_rate or 0)
        self._half = 0.5 / max(src_fps, base) if max(src_fps, base) > 0 else 0.0
        if src_fps <= 0:
            # No rate in the container: follow the timestamps with the asked-for clock.
            self.stride = 1
            self.fps = float(self.analysis_fps or 8.0)
            self.warnings.append(f"{self.path}: the container gives no frame rate; sampling by timestamps at {self.fps:g} fps")
        elif base > 0 and abs(base - src_fps) > 0.01 * src_fps:
            # Average and nominal rates disagree: variable frame rate; a clock at the asked rate.
            self.stride = 1
            self.fps = float(self.analysis_fps) if 0 < self.analysis_fps < base else src_fps
        else:
            self.stride, self.fps, warning = constant_rate_sampling(src_fps, self.analysis_fps)
            if warning:
                self.warnings.append(warning)
        self.width, self.height = working_size(width, height, self.size)
        self.source_frames = 0
        self.source_duration_s = 0.0
        self.vfr = False
        self._stream = stream

    @property
    def damaged(self) -> bool:
        """Whether decoding met damage or truncation (the warnings that say the report covers only
        what was readable) — after iteration."""
        return any("the report covers what was readable" in w for w in self.warnings)

    # Expected number of analysed frames (for the progress bar), from the container.
    @property
    def expected_frames(self) -> int | None:
        if self.info.duration_s > 0:
            return int(math.ceil(self.info.duration_s * self.fps - 1e-6))
        return int(math.ceil(self.info.frames / self.stride)) if self.info.frames else None

    def __iter__(self) -> Iterator[Frame]:
        import av

        stream = self._stream
        stream.thread_type = "AUTO"
        src_fps = self.info.fps
        period = 1.0 / self.fps
        half = self._half or 0.5 * period
        t0 = None
        next_tick = 0.0
        last_t = None
        min_dt, max_dt = math.inf, 0.0
        index = 0
        interp = av.video.reformatter.Interpolation.AREA
        scaler = av.video.reformatter.VideoReformatter()  # keeps its swscale context across frames
        try:
            for frame in self._decode(stream):
                k = self.source_frames
                self.source_frames += 1
                t_abs = frame.time if frame.time is not None else (k / src_fps if src_fps else k * period)
                if t0 is None:
                    t0 = t_abs
                t = t_abs - t0
                if last_t is not None:
                    dt = t - last_t
                    if dt > 0:
                        min_dt, max_dt = min(min_dt, dt), max(max_dt, dt)
                last_t = t
                if min_dt < math.inf and max_dt > 1.5 * min_dt and max_dt - min_dt > 1e-3:
                    self.vfr = True  # the warning, with the range over every frame read, at the end
                # Keep the first frame at or after each tick of the analysis clock (for a
                # constant rate: exactly every stride-th frame); ticks missed in a gap are skipped.
                if t < next_tick - half:
                    continue
                next_tick += period
                while next_tick - half <= t:
                    next_tick += period
                rgb = scaler.reformat(frame, width=self.width, height=self.height, format="rgb24", interpolation=interp).to_ndarray()
                yield Frame(index=index, t=t, rgb=rgb)
                index += 1
        except av.error.FFmpegError as err:
            self.warnings.append(
                f"{self.path}: decoding stopped after {self.source_frames} frames ({_ffmpeg_reason(err)}); "
                "the file looks truncated or corrupt; the report covers what was readable"
            )
        finally:
            if last_t is not None:
                step = 1.0 / src_fps if src_fps else period
                self.source_duration_s = last_t + step
            if self.vfr:
                self.warnings.append(
                    f"{self.path}: variable frame rate (frame intervals from {min_dt * 1000:.1f} to {max_dt * 1000:.1f} ms "
                    f"over the {self.source_frames} frames read); frames are sampled by timestamp and adjacent-frame "
                    "metrics compare unequal time steps"
                )
        listed = self.info.frames
        if listed and self.source_frames < listed - 1 and not any("the report covers" in w for w in self.warnings):
            self.warnings.append(
                f"{self.path}: decoded {self.source_frames} of the {listed} frames the container lists; "
                "the file may be truncated; the report covers what was readable"
            )

    def _decode(self, stream):
        """Decoded frames; a packet that fails to decode is skipped and counted, so damage in
        the middle of a file costs only the frames it touches."""
        import av

        bad, reason = 0, ""
        for packet in self._container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as err:
                bad, reason = bad + 1, _ffmpeg_reason(err)
                continue
            yield from frames
        if bad:
            self.warnings.append(
                f"{self.path}: skipped {bad} undecodable packet(s) ({reason}); the file is damaged; "
                "the report covers what was readable"
            )

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FrameArrayReader:
    """Iterate over the analysed frames of a clip already in memory, as :class:`VideoReader` does
    over a file's: every ``stride``-th frame of the constant-rate clip (:func:`constant_rate_sampling`),
    resized to the working size (:func:`working_size`, :func:`resize_rgb`), with ``t = k / fps`` for
    source frame ``k``. No file, no codec, no PyAV: the frames measured are the ones given.

    Args:
        frames: ``(frames, height, width, 3)`` uint8 RGB numpy array (at least one frame), or a float
            array of that shape in [0, 1] (diffusers' ``output_type="np"``; read as ``round(x · 255)``,
            :func:`check_frames`). Anything else is refused with a :class:`VideoError` (a ``ValueError``):
            lists and tensors (stack them / ``.cpu().numpy()`` first), other dtypes (uint16, bool: scale
            to uint8 0–255), floats outside [0, 1], other shapes (one frame ``(height, width, 3)``, a
            batch of clips ``(batch, frames, height, width, 3)``, grey, RGBA, channels first), no frames.
        fps: the clip's frame rate (frames per second, > 0).
        analysis_fps: frames per second to analyse; ``0`` keeps every frame.
        size: longer side of the working size in pixels.
        name: what messages and the report call the clip (``video``).

    The attributes the meters and the report read are :class:`VideoReader`'s: ``info``
    (``path`` = ``name``, ``codec`` ``"none (frames in memory)"``), ``path``, ``fps`` (effective
    analysis rate), ``stride``, ``width``, ``height``, ``source_frames``, ``source_duration_s``,
    ``vfr`` (always False), ``damaged`` (always False), ``expected_frames`` and ``warnings``. The
    source counts are known before iterating (every frame is there); the array is read, never
    written, and it can be iterated more than once.
    """

    CODEC = "none (frames in memory)"
    damaged = False  # nothing is decoded, so nothing can be damaged

    def __init__(self, frames, fps: float, analysis_fps: float = 8.0, size: int = 128, name: str = "<frames>"):
        self.name = self.path = str(name)
        self.frames = check_frames(frames, self.name)
        if isinstance(fps, (bool, np.bool_)) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"{self.name}: fps must be a positive number of frames per second, got {fps!r}")
        check_analysis_fps(analysis_fps)
        check_size(size)
        self.analysis_fps, self.size = analysis_fps, size
        n, height, width = self.frames.shape[:3]
        src_fps = float(fps)
        self.info = VideoInfo(path=self.name, width=int(width), height=int(height), fps=src_fps, frames=int(n),
                              duration_s=n / src_fps, codec=self.CODEC)
        self.warnings: list[str] = []
        self.stride, self.fps, warning = constant_rate_sampling(src_fps, analysis_fps)
        if warning:
            self.warnings.append(warning)
        self.width, self.height = working_size(int(width), int(height), size)
        self.source_frames = int(n)
        self.source_duration_s = n / src_fps
        self.vfr = False

    @property
    def expected_frames(self) -> int:
        return -(-self.source_frames // self.stride)

    def __iter__(self) -> Iterator[Frame]:
        src_fps = self.info.fps
        for index, k in enumerate(range(0, self.source_frames, self.stride)):
            yield Frame(index=index, t=k / src_fps, rgb=resize_rgb(self.frames[k], self.width, self.height))

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameArrayReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_frames(frames, name: str = "<frames>") -> np.ndarray:
    """``frames`` itself if it is a ``(frames, height, width, 3)`` uint8 numpy array with at least one
    frame of at least one pixel; a float array of that shape in [0, 1] (what diffusers pipelines
    return with ``output_type="np"``, one clip of the batch) as uint8, ``round(x · 255)``; else a
    :class:`VideoError` (a ``ValueError``) naming what was given and what is refused."""
    want = "a uint8 numpy array of shape (frames, height, width, 3), RGB 0-255 (or floats in [0, 1])"
    if not isinstance(frames, np.ndarray):
        kind = f"{type(frames).__module__}.{type(frames).__qualname__}".removeprefix("builtins.")
        hint = ""
        if hasattr(frames, "detach") and hasattr(frames, "cpu"):
            hint = " (a torch tensor: scale to 0-255 and convert with tensor.cpu().numpy().astype(np.uint8))"
        elif isinstance(frames, (list, tuple)):
            hint = " (a list of frames: np.stack it)"
        raise VideoError(f"{name}: frames must be {want}; got {kind}{hint}; lists, tensors and other array types are refused")
    if frames.dtype != np.uint8 and frames.dtype.kind != "f":
        raise VideoError(f"{name}: frames must be {want}; got dtype {frames.dtype} (bool and integer types other than uint8 "
                         "are refused: scale to 0-255 and convert to uint8; floats are read as RGB in [0, 1])")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        hint = ""
        if frames.ndim == 3 and frames.shape[-1] == 3:
            hint = " (one frame: add a frames axis, frames[None])"
        elif frames.ndim == 5 and frames.shape[-1] == 3:
            hint = " (a batch of clips, as a diffusers pipeline's output.frames: measure one clip, frames[0])"
        raise VideoError(f"{name}: frames must be {want}; got shape {tuple(frames.shape)}{hint} (grey, RGBA and "
                         "channels-first frames are refused)")
    if frames.shape[0] == 0:
        raise VideoError(f"{name}: no frames (shape {tuple(frames.shape)}); at least one is needed")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise VideoError(f"{name}: empty frames (shape {tuple(frames.shape)}); frames need at least one pixel")
    if frames.dtype.kind == "f":
        # diffusers' output_type="np" frames: float RGB in [0, 1], as diffusers' own export rounds them.
        # min/max see NaN (it propagates) and inf (out of range) without a mask of the clip's size, and the
        # conversion goes a frame at a time: beside the clip, only its uint8 copy (a quarter of a float32 clip)
        lo, hi = float(frames.min()), float(frames.max())
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi > 1:
            bad = "NaN or inf" if not (math.isfinite(lo) and math.isfinite(hi)) else f"values in [{lo:.4g}, {hi:.4g}]"
            raise VideoError(f"{name}: float frames must be RGB in [0, 1] (diffusers' output_type=\"np\"); got {bad}")
        out = np.empty(frames.shape, dtype=np.uint8)
        for i, frame in enumerate(frames):
            out[i] = np.round(frame.astype(np.float32) * 255)
        return out
    return frames
