"""Temporal coherence of any video: ``vidhash coherence`` and the functions behind it.

    from vidhash.metrics import measure_coherence, measure_coherence_frames
    report = measure_coherence("clip.mp4")        # JSON-ready dict, keys in REPORT_KEYS
    report = measure_coherence_frames(frames, 8)  # the same of a uint8 (T, H, W, 3) array at 8 fps, no PyAV

Modules: ``video`` (streaming decode; frames in memory), ``short_range`` (flicker, warping error, motion,
SSIM/PSNR, smoothness), ``long_range`` (drift over lags, start vs end, cuts), ``revisit``
(same-pose pairs), ``features`` (optional learned features from local weights), ``report``
(table and plot), ``coherence`` (one pass over a video), ``synthetic`` (clips with known
defects, for the validation tests and the benchmark), ``realism`` (no-reference realism of
world frames). The command itself is ``vidhash.cli.coherence``.
"""
from vidhash.metrics.coherence import REPORT_KEYS, CoherenceOptions, measure_coherence, measure_coherence_frames
from vidhash.metrics.long_range import DriftMeter, FrameStats, Keyframe, detect_cuts, distances, log_slope
from vidhash.metrics.report import format_table, plot_reports
from vidhash.metrics.revisit import Poses, RevisitMeter, load_poses
from vidhash.metrics.short_range import (
    GaussianStats,
    ShortRangeMeter,
    flow_dis,
    occlusion_mask,
    psnr,
    ssim,
    warp,
    warping_error,
    zncc,
)
from vidhash.metrics.video import Frame, FrameArrayReader, VideoError, VideoInfo, VideoReader, working_size

__all__ = [
    "REPORT_KEYS", "CoherenceOptions", "DriftMeter", "Frame", "FrameArrayReader", "FrameStats", "GaussianStats", "Keyframe", "Poses",
    "RevisitMeter", "ShortRangeMeter", "VideoError", "VideoInfo", "VideoReader", "detect_cuts", "distances",
    "flow_dis", "format_table", "load_poses", "log_slope", "measure_coherence", "measure_coherence_frames", "occlusion_mask", "plot_reports",
    "psnr", "ssim", "warp", "warping_error", "working_size", "zncc",
]
