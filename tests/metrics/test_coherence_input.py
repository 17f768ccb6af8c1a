"""Streaming decode, sampling, and every kind of bad input: a message, never a traceback."""
import fractions

import numpy as np
import pytest

av = pytest.importorskip("av")  # the GPU image has no PyAV: skip, not a collection error

from vidhash.cli import main as vidhash
from vidhash.metrics import CoherenceOptions, VideoError, VideoReader, measure_coherence, working_size
from vidhash.metrics.synthetic import synthetic_clip, write_video

OPTS = CoherenceOptions(size=64, progress=False)


def _cli(capsys, *argv):
    code = vidhash(["coherence", *argv, "--no-progress"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.mark.parametrize(
    "wh, size, expect",
    [((1920, 1080), 128, (128, 72)), ((64, 64), 128, (128, 128)), ((480, 640), 128, (96, 128)), ((100, 30), 64, (64, 20))],
    ids=["1080p", "upscale", "portrait", "odd"],
)
def test_working_size(wh, size, expect):
    assert working_size(*wh, size) == expect


@pytest.mark.parametrize("src_fps, asked, stride, fps", [(24, 8, 3, 8.0), (30, 8, 4, 7.5), (8, 8, 1, 8.0), (8, 0, 1, 8.0), (12, 30, 1, 12.0)],
                         ids=["24to8", "30to7.5", "same", "all", "above-source"])
def test_sampling_keeps_every_stride_th_frame(tmp_path, src_fps, asked, stride, fps):
    frames, _ = synthetic_clip("pan", seconds=2, fps=src_fps, size=32)
    path = write_video(str(tmp_path / "v.mp4"), frames, fps=src_fps)
    with VideoReader(path, analysis_fps=asked, size=32) as reader:
        got = list(reader)
    assert reader.stride == stride and reader.fps == pytest.approx(fps)
    assert len(got) == -(-len(frames) // stride) and reader.source_frames == len(frames)
    assert [f.t for f in got] == pytest.approx([i * stride / src_fps for i in range(len(got))], abs=1e-3)
    assert got[0].rgb.shape == (32, 32, 3) and got[0].rgb.dtype == np.uint8
    assert any("above the source rate" in w for w in reader.warnings) == (asked > src_fps)


def test_missing_file(capsys, tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        measure_coherence(str(tmp_path / "nope.mp4"), OPTS)
    code, _, err = _cli(capsys, str(tmp_path / "nope.mp4"))
    assert code == 2 and "nope.mp4: no such file" in err


def test_text_file_named_mp4(capsys, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n" * 20)
    code, _, err = _cli(capsys, str(bad))
    assert code == 2 and "not a readable video" in err


def test_empty_file_and_directory(capsys, tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    code, _, err = _cli(capsys, str(tmp_path / "empty.mp4"), str(tmp_path))
    assert code == 2 and "empty file" in err and "is a directory" in err


def test_truncated_mp4_without_index(capsys, tmp_path):
    frames, _ = synthetic_clip("pan", seconds=4, fps=8, size=64)
    data = open(write_video(str(tmp_path / "full.mp4"), frames, fps=8), "rb").read()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # index (moov) is at the end: lost
    code, _, err = _cli(capsys, str(tmp_path / "cut.mp4"))
    assert code == 2 and "truncated" in err


def _write_faststart(path, frames, fps=8):
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.options = {"crf": "12"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def test_truncated_mp4_reports_what_was_readable(capsys, tmp_path):
    frames, _ = synthetic_clip("pan", seconds=4, fps=8, size=64)
    _write_faststart(tmp_path / "fast.mp4", frames)
    data = (tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    r = measure_coherence(str(tmp_path / "cut.mp4"), OPTS)
    assert 2 <= r["frames"] < 32 and any("truncated" in w for w in r["warnings"])
    code, out, err = _cli(capsys, str(tmp_path / "cut.mp4"), "--size", "64")
    assert code == 0 and "warning" in err and "truncated" in err and "cut.mp4" in out


def test_damaged_middle_is_skipped(tmp_path):
    frames, _ = synthetic_clip("pan", seconds=4, fps=8, size=64)
    _write_faststart(tmp_path / "fast.mp4", frames)
    data = bytearray((tmp_path / "fast.mp4").read_bytes())
    rng = np.random.default_rng(0)
    lo, hi = len(data) // 3, len(data) // 2
    data[lo:hi] = rng.integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))
    r = measure_coherence(str(tmp_path / "damaged.mp4"), OPTS)  # no exception
    assert r["frames"] >= 2 and r["warnings"]


def test_zero_frames(capsys, tmp_path):
    # an mp4 whose index survives but whose frame data is cut off right at its start
    frames, _ = synthetic_clip("pan", seconds=2, fps=8, size=64)
    _write_faststart(tmp_path / "fast.mp4", frames)
    data = (tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "zero.mp4").write_bytes(data[: data.index(b"mdat") + 4])
    code, _, err = _cli(capsys, str(tmp_path / "zero.mp4"))
    assert code == 2 and "no frames could be decoded" in err
    # a container whose video stream never received a frame
    with av.open(str(tmp_path / "empty_stream.mp4"), "w") as out:
        s = out.add_stream("libx264", rate=8)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        out.start_encoding()
    code, _, err = _cli(capsys, str(tmp_path / "empty_stream.mp4"))
    assert code == 2 and "no video stream" in err


def test_one_frame_gives_a_report_with_nulls(capsys, tmp_path):
    frames, _ = synthetic_clip("pan", seconds=0.125, fps=8, size=64)
    path = write_video(str(tmp_path / "one.mp4"), frames, fps=8)
    r = measure_coherence(path, OPTS)
    assert r["frames"] == 1 and r["flicker"]["mean"] is None and r["ssim_adjacent"]["mean"] is None
    assert r["drift"]["lags_s"] == [] and any("only one frame" in w for w in r["warnings"])
    code, out, err = _cli(capsys, path, "--json", str(tmp_path / "one.json"), "--plot", str(tmp_path / "one.png"))
    assert code == 0 and "only one frame" in err and (tmp_path / "one.png").stat().st_size > 0


def test_variable_frame_rate_is_sampled_by_time_and_flagged(tmp_path):
    frames, _ = synthetic_clip("pan", seconds=6, fps=16, size=64)
    path = tmp_path / "vfr.mp4"
    tb = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=16)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = tb
        pts = 0
        for i, f in enumerate(frames):  # 1/16 s steps, then 1/8 s steps after 2 s
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = pts, tb
            pts += 62 if i < 32 else 125
            for p in s.encode(vf):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    with VideoReader(str(path), analysis_fps=8, size=64) as reader:
        got = list(reader)
    assert reader.vfr and any("variable frame rate" in w for w in reader.warnings)
    t = np.array([f.t for f in got])
    assert np.all(np.diff(t) > 0.1) and np.all(np.diff(t) < 0.2)  # about one frame per 1/8 s throughout
    assert measure_coherence(str(path), OPTS)["source"]["vfr"] is True


def test_bad_options(capsys, tmp_path):
    frames, _ = synthetic_clip("pan", seconds=1, fps=8, size=32)
    path = write_video(str(tmp_path / "v.mp4"), frames, fps=8)
    for argv, msg in [(["--size", "4"], "--size"), (["--analysis-fps", "-1"], "--analysis-fps"), (["--max-lag", "0"], "--max-lag")]:
        code, _, err = _cli(capsys, path, *argv)
        assert code == 2 and msg in err


def test_several_videos_one_bad(capsys, tmp_path):
    frames, _ = synthetic_clip("pan", seconds=2, fps=8, size=32)
    good = write_video(str(tmp_path / "good.mp4"), frames, fps=8)
    code, out, err = _cli(capsys, good, str(tmp_path / "missing.mp4"), "--size", "32")
    assert code == 2 and "good.mp4" in out and "missing.mp4: no such file" in err and "1 of 2" in err
