"""`vidhash coherence` refuses what would destroy an input or mislead (issue 20, defect 9), and
an encoder file never runs a pickle."""
import fractions
import io
import json
import pickle
import zipfile

import numpy as np
import pytest

av = pytest.importorskip("av")
torch = pytest.importorskip("torch")

from vidhash.cli import main as vidhash  # noqa: E402
from vidhash.metrics import VideoReader  # noqa: E402
from vidhash.metrics.features import load_feature_model  # noqa: E402
from vidhash.metrics.synthetic import synthetic_clip, write_video  # noqa: E402


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    frames, _ = synthetic_clip("pan", seconds=1, fps=8, size=32)
    return write_video(str(tmp_path_factory.mktemp("v") / "v.mp4"), frames, fps=8)


def _cli(capsys, *argv):
    code = vidhash(["coherence", *argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_or_plot_on_an_input_is_refused(capsys, tmp_path, video):
    before = open(video, "rb").read()
    poses = tmp_path / "p.json"
    poses.write_text(json.dumps([[0, 0]] * 8))
    link = tmp_path / "link.json"
    link.symlink_to(video)
    cases = [(["--json", video], "input video"), (["--plot", video], "input video"), (["--json", str(link)], "input video"),
             (["--poses", str(poses), "--json", str(poses)], "--poses"),
             (["--json", str(tmp_path / "r.out"), "--plot", str(tmp_path / "r.out")], "other output")]
    for argv, what in cases:
        code, out, err = _cli(capsys, video, *argv)
        assert code == 2 and what in err and len(err.splitlines()) == 1, err
        assert out == ""  # refused before any video is read
    assert open(video, "rb").read() == before and json.loads(poses.read_text()) == [[0, 0]] * 8
    assert link.is_symlink() and not (tmp_path / "r.out").exists()


@pytest.mark.parametrize("argv, flag", [(["--size", "100000"], "--size must be at most 4096"), (["--threads", "-1"], "--threads"),
                                        (["--analysis-fps", "nan"], "--analysis-fps"), (["--pose-tol", "-1"], "--pose-tol")])
def test_out_of_range_flags(capsys, video, argv, flag):
    code, out, err = _cli(capsys, video, *argv)
    assert code == 2 and flag in err and len(err.splitlines()) == 1 and "damaged" not in err and out == ""


def test_size_bound_in_the_library(video):
    with pytest.raises(ValueError, match="at most 4096"):
        VideoReader(video, size=100_000)


def test_variable_frame_rate_range_covers_every_frame(tmp_path):
    """Intervals of 62 ms, then 125 ms, then 250 ms: the warning reports 62 to 250 (it said 62 to
    125, the range when variable rate was first seen)."""
    frames, _ = synthetic_clip("pan", seconds=3, fps=16, size=32)
    path = tmp_path / "vfr.mp4"
    tb = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=16)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        s.codec_context.time_base = tb
        pts = 0
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = pts, tb
            pts += 62 if i < 16 else 125 if i < 32 else 250
            for p in s.encode(vf):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    with VideoReader(str(path), analysis_fps=8, size=32) as reader:
        list(reader)
    (warning,) = [w for w in reader.warnings if "variable frame rate" in w]
    assert "from 62.0 to 250.0 ms" in warning and f"{reader.source_frames} frames read" in warning


# ---------------------------------------------------------------------------------- encoder files


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 4)

    def forward(self, x):
        return self.lin(x.mean(dim=(2, 3)))


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, edit(name, zin.read(name)))


def _pickled(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "tiny.pt2"
    torch.export.save(torch.export.export(_Tiny().eval(), (torch.randn(1, 3, 224, 224),)), str(path))
    return path


def _weight_as_pickle(marker):
    def edit(name, data):
        if name.endswith("model_weights_config.json"):
            cfg = json.loads(data)
            cfg["config"]["lin.weight"]["use_pickle"] = True
            return json.dumps(cfg).encode()
        return _pickled({"w": _Payload(marker)}) if name.endswith("data/weights/weight_0") else data
    return edit


def _sample_inputs_as_pickle(marker):
    return lambda name, data: _pickled({"x": _Payload(marker)}) if name.endswith("sample_inputs/model.pt") else data


def _opaque_constant(marker):
    def edit(name, data):
        if name.endswith("model_constants_config.json"):
            return json.dumps({"config": {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                                 "tensor_meta": None}}}).encode()
        return data
    return edit


@pytest.mark.parametrize("make", [_weight_as_pickle, _sample_inputs_as_pickle, _opaque_constant])
def test_exported_encoder_runs_no_pickle(tmp_path, exported, make):
    """torch.export.load unpickles weights and sample inputs with weights_only=False (and opaque
    constants with pickle.loads): a crafted .pt2 ran its payload. Refused now, in one line."""
    marker, bad = tmp_path / "ran", tmp_path / "bad.pt2"
    _rewrite(exported, bad, make(marker))
    if make is _opaque_constant:
        with zipfile.ZipFile(bad, "a") as z:
            root = z.namelist()[0].split("/")[0]
            z.writestr(f"{root}/data/constants/opaque_obj_0", pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError) as err:
        load_feature_model(str(bad))
    assert not marker.exists()
    assert len(str(err.value).splitlines()) == 1 and str(bad) in str(err.value) and "refused unrun" in str(err.value)
    model, batch = load_feature_model(str(exported))  # a real export still loads
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 4) and batch == 1
