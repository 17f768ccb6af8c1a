"""``vidhash generate``: flags that were ignored or failed late (--prompt-frames without a prompt,
--out where no file can be created, --actions / --resume naming a directory, a frame size the model's
patches do not divide) are one line naming the flag, before the model loads or any file is created."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vidhash.cli import main

FAST = ["--model", "random-tiny", "--seconds", "1", "--quiet", "num_inference_steps=1", "height=32", "width=32"]


@pytest.fixture
def no_model(monkeypatch):
    import vidhash.generate as gen

    monkeypatch.setattr(gen, "load_pipeline", lambda *a, **k: pytest.fail("the model loaded before the refusal"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _refused(capsys, *argv) -> str:
    rc = main(["generate", *FAST, *argv])  # (argv last: its flags and overrides win)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0].removeprefix("vidhash generate: error: ")


@pytest.mark.parametrize("extra", [[], ["--image", "{tmp}/frame.png"]], ids=["no-prompt", "image"])
def test_prompt_frames_without_a_prompt_it_counts(tmp_path, no_model, capsys, extra):
    """(defect 6) --prompt-frames with neither --prompt-world nor --video was silently ignored."""
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "frame.png")
    extra = [a.format(tmp=tmp_path) for a in extra]
    line = _refused(capsys, "--out", str(tmp_path / "b.mp4"), "--prompt-frames", "5", *extra)
    assert line.startswith("--prompt-frames") and "--prompt-world" in line and "--video" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame.png"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_out_where_no_file_can_be_created(no_model, capsys):
    """(defect 7) --out /proc/x.mp4 named the temporary '/proc/.x.partial.mp4.….tmp'."""
    line = _refused(capsys, "--out", "/proc/x.mp4")
    assert line.startswith("--out /proc/x.mp4") and ".tmp" not in line and "partial" not in line, line


@pytest.mark.parametrize("flag", ["--actions", "--resume"])
def test_actions_or_resume_naming_a_directory(tmp_path, no_model, capsys, flag):
    """(defect 7) --actions DIR: a bare [Errno 21]; --resume DIR: 'state file DIR does not exist'."""
    (tmp_path / "emptydir").mkdir()
    path = str(tmp_path / "emptydir")
    line = _refused(capsys, "--out", str(tmp_path / "b.mp4"), flag, path)
    assert line.startswith(f"{flag} {path}") and "is a directory" in line and "Errno" not in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emptydir"]


def test_missing_resume_is_refused_before_the_model_loads(tmp_path, no_model, capsys):
    line = _refused(capsys, "--out", str(tmp_path / "b.mp4"), "--resume", str(tmp_path / "no.pt"))
    assert line.startswith(f"--resume {tmp_path / 'no.pt'}") and "no such" in line, line
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_state_is_refused_before_the_model_loads(tmp_path, no_model, capsys):
    (tmp_path / "bad.pt").write_bytes(b"not a state")
    line = _refused(capsys, "--out", str(tmp_path / "b.mp4"), "--resume", str(tmp_path / "bad.pt"))
    assert "bad.pt" in line and "not a safetensors file" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_a_frame_size_the_patches_do_not_divide(tmp_path, no_model, capsys):
    """(defect 7) height=63 was refused only after the model loaded."""
    line = _refused(capsys, "--out", str(tmp_path / "b.mp4"), "height=63")
    assert "height" in line and "63" in line and "divisible by the patch size 8" in line, line
    assert list(tmp_path.iterdir()) == []
