"""``vidhash coherence``: --json / --plot / --poses are checked before any video is analysed, with one
line naming the flag and the path given; the files are written atomically with the usual permissions."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from vidhash.cli import main


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    from vidhash.metrics.synthetic import synthetic_clip, write_video

    frames, _ = synthetic_clip("pan", seconds=1, fps=8, size=32)
    return write_video(str(tmp_path_factory.mktemp("v") / "v.mp4"), frames, fps=8)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def no_analysis(monkeypatch):
    """Analysing a video fails the test: every refusal below must come first."""
    import vidhash.metrics.coherence as coherence

    monkeypatch.setattr(coherence, "measure_coherence", lambda *a, **k: pytest.fail("the video was analysed"))


def _refused(capsys, *argv) -> str:
    rc = main(["coherence", *argv, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0].removeprefix("vidhash coherence: error: ")


def test_json_and_plot_get_the_usual_permissions(video, tmp_path, umask_022, capsys):
    """mkstemp makes 0600 files; the report and the plot are 0644 under umask 022 (defect 1)."""
    rc = main(["coherence", video, "--size", "32", "--json", str(tmp_path / "rep.json"), "--plot",
               str(tmp_path / "rep.png"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    for name in ("rep.json", "rep.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep.json", "rep.png"]  # no temporary file left


def test_a_failed_write_leaves_no_temporary_file(video, tmp_path, monkeypatch, capsys):
    import vidhash.metrics.report as report

    def broken(reports, path):
        Path(path).write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "plot_reports", broken)
    rc = main(["coherence", video, "--size", "32", "--plot", str(tmp_path / "rep.png"), "--no-progress"])
    assert rc == 2 and "rep.png" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag,name,match", [
    ("--json", "missing/x.json", "folder .*missing does not exist"),
    ("--plot", "missing/x.png", "folder .*missing does not exist"),
    ("--json", "afile/x.json", "afile is not a folder"),
    ("--json", "adir", "is a directory"),
    ("--plot", "adir", "is a directory"),
    ("--plot", "out.txt", "cannot save '.txt'"),
    ("--plot", "curves", "needs a file suffix"),
], ids=["json-missing-folder", "plot-missing-folder", "json-folder-is-a-file", "json-dir", "plot-dir", "plot-txt",
        "plot-no-suffix"])
def test_outputs_are_checked_before_the_analysis(video, tmp_path, no_analysis, capsys, flag, name, match):
    """(defect 2) and a missing folder is refused, not created (as generate and eval world do)."""
    import re

    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    path = str(tmp_path / name)
    line = _refused(capsys, video, flag, path)
    assert line.startswith(f"{flag} {path}") and re.search(match, line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]  # nothing created
    assert list((tmp_path / "adir").iterdir()) == []


def test_plot_checked_before_json_is_written(video, tmp_path, no_analysis, capsys):
    """--plot out.txt used to fail after the analysis, with --json already written and no flag named."""
    line = _refused(capsys, video, "--json", str(tmp_path / "j.json"), "--plot", str(tmp_path / "out.txt"))
    assert line.startswith("--plot ") and "Format" not in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_json_where_no_file_can_be_created(video, no_analysis, capsys):
    """/proc refuses new files even to root (for whom os.access says yes): refused up front, naming
    the flag and the path given, never a temporary file."""
    line = _refused(capsys, video, "--json", "/proc/x.json")
    assert line.startswith("--json /proc/x.json") and ".tmp" not in line, line


def test_poses_that_is_a_directory(video, tmp_path, no_analysis, capsys):
    """(defect 9) --poses DIR: the flag named, not a bare [Errno 21]."""
    line = _refused(capsys, video, "--poses", str(tmp_path))
    assert line.startswith(f"--poses {tmp_path}") and "is a directory" in line and "Errno" not in line, line


def test_poses_that_does_not_exist(video, tmp_path, no_analysis, capsys):
    line = _refused(capsys, video, "--poses", str(tmp_path / "no.json"))
    assert line.startswith(f"--poses {tmp_path / 'no.json'}") and "no such file" in line, line
