"""Temporal coherence of one video, in one streaming pass: ``measure_coherence(path) -> dict``.

    from vidhash.metrics import measure_coherence
    report = measure_coherence("clip.mp4", analysis_fps=8, size=128)
    report["warp_error"]["mean"], report["drift"]["slope_per_decade"]["delta_e"]

Frames already in memory (a uint8 ``(frames, height, width, 3)`` RGB array, e.g. a generator's
output) are measured as they are, with no mp4 round trip (no codec loss) and no PyAV:
``measure_coherence_frames(frames, fps, opts)`` — the same report, from
:class:`~vidhash.metrics.video.FrameArrayReader` (``video`` is the clip's ``name``, ``source.codec``
``"none (frames in memory)"``, ``timing.decode_s`` the resizing).

The report is a JSON-ready dict. Its top-level keys are stable (``REPORT_KEYS``; ``revisit``
only with poses, ``features`` only with learned-feature weights):

==================  =============================================================================
key                 meaning
==================  =============================================================================
``video``           path of the video
``frames``          number of analysed frames
``fps``             analysis rate actually used (source fps / an integer stride)
``duration_s``      duration decoded from the source, seconds
``size``            working size ``[width, height]`` (longer side = ``--size``)
``source``          ``width, height, fps, frames`` (decoded), ``codec``, ``vfr``
``flicker``         mean absolute difference of adjacent frames, RGB 0–255: ``mean, p95, max``;
                    ``brightness_jitter`` = mean |L(t) − (L(t−1)+L(t+1))/2| of mean luma
``warp_error``      Lai et al. (2018) warping error, squared RGB L2 in [0, 1] over non-occluded
                    pixels: ``mean, p95, max``; ``occluded_fraction``
``motion``          optical-flow magnitude, pixels per analysed frame at the working size:
                    ``mean_px, p95_px, max_px``; ``frozen_fraction`` = share of adjacent pairs
                    with no visible change (mean abs diff < 0.5)
``ssim_adjacent``   SSIM of adjacent frames (luma): ``mean, min, p05``
``psnr_adjacent``   PSNR of adjacent frames, dB (identical frames count as 100): ``mean, min, p05``
``smoothness``      1 − error of flow-based midpoint interpolation / 255: ``mean, min, p05``
``drift``           keyframes once a second: ``lags_s``, ``pairs``, ``by_lag`` (mean distance at each
                    lag), ``slope_per_decade`` (against log10 lag), ``from_first`` (distance of each
                    keyframe from the first, with ``t_s``), ``end_vs_first``; each distance as
                    ``ssim_dist`` (1 − SSIM), ``hist_dist`` (colour-histogram TV, 0–1), ``delta_e``
                    (CIE76 ΔE between mean Lab colours)
``start_end``       first vs last ``window_s`` seconds: ``brightness`` (L*), ``chroma``,
                    ``sharpness`` (variance of Laplacian), each ``start, end, delta, rel_delta``
``cuts``            hard cuts: ``count``, ``times_s`` (time of the first frame after each cut)
``revisit``         with poses: ``pairs``, ``psnr``, ``ssim`` and ``by_gap`` rows
                    (``gap_s`` [lo, hi), ``pairs``, ``candidates``, ``psnr``, ``ssim``)
``features``        with ``--features-weights``: VBench-style ``consistency`` and
                    ``first_frame_similarity``
``series``          per-second means for plotting: ``t_s, flicker, warp_error, motion,
                    ssim_adjacent, smoothness``
``timing``          seconds spent: ``decode_s, short_range_s, long_range_s, total_s``
``warnings``        what was odd about the input (truncated file, variable frame rate, …)
==================  =============================================================================

Values that cannot be computed (one frame has no neighbours) are ``null``, with a warning.
Memory does not depend on the length of the video beyond a few numbers per analysed frame.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import cv2
import numpy as np

from vidhash.metrics.long_range import DriftMeter, FrameStats, detect_cuts
from vidhash.metrics.revisit import Poses, RevisitMeter
from vidhash.metrics.short_range import ShortRangeMeter
from vidhash.metrics.video import FrameArrayReader, VideoError, VideoReader

__all__ = ["REPORT_KEYS", "CoherenceOptions", "measure_coherence", "measure_coherence_frames"]

REPORT_KEYS = (
    "video", "frames", "fps", "duration_s", "size", "source", "flicker", "warp_error", "motion",
    "ssim_adjacent", "psnr_adjacent", "smoothness", "drift", "start_end", "cuts", "series", "timing", "warnings",
)
FROZEN_DIFF = 0.5  # mean abs difference (0-255) below which two frames count as the same


@dataclass
class CoherenceOptions:
    """Knobs of :func:`measure_coherence` (the CLI flags of the same names)."""

    analysis_fps: float = 8.0
    size: int = 128
    max_lag_s: int = 600
    pose_tol: float = 0.5
    min_revisit_gap_s: float = 1.0
    progress: bool | None = None  # None: a bar on long videos when stderr is a terminal


def _summary(values: list[float], *, low: bool = False, suffix: str = "") -> dict:
    """mean/p95/max (or mean/min/p05 with low=True) of a series; nulls when empty."""
    if not values:
        keys = ("mean", "min", "p05") if low else ("mean", "p95", "max")
        return {k + suffix: None for k in keys}
    v = np.asarray(values, dtype=np.float64)
    if low:
        return {"mean" + suffix: float(v.mean()), "min" + suffix: float(v.min()), "p05" + suffix: float(np.percentile(v, 5))}
    return {"mean" + suffix: float(v.mean()), "p95" + suffix: float(np.percentile(v, 95)), "max" + suffix: float(v.max())}


def _per_second(t: np.ndarray, values: list[float], n: int) -> list[float | None]:
    """Mean of ``values`` (one per time in t) in each of ``n`` whole seconds."""
    out: list[float | None] = [None] * n
    if not values:
        return out
    sec = np.floor(t[: len(values)]).astype(np.int64)
    sums = np.bincount(sec, weights=np.asarray(values), minlength=n)
    counts = np.bincount(sec, minlength=n)
    return [float(s / c) if c else None for s, c in zip(sums, counts)]


def _plan_revisits(reader: VideoReader | FrameArrayReader, poses: Poses, opts: CoherenceOptions) -> RevisitMeter:
    src_fps = reader.info.fps or reader.fps
    pose_fps = poses.fps or src_fps
    covered_s = len(poses) / pose_fps
    listed = reader.info.frames
    if listed:
        expect = len(poses) * src_fps / pose_fps
        if abs(listed - expect) > max(1.0, 0.01 * listed):
            raise ValueError(
                f"{poses.path}: {len(poses)} poses at {pose_fps:g} fps cover {covered_s:.2f} s, but {reader.path} has "
                f"{listed} frames at {src_fps:g} fps ({listed / src_fps:.2f} s); give one pose per video frame, "
                'or set "fps" in the poses file'
            )
    n = int(math.ceil(covered_s * reader.fps - 1e-6))
    times = np.arange(n, dtype=np.float64) / reader.fps
    return RevisitMeter(poses, times, pose_fps, tol=opts.pose_tol, min_gap_s=opts.min_revisit_gap_s)


def measure_coherence(
    path: str,
    opts: CoherenceOptions | None = None,
    poses: Poses | None = None,
    features=None,
) -> dict:
    """Measure one video in a single streaming pass; see the module docstring for the report.

    Args:
        path: the video file.
        opts: analysis rate, working size, lags, pose tolerance, progress bar.
        poses: per-frame poses (:func:`vidhash.metrics.load_poses`) to score revisits.
        features: a :class:`vidhash.metrics.features.FeatureMeter` to add learned-feature
            consistency, or None.

    Raises:
        VideoError: the file cannot be read, or holds no decodable frame.
        ValueError: the poses do not match the video.
    """
    opts = opts or CoherenceOptions()
    t_start = time.perf_counter()
    with VideoReader(path, analysis_fps=opts.analysis_fps, size=opts.size) as reader:
        return _measure(reader, path, opts, poses, features, t_start)


def measure_coherence_frames(
    frames: np.ndarray,
    fps: float,
    opts: CoherenceOptions | None = None,
    poses: Poses | None = None,
    features=None,
    *,
    name: str = "<frames>",
) -> dict:
    """:func:`measure_coherence` of a clip in memory: ``frames`` ``(frames, height, width, 3)`` uint8
    RGB at ``fps`` frames per second, measured as given (no file, no codec, no PyAV), sampled and
    resized as a constant-rate file of those frames would be (:class:`FrameArrayReader`).

    Args:
        frames: the clip; other dtypes, shapes and types are refused (see :class:`FrameArrayReader`).
        fps: the clip's frame rate.
        opts, poses, features: as for :func:`measure_coherence`.
        name: what the report (``video``) and messages call the clip.

    Raises:
        VideoError: (a ``ValueError``) ``frames`` is not such an array, or holds no frame.
        ValueError: a bad ``fps``, analysis rate or size; the poses do not match the clip.
    """
    opts = opts or CoherenceOptions()
    t_start = time.perf_counter()
    with FrameArrayReader(frames, fps, analysis_fps=opts.analysis_fps, size=opts.size, name=name) as reader:
        return _measure(reader, name, opts, poses, features, t_start)


def _measure(reader: VideoReader | FrameArrayReader, path, opts: CoherenceOptions, poses: Poses | None, features,
             t_start: float) -> dict:
    """The report of one open reader (``path``: what the report calls the video)."""
    # 1. one streaming pass through every meter
    meters = _Meters(reader, opts, poses, features)
    meters.run(reader, opts, path)
    # 2. what was odd about the input
    warnings = _input_warnings(reader, path, poses, len(meters.times))
    total = time.perf_counter() - t_start
    # 3. the report, measure by measure
    t = np.asarray(meters.times)
    pair_t = t[1:] if t.size > 1 else t[:0]
    cuts = detect_cuts(meters.short.cut_score, reader.fps)
    report = {
        **_source_report(reader, path, len(meters.times)),
        **_short_range_report(meters.short),
        "drift": meters.drift.result(),
        "start_end": meters.stats.start_end(),
        "cuts": {"count": len(cuts), "times_s": [float(pair_t[i]) for i in cuts]},
    }
    if meters.revisit is not None:
        report["revisit"] = meters.revisit.result()
    if features is not None:
        report["features"] = features.result()
    report["series"] = _series(meters.short, t, pair_t)
    report["timing"] = {
        "decode_s": max(0.0, total - meters.t_short - meters.t_long), "short_range_s": meters.t_short,
        "long_range_s": meters.t_long, "total_s": total,
    }
    report["warnings"] = warnings
    return _round(report)


class _Meters:
    """Every meter of one video, fed frame by frame (:meth:`run`): short range (adjacent frames),
    drift (keyframes), start/end statistics, revisits (with poses), learned features (optional).
    ``times``: each analysed frame's time; ``t_short``, ``t_long``: seconds in the meters."""

    def __init__(self, reader: VideoReader | FrameArrayReader, opts: CoherenceOptions, poses: Poses | None, features):
        self.short = ShortRangeMeter()
        self.drift = DriftMeter(max_lag_s=opts.max_lag_s)
        self.stats = FrameStats()
        self.revisit = _plan_revisits(reader, poses, opts) if poses is not None else None
        self.features = features
        self.times: list[float] = []
        self.t_short = self.t_long = 0.0

    def run(self, reader: VideoReader | FrameArrayReader, opts: CoherenceOptions, path) -> None:
        """Every frame of ``reader`` through the meters, with a progress bar on long videos."""
        expected = reader.expected_frames
        show = opts.progress if opts.progress is not None else (sys.stderr.isatty() and (expected or 0) > 600)
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=expected, unit="frame", desc=str(path)[-40:], leave=False, file=sys.stderr)
        try:
            for frame in reader:
                self.update(frame)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()

    def update(self, frame) -> None:
        a = time.perf_counter()
        self.short.update(frame.rgb)
        b = time.perf_counter()
        is_key = self.drift.update(frame.rgb, frame.t)
        self.stats.update(frame.rgb, frame.t)
        if self.revisit is not None:
            g = cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2GRAY)
            self.revisit.update(frame.index, frame.rgb, g)
        if self.features is not None:
            self.features.update(frame.rgb, frame.t, is_key)
        self.t_short += b - a
        self.t_long += time.perf_counter() - b
        self.times.append(frame.t)


def _input_warnings(reader: VideoReader | FrameArrayReader, path, poses: Poses | None, frames: int) -> list[str]:
    """The reader's warnings and the report's own (one frame; poses that do not cover the video;
    variable frame rate with poses); VideoError when no frame was decoded; ValueError when the
    poses' count disagrees with an undamaged video whose container listed no frame count."""
    warnings = list(reader.warnings)
    if not frames:
        raise VideoError(f"{path}: no frames could be decoded (the video stream is empty, truncated or damaged)")
    if frames == 1:
        warnings.append(f"{path}: only one frame; frame-to-frame metrics need two and are null")
    if poses is not None:
        src_fps = reader.info.fps or reader.fps
        pose_fps = poses.fps or src_fps
        covered = len(poses) / pose_fps
        expect = len(poses) * src_fps / pose_fps
        if not reader.info.frames and not reader.damaged and not reader.vfr and reader.info.fps \
                and abs(reader.source_frames - expect) > max(1.0, 0.01 * reader.source_frames):
            # the container listed no frame count (a fragmented mp4, as `vidhash generate` writes):
            # the same check as before decoding, on the frames decoded from an undamaged stream
            raise ValueError(
                f"{poses.path}: {len(poses)} poses at {pose_fps:g} fps cover {covered:.2f} s, but {reader.path} has "
                f"{reader.source_frames} frames at {src_fps:g} fps ({reader.source_frames / src_fps:.2f} s); give one "
                'pose per video frame, or set "fps" in the poses file'
            )
        if abs(covered - reader.source_duration_s) > 1.0 / src_fps + 1e-6:
            warnings.append(
                f"{poses.path}: poses cover {covered:.2f} s but {reader.source_duration_s:.2f} s of video were decoded; "
                "revisits are scored where both exist"
            )
        if reader.vfr:
            warnings.append("variable frame rate: revisit poses are matched to frames by nominal time")
    return warnings


def _source_report(reader: VideoReader | FrameArrayReader, path, frames: int) -> dict:
    """``video`` … ``source``: what was analysed, and of what."""
    return {
        "video": str(path),
        "frames": frames,
        "fps": reader.fps,
        "duration_s": reader.source_duration_s,
        "size": [reader.width, reader.height],
        "source": {
            "width": reader.info.width, "height": reader.info.height, "fps": reader.info.fps,
            "frames": reader.source_frames, "codec": reader.info.codec, "vfr": reader.vfr,
        },
    }


def _short_range_report(short: ShortRangeMeter) -> dict:
    """``flicker`` … ``smoothness``: adjacent-frame measures."""
    return {
        "flicker": {**_summary(short.flicker), "brightness_jitter": _mean(short.brightness_jitter)},
        "warp_error": {**_summary(short.warp_error), "occluded_fraction": _mean(short.occluded)},
        "motion": {
            **_summary(short.motion, suffix="_px"),
            "frozen_fraction": _mean([float(f < FROZEN_DIFF) for f in short.flicker]),
        },
        "ssim_adjacent": _summary(short.ssim, low=True),
        "psnr_adjacent": _summary(short.psnr, low=True),
        "smoothness": _summary(short.smoothness, low=True),
    }


def _series(short: ShortRangeMeter, t: np.ndarray, pair_t: np.ndarray) -> dict:
    """Per-second means for plotting (frame times ``t``; ``pair_t``: the later frame of each pair)."""
    n_s = int(math.floor(t[-1])) + 1
    return {
        "t_s": [float(s) for s in range(n_s)],
        "flicker": _per_second(pair_t, short.flicker, n_s),
        "warp_error": _per_second(pair_t, short.warp_error, n_s),
        "motion": _per_second(pair_t, short.motion, n_s),
        "ssim_adjacent": _per_second(pair_t, short.ssim, n_s),
        "smoothness": _per_second(t[1:-1], short.smoothness, n_s),
    }


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _round(obj, digits: int = 6):
    """Round floats to ``digits`` significant digits (and NaN/inf to None) for a tidy JSON."""
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: _round(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v, digits) for v in obj]
    if isinstance(obj, np.generic):
        return _round(obj.item(), digits)
    return obj
