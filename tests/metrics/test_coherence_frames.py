"""Coherence of frames already in memory (FrameArrayReader, measure_coherence_frames): the analysed
frames, rate and striding a file of the same frames gives, the working-size resize, a static clip,
bad inputs — and no PyAV on the way."""
import sys

import cv2
import numpy as np
import pytest

from vidhash.metrics import (
    REPORT_KEYS,
    CoherenceOptions,
    FrameArrayReader,
    Poses,
    VideoError,
    measure_coherence,
    measure_coherence_frames,
    working_size,
)
from vidhash.metrics.synthetic import synthetic_clip, write_video

OPTS = CoherenceOptions(size=32, progress=False)


def _clip(kind="pan", seconds=2.0, fps=8.0, size=32) -> np.ndarray:
    return np.stack(synthetic_clip(kind, seconds=seconds, fps=fps, size=size)[0])


def _luma(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)


@pytest.mark.parametrize("src_fps, asked", [(24, 8), (30, 8), (8, 8), (8, 0), (12, 30)],
                         ids=["24to8", "30to7.5", "same", "all", "above-source"])
def test_frames_are_sampled_as_the_file_reader_samples_an_mp4_of_them(tmp_path, src_fps, asked):
    """The same stride, rate, times, counts, warnings and working size as VideoReader on an mp4 of the
    same frames; the pixels the same up to the codec's loss (luma)."""
    pytest.importorskip("av")
    from vidhash.metrics import VideoReader

    frames = _clip(fps=src_fps)
    with VideoReader(write_video(str(tmp_path / "v.mp4"), list(frames), fps=src_fps), analysis_fps=asked, size=32) as file:
        from_file = list(file)
    memory = FrameArrayReader(frames, src_fps, analysis_fps=asked, size=32)
    assert memory.expected_frames == file.expected_frames
    got = list(memory)
    assert (memory.stride, memory.fps, memory.width, memory.height) == (file.stride, file.fps, file.width, file.height)
    assert len(got) == len(from_file) and [f.index for f in got] == [f.index for f in from_file]
    assert [f.t for f in got] == pytest.approx([f.t for f in from_file], abs=1e-3)
    assert memory.source_frames == file.source_frames == len(frames)
    assert memory.source_duration_s == pytest.approx(file.source_duration_s, abs=1e-3)
    assert memory.warnings == file.warnings and not memory.vfr and not memory.damaged
    assert (memory.info.width, memory.info.height, memory.info.frames) == (file.info.width, file.info.height, file.info.frames)
    assert memory.info.fps == pytest.approx(file.info.fps)
    for a, b in zip(got, from_file):
        assert a.rgb.shape == b.rgb.shape and a.rgb.dtype == np.uint8
        assert np.abs(_luma(a.rgb) - _luma(b.rgb)).mean() < 3  # H.264 at crf 12 (yuv420: chroma loses more)


def test_frames_at_the_working_size_are_the_given_ones_or_their_area_resize():
    frames = _clip(size=32)
    same = list(FrameArrayReader(frames, 8, analysis_fps=0, size=32))
    assert all(np.array_equal(f.rgb, frames[k]) for k, f in enumerate(same))
    same[0].rgb[:] = 0  # a copy: the caller's clip is never written
    assert frames[0].any()
    wide = np.ascontiguousarray(np.concatenate([frames, frames[:, :, :16]], axis=2)[:, :30])  # (16, 30, 48, 3)
    reader = FrameArrayReader(wide, 8, analysis_fps=4, size=32)
    assert (reader.width, reader.height) == working_size(48, 30, 32) == (32, 20) and reader.stride == 2
    for f in reader:
        expect = cv2.resize(wide[2 * f.index], (32, 20), interpolation=cv2.INTER_AREA)
        assert f.rgb.shape == (20, 32, 3) and np.array_equal(f.rgb, expect) and f.t == 2 * f.index / 8


def test_report_matches_the_file_report_in_everything_but_the_codec(tmp_path):
    """measure_coherence_frames gives the file report's keys, counts, rate and size; the file's
    numbers differ by the codec's loss only (a static clip: exactly zero in memory)."""
    pytest.importorskip("av")
    frames = _clip("pan", seconds=3)
    mine = measure_coherence_frames(frames, 8, OPTS, name="pan")
    theirs = measure_coherence(write_video(str(tmp_path / "pan.mp4"), list(frames), fps=8), OPTS)
    assert list(mine) == list(theirs) and set(REPORT_KEYS) <= set(mine)
    for key in ("frames", "fps", "duration_s", "size", "cuts", "warnings"):
        assert mine[key] == theirs[key], key
    assert mine["video"] == "pan" and mine["source"] == {**theirs["source"], "codec": FrameArrayReader.CODEC}
    assert mine["motion"]["mean_px"] == pytest.approx(theirs["motion"]["mean_px"], rel=0.05)  # 0.8 px a frame
    assert mine["ssim_adjacent"]["mean"] == pytest.approx(theirs["ssim_adjacent"]["mean"], abs=0.02)


def test_a_static_clip_has_no_flicker_and_no_motion():
    report = measure_coherence_frames(_clip("static"), 8, OPTS)
    assert report["flicker"]["mean"] == report["flicker"]["max"] == report["flicker"]["brightness_jitter"] == 0
    assert report["warp_error"]["mean"] == 0 and report["motion"]["max_px"] == 0
    assert report["motion"]["frozen_fraction"] == 1 and report["ssim_adjacent"]["min"] == 1
    assert report["frames"] == 16 and report["warnings"] == []


def test_flicker_is_seen_in_memory_as_in_a_file():
    flicker = measure_coherence_frames(_clip("flicker"), 8, OPTS)["flicker"]["mean"]
    pan = measure_coherence_frames(_clip("pan"), 8, OPTS)["flicker"]["mean"]
    assert flicker > pan + 3


def test_no_pyav_on_this_path(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed (import -> ImportError)
    report = measure_coherence_frames(_clip(), 8, OPTS)
    assert report["frames"] == 16 and report["flicker"]["mean"] > 0


def test_one_frame_and_poses():
    one = measure_coherence_frames(_clip()[:1], 8, OPTS, name="still")
    assert one["frames"] == 1 and one["flicker"]["mean"] is None and any("still: only one frame" in w for w in one["warnings"])
    frames = _clip("return", seconds=4)
    _, path = synthetic_clip("return", seconds=4, fps=8, size=32)
    revisit = measure_coherence_frames(frames, 8, OPTS, poses=Poses(path, fps=8.0, path="p.json"))["revisit"]
    assert revisit["pairs"] > 0 and revisit["psnr"] > 35
    with pytest.raises(ValueError, match=r"p\.json: 16 poses .* but clip has 32 frames"):
        measure_coherence_frames(frames, 8, OPTS, poses=Poses(path[:16], fps=8.0, path="p.json"), name="clip")


_OK = np.zeros((4, 16, 16, 3), np.uint8)


@pytest.mark.parametrize("frames, match", [
    (list(_OK), r"got list \(a list of frames: np\.stack it\)"),
    ("clip.mp4", "got str"),
    (np.full((4, 16, 16, 3), 2.0, np.float32), r"float frames must be RGB in \[0, 1\].*values in \[2, 2\]"),
    (np.full((4, 16, 16, 3), np.nan), "NaN or inf"),
    (_OK.astype(np.uint16), "got dtype uint16"),
    (_OK.astype(bool), "got dtype bool"),
    (_OK[0], r"got shape \(16, 16, 3\) \(one frame: add a frames axis"),
    (_OK[..., 0], r"got shape \(4, 16, 16\)"),
    (np.zeros((4, 16, 16, 4), np.uint8), r"got shape \(4, 16, 16, 4\)"),
    (np.zeros((4, 3, 16, 16), np.uint8), "channels-first"),
    (_OK[:0], r"no frames \(shape \(0, 16, 16, 3\)\)"),
    (_OK[:, :0], "empty frames"),
    # a diffusers batch (output.frames, not output.frames[0]) and float clips of a bad shape: the shape is named,
    # not the float dtype (floats in [0, 1] are read)
    (np.zeros((1, 4, 16, 16, 3), np.float32), r"got shape \(1, 4, 16, 16, 3\) \(a batch of clips.*frames\[0\]"),
    (np.zeros((2, 4, 16, 16, 3), np.uint8), r"got shape \(2, 4, 16, 16, 3\) \(a batch of clips"),
    (np.zeros((16, 16, 3), np.float32), r"got shape \(16, 16, 3\) \(one frame: add a frames axis"),
    (np.zeros((0, 16, 16, 3), np.float32), r"no frames \(shape \(0, 16, 16, 3\)\)"),
    (np.zeros((4, 16, 16, 4), np.float16), r"got shape \(4, 16, 16, 4\)"),
], ids=["list", "str", "float-range", "float-nan", "uint16", "bool", "one-frame", "grey", "rgba", "channels-first", "no-frames",
        "no-pixels", "float-batch", "uint8-batch", "float-one-frame", "float-no-frames", "float-rgba"])
def test_bad_frames_are_refused_with_what_is_wrong(frames, match):
    with pytest.raises(VideoError, match=match) as err:
        measure_coherence_frames(frames, 8, OPTS, name="gen")
    assert isinstance(err.value, ValueError) and str(err.value).startswith("gen: ")


def test_diffusers_float_frames_are_read_as_their_uint8():
    """A diffusers pipeline's output_type="np" clip (float RGB in [0, 1]) measures as round(x * 255)."""
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    as_float = clip.astype(np.float32) / 255
    a = measure_coherence_frames(clip, 8, OPTS, name="c")
    b = measure_coherence_frames(as_float, 8, OPTS, name="c")
    assert a["flicker"]["mean"] > 0 and a["flicker"] == b["flicker"] and a["motion"] == b["motion"]


def test_float_frames_convert_without_copies_of_the_whole_clip():
    """A long diffusers clip (float32) costs its uint8 copy and a frame, not ~2.25x the clip in float
    temporaries (astype, * 255, round, an isfinite mask); the same values as round(x * 255)."""
    import tracemalloc

    from vidhash.metrics.video import check_frames

    clip = np.random.default_rng(0).random((64, 48, 64, 3), dtype=np.float32)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        got = check_frames(clip)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(got, np.round(clip * 255).astype(np.uint8))
    assert peak < clip.nbytes / 4 + 16 * clip[0].nbytes, (peak, clip.nbytes)


def test_a_tensor_is_refused_with_how_to_convert_it():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"torch\.Tensor \(a torch tensor: .*\.cpu\(\)\.numpy\(\)"):
        measure_coherence_frames(torch.zeros(4, 16, 16, 3, dtype=torch.uint8), 8, OPTS)


@pytest.mark.parametrize("fps, opts, match", [
    (0, OPTS, "fps must be a positive number"), (-8, OPTS, "fps must be a positive number"),
    (float("nan"), OPTS, "fps must be a positive number"), (True, OPTS, "fps must be a positive number"),
    ("8", OPTS, "fps must be a positive number"), (8, CoherenceOptions(size=8), "--size must be at least 16"),
    (8, CoherenceOptions(analysis_fps=-1), "--analysis-fps"),
])
def test_bad_rates_and_sizes(fps, opts, match):
    with pytest.raises(ValueError, match=match):
        measure_coherence_frames(_OK, fps, opts)


@pytest.mark.parametrize("analysis_fps", ["8", None, [8]])
def test_an_analysis_rate_that_is_no_number_is_refused_by_name(analysis_fps):
    with pytest.raises(ValueError, match="--analysis-fps must be a number"):
        measure_coherence_frames(_OK, 8, CoherenceOptions(analysis_fps=analysis_fps, progress=False))


def test_a_fraction_rate_is_a_rate():
    """24000/1001 as a Fraction (PyAV's average_rate) is the 23.976 fps it is, as float or numpy scalars are."""
    from fractions import Fraction

    clip = _clip(fps=24)
    a = measure_coherence_frames(clip, Fraction(24000, 1001), OPTS)
    b = measure_coherence_frames(clip, 24000 / 1001, OPTS)
    c = measure_coherence_frames(clip, np.float64(24000 / 1001), OPTS)
    assert a["fps"] == b["fps"] == c["fps"] and a["flicker"] == b["flicker"] == c["flicker"] and a["frames"] == 16
