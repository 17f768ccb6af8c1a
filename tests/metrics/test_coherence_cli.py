"""`vidhash coherence` and `vidhash bench coherence` as a user runs them."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vidhash.cli import main as vidhash
from vidhash.metrics import REPORT_KEYS
from vidhash.metrics.synthetic import synthetic_clip, write_video

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_two_videos_one_table_one_json_one_plot(capsys, tmp_path, clip_paths):
    a, b = clip_paths["pan"][0], clip_paths["flicker"][0]
    code = vidhash(["coherence", a, b, "--size", "64", "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")])
    out, err = capsys.readouterr()
    assert code == 0, err
    header = out.splitlines()[0]
    assert "pan.mp4" in header and "flicker.mp4" in header and "warp error" in out
    reports = json.loads((tmp_path / "r.json").read_text())
    assert isinstance(reports, list) and len(reports) == 2
    for r in reports:
        assert set(REPORT_KEYS) <= set(r)
    with Image.open(tmp_path / "r.png") as im:
        assert im.format == "PNG" and im.size[0] > 800
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]  # no temporary files left


def test_one_video_with_poses(capsys, tmp_path, clip_paths):
    video, poses = clip_paths["return"]
    code = vidhash(["coherence", video, "--size", "64", "--poses", poses, "--json", str(tmp_path / "r.json")])
    out, _ = capsys.readouterr()
    assert code == 0 and "revisit PSNR" in out
    r = json.loads((tmp_path / "r.json").read_text())
    assert isinstance(r, dict) and r["revisit"]["pairs"] > 0 and r["revisit"]["by_gap"]


def test_poses_that_do_not_match_the_video(capsys, tmp_path, clip_paths):
    video, _ = clip_paths["pan"]
    (tmp_path / "short.json").write_text(json.dumps({"poses": [[0, 0]] * 10, "fps": 8}))
    code = vidhash(["coherence", video, "--poses", str(tmp_path / "short.json")])
    _, err = capsys.readouterr()
    assert code == 2 and "10 poses" in err and "64 frames" in err and "Traceback" not in err


def test_features_weights_missing_or_not_torchscript(capsys, tmp_path, clip_paths):
    video, _ = clip_paths["pan"]
    code = vidhash(["coherence", video, "--features-weights", str(tmp_path / "dino.pt")])
    _, err = capsys.readouterr()
    assert code == 2 and "no such file" in err and "never downloaded" in err
    (tmp_path / "w.safetensors").write_bytes(b"\0" * 16)
    code = vidhash(["coherence", video, "--features-weights", str(tmp_path / "w.safetensors")])
    _, err = capsys.readouterr()
    assert code == 2 and "without the network" in err
    (tmp_path / "junk.pt2").write_bytes(b"junk")
    code = vidhash(["coherence", video, "--features-weights", str(tmp_path / "junk.pt2")])
    _, err = capsys.readouterr()
    assert code == 2 and "not a torch.export program" in err and "Traceback" not in err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("fmt", ["pt2", "torchscript"])
def test_features_with_a_local_encoder(capsys, tmp_path, clip_paths, fmt):
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):  # stands in for DINOv2: pooled colour and edge features
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 5, stride=4)

        def forward(self, x):
            return self.conv(x).relu().mean(dim=(2, 3))

    torch.manual_seed(0)
    if fmt == "pt2":
        path = tmp_path / "tiny.pt2"
        torch.export.save(torch.export.export(Tiny().eval(), (torch.randn(1, 3, 224, 224),)), str(path))
    else:
        path = tmp_path / "tiny.ts.pt"
        torch.jit.script(Tiny().eval()).save(str(path))
    out = {}
    for kind in ("static", "cuts"):
        code = vidhash(["coherence", clip_paths[kind][0], "--size", "64", "--features-weights", str(path),
                        "--json", str(tmp_path / f"{kind}.json")])
        assert code == 0
        out[kind] = json.loads((tmp_path / f"{kind}.json").read_text())["features"]
    capsys.readouterr()
    assert out["static"]["consistency"] == pytest.approx(1.0, abs=1e-4)
    assert out["cuts"]["consistency"] < out["static"]["consistency"]
    assert len(out["cuts"]["first_frame_similarity"]["cos"]) == 8


def test_help_and_listing(capsys):
    with pytest.raises(SystemExit) as e:
        vidhash(["coherence", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--poses" in out and "--analysis-fps" in out and "--features-weights" in out
    code = vidhash([])
    assert code == 2 and "coherence" in capsys.readouterr().out


def test_bench_prints_a_table(capsys, tmp_path):
    code = vidhash(["bench", "coherence", "--frames", "24", "--repeats", "1", "--threads", "1",
                    "--json", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert code == 0 and "short-range" in out and "end-to-end" in out and "frames/s" in out
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert {r["stage"] for r in rows} == {"short-range", "long-range", "end-to-end"}
    assert all(r["frames_per_s"] > 0 for r in rows)


PYTHON_M_CASES = [("vidhash.cli", "coherence"), ("vidhash.cli", "bench coherence"), ("vidhash", "coherence")]


@pytest.fixture(scope="module")
def python_m_runs(tmp_path_factory):
    """The three ``python -m`` subprocesses of :func:`test_python_m_vidhash_cli_runs_the_command`,
    started together (each its own folder and video; mostly interpreter start and imports, so two
    cores run them in about the time of two), each test waits for its own."""
    frames, _ = synthetic_clip("pan", seconds=1, fps=8, size=32)
    procs = {}
    try:
        for module, command in PYTHON_M_CASES:
            video = write_video(str(tmp_path_factory.mktemp("python-m") / "v.mp4"), frames, fps=8)
            argv = [video, "--size", "32"] if command == "coherence" else ["--frames", "8", "--repeats", "1", "--threads", "1", "--no-e2e"]
            procs[module, command] = subprocess.Popen([sys.executable, "-m", module, *command.split(), *argv],
                                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("module, command", PYTHON_M_CASES)
def test_python_m_vidhash_cli_runs_the_command(module, command, python_m_runs):
    """``python -m vidhash.cli`` (what ``accelerate launch -m`` and a plain copy without the console
    script use) and ``python -m vidhash`` run the same command as ``vidhash``."""
    proc = python_m_runs[module, command]
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert ("flicker" if command == "coherence" else "short-range") in stdout


def test_poses_that_do_not_match_a_fragmented_mp4(capsys, tmp_path):
    """The fragmented mp4 `vidhash generate` writes lists no frame count: the poses are checked
    against the frames decoded, with the same error (before: a warning, exit 0)."""
    from vidhash.data.video import Mp4Writer

    video = tmp_path / "frag.mp4"
    frames, _ = synthetic_clip("pan", seconds=3.0, fps=8.0, size=64)
    with Mp4Writer(video, fps=8) as w:
        w.write(np.stack(frames))
    (tmp_path / "short.json").write_text(json.dumps({"poses": [[0, 0]] * 10, "fps": 8}))
    code = vidhash(["coherence", str(video), "--size", "64", "--poses", str(tmp_path / "short.json")])
    _, err = capsys.readouterr()
    assert code == 2 and "10 poses" in err and "24 frames" in err and "Traceback" not in err
    # a harmless reader warning (analysis rate above the source's) does not turn the check off
    code = vidhash(["coherence", str(video), "--size", "64", "--analysis-fps", "30", "--poses", str(tmp_path / "short.json")])
    _, err = capsys.readouterr()
    assert code == 2 and "10 poses" in err
    (tmp_path / "right.json").write_text(json.dumps({"poses": [[i, 0] for i in range(24)], "fps": 8}))
    assert vidhash(["coherence", str(video), "--size", "64", "--poses", str(tmp_path / "right.json")]) == 0
