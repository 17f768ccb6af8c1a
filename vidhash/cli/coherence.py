"""Temporal coherence of any video, from one frame to the next and across minutes.

    vidhash coherence clip.mp4
    vidhash coherence a.mp4 b.mp4 --json report.json --plot curves.png
    vidhash coherence clip.mp4 --poses clip.poses.json --analysis-fps 8 --size 128

Decodes each video once, streaming (constant memory on hour-long files), and prints one
table with a column per video. ``--json`` writes the report (one object for one video, a list
for several; keys documented in ``vidhash.metrics.coherence``), ``--plot`` a PNG of the curves.
Nothing is downloaded; learned-feature consistency runs only with ``--features-weights``.
Exit status: 0 when every video was measured (warnings included), 2 when any could not be.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from vidhash.cli import path_arg

__all__ = ["add_arguments", "check_arguments", "run"]

_MAX_THREADS = 256


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "examples:\n"
        "  vidhash coherence clip.mp4\n"
        "  vidhash coherence a.mp4 b.mp4 --json report.json --plot curves.png\n"
        "  vidhash coherence clip.mp4 --poses clip.poses.json\n\n"
        "poses file: a JSON list with one pose per video frame ([[x, y], ...]), or\n"
        '{"poses": [...], "fps": 8} when the poses have their own rate.\n'
        "learned features (off by default, never downloaded): --features-weights ENCODER.pt2,\n"
        "a local torch.export (.pt2) or TorchScript image encoder taking (batch, 3, 224, 224);\n"
        "see vidhash.metrics.features for how to export DINOv2 or CLIP once."
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (mp4, mkv, webm, ...)")
    p.add_argument("--poses", metavar="JSON", type=path_arg, help="per-frame poses of the video(s), to score revisits of the same place")
    p.add_argument("--json", metavar="PATH", type=path_arg, help="write the JSON report here")
    p.add_argument("--plot", metavar="PATH", type=path_arg, help="write a PNG of the curves here")
    p.add_argument("--analysis-fps", type=float, default=8.0, metavar="F",
                   help="frames per second to analyse (source fps / an integer stride; 0 = every frame; default 8)")
    p.add_argument("--size", type=int, default=128, metavar="PX", help="longer side of the working size in pixels (default 128)")
    p.add_argument("--max-lag", type=int, default=600, metavar="S", help="longest drift lag in seconds (default 600)")
    p.add_argument("--pose-tol", type=float, default=0.5, metavar="D",
                   help="two frames are at the same pose when every pose component differs by at most D (default 0.5)")
    p.add_argument("--min-revisit-gap", type=float, default=1.0, metavar="S",
                   help="shortest time gap of a revisit pair in seconds (default 1)")
    p.add_argument("--features-weights", metavar="PATH", type=path_arg, help="local exported image encoder (DINOv2 or CLIP; .pt2 or TorchScript) for VBench-style consistency")
    p.add_argument("--features-kind", choices=("dino", "clip"), default="dino", help="input normalisation of the encoder (default dino)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="OpenCV threads (default 1: at 128 px a second thread gains little and PyAV decodes on the other core; 0 = OpenCV's choice)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show a progress bar")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")


def check_arguments(args: argparse.Namespace) -> None:
    """Every flag checked before any video is read; ValueError naming the flag."""
    from vidhash.metrics.video import check_size

    check_size(args.size)
    if not (math.isfinite(args.analysis_fps) and args.analysis_fps >= 0):
        raise ValueError(f"--analysis-fps must be positive (or 0 for every frame), got {args.analysis_fps:g}")
    if args.max_lag < 1:
        raise ValueError(f"--max-lag must be at least 1 second, got {args.max_lag}")
    if not 0 <= args.threads <= _MAX_THREADS:
        raise ValueError(f"--threads must be 0 (OpenCV's choice) or a count of 1 to {_MAX_THREADS}, got {args.threads}")
    for flag, value in (("--pose-tol", args.pose_tol), ("--min-revisit-gap", args.min_revisit_gap)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{flag} must be a non-negative number, got {value:g}")
    _check_outputs(args)
    if args.poses:
        _check_poses(args.poses)


def _check_poses(path: str) -> None:
    if os.path.isdir(path):
        raise ValueError(f"--poses {path} is a directory, not a poses JSON file")
    if not os.path.exists(path):
        raise ValueError(f"--poses {path}: no such file")


def _check_outputs(args: argparse.Namespace) -> None:
    """--json and --plot may not name an input (a video, the poses, the encoder) or each other; each
    must be a file that can be created in an existing folder (:func:`vidhash.files.check_output_file`),
    and --plot a format matplotlib saves (:func:`_check_plot`)."""
    from vidhash.files import check_output_file

    inputs = [("input video", v) for v in args.videos]
    inputs += [(flag, path) for flag, path in (("--poses", args.poses), ("--features-weights", args.features_weights)) if path]
    outputs = [(flag, path) for flag, path in (("--json", args.json), ("--plot", args.plot)) if path]
    for i, (flag, out) in enumerate(outputs):
        for what, other in inputs + outputs[:i]:
            if _same_file(out, other):
                raise ValueError(f"{flag} {out} is the {what} {other}; writing it would overwrite "
                                 f"{'the input' if (what, other) in inputs else 'the other output'}: pick another path")
    for flag, out in outputs:
        check_output_file(out, flag)
    if args.plot:
        _check_plot(args.plot)


def _check_plot(path: str) -> None:
    """``--plot PATH``: matplotlib importable, and PATH's suffix a format it saves (``savefig`` picks
    the format from it; without one it would add ``.png`` to the name)."""
    suffix = os.path.splitext(path)[1].lower()
    if not suffix:
        raise ValueError(f"--plot {path} needs a file suffix: .png (or another format matplotlib saves: .pdf, .svg, ...)")
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install matplotlib)") from None
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix[1:] not in formats:
        raise ValueError(f"--plot {path}: matplotlib cannot save '{suffix}' files; use one of "
                         f"{', '.join('.' + f for f in sorted(formats))}")


def _same_file(a: str, b: str) -> bool:
    """The same file (through links too), or the same path when either does not exist yet."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _load_poses(path: str):
    """:func:`vidhash.metrics.revisit.load_poses` with its errors naming --poses."""
    from vidhash.metrics.revisit import load_poses

    try:
        return load_poses(path)
    except (ValueError, OSError) as err:
        message = str(err) if isinstance(err, ValueError) else err.strerror or str(err)
        raise ValueError(f"--poses {message}" if message.startswith(f"{path}:") else f"--poses {path}: {message}") from None


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    import av
    import cv2

    from vidhash.files import write_atomic, write_json
    from vidhash.metrics.coherence import CoherenceOptions, measure_coherence
    from vidhash.metrics.report import format_table, plot_reports

    if args.threads > 0:
        cv2.setNumThreads(args.threads)
    poses = _load_poses(args.poses) if args.poses else None
    model = None
    if args.features_weights:
        from vidhash.metrics.features import load_feature_model

        model = load_feature_model(args.features_weights)
    opts = CoherenceOptions(
        analysis_fps=args.analysis_fps, size=args.size, max_lag_s=args.max_lag, pose_tol=args.pose_tol,
        min_revisit_gap_s=args.min_revisit_gap, progress=args.progress,
    )
    reports, failed = [], 0
    for path in args.videos:
        features = None
        if model is not None:
            from vidhash.metrics.features import FeatureMeter

            features = FeatureMeter(model, kind=args.features_kind, weights=args.features_weights)
        try:
            report = measure_coherence(path, opts, poses=poses, features=features)
        except (ValueError, OSError, av.error.FFmpegError, cv2.error) as err:
            print(f"vidhash coherence: error: {err}", file=sys.stderr)
            failed += 1
            continue
        for w in report["warnings"]:
            print(f"vidhash coherence: warning: {w}", file=sys.stderr)
        reports.append(report)
    if reports:
        print(format_table(reports))
        if args.json:
            write_json(args.json, reports[0] if len(args.videos) == 1 else reports, indent=1, ensure_ascii=False)
            print(f"report: {args.json}")
        if args.plot:
            write_atomic(args.plot, lambda tmp: plot_reports(reports, tmp))
            print(f"plot: {args.plot}")
    if failed:
        print(f"vidhash coherence: {failed} of {len(args.videos)} video(s) could not be measured", file=sys.stderr)
        return 2
    return 0

