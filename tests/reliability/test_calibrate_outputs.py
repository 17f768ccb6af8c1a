"""``vidhash calibrate``: --out / --overwrite replace only a saved pipeline folder, --json and the
numeric flags are checked before the model loads or any clip is recorded, and what it writes gets
the usual permissions (the recording and the fit are stubbed where they would only cost time)."""
from __future__ import annotations

import json
import os

import pytest

from vidhash.cli import main

FLAGS = ["--clips", "1", "--val-clips", "0", "--frames", "12", "--chunk-frames", "4", "--window-frames", "4",
         "--inference-steps", "1", "--steps", "1", "--hidden", "8", "--bits", "8", "--top-k", "4", "--quiet"]


@pytest.fixture
def no_load(monkeypatch):
    """Loading the model fails the test: every refusal below must come first."""
    import vidhash.cli.calibrate as cli

    monkeypatch.setattr(cli, "_load", lambda *a, **k: pytest.fail("the model loaded (and clips would be recorded)"))


@pytest.fixture
def quick_fit(monkeypatch):
    """``calibrate`` without recording or fitting: fresh LearnedHash per layer, a report of one line."""
    import vidhash.cli.calibrate as cli
    from vidhash.hashing import LearnedHash

    def fake(pipe, cfg, progress=True):
        model = pipe.transformer
        hashers = [LearnedHash(model.head_dim, cfg.bits, model.config.num_heads, cfg.hidden, seed=layer)
                   for layer in range(model.config.num_layers)]
        return hashers, {"config": dict(cfg.__dict__), "mean": {}}

    monkeypatch.setattr(cli, "calibrate", fake)
    monkeypatch.setattr(cli, "format_report", lambda report: "report")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _refused(capsys, *argv) -> str:
    rc = main(["calibrate", "random-tiny", *FLAGS, *argv])  # (argv last: its flags win)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0].split(": error: ", 1)[-1]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_a_folder_that_is_not_a_pipeline_is_never_replaced(tmp_path, no_load, capsys, overwrite):
    """(defect 4) --overwrite deleted any folder (a user's folder with keep.txt)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    line = _refused(capsys, "--out", str(victim), *overwrite)
    assert line.startswith(f"--out {victim}") and "not a saved pipeline folder" in line, line
    assert (victim / "keep.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["victim"]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_a_plain_file_is_never_replaced(tmp_path, no_load, capsys, overwrite):
    """(defect 4) --overwrite on a file: [Errno 20], the file moved to .old and a 0700 folder in its place."""
    victim = tmp_path / "victimfile.txt"
    victim.write_text("mine")
    line = _refused(capsys, "--out", str(victim), *overwrite)
    assert line.startswith(f"--out {victim}") and "is a file" in line, line
    assert victim.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["victimfile.txt"]


def test_a_path_below_a_file_is_refused(tmp_path, no_load, capsys):
    (tmp_path / "afile").write_text("x")
    line = _refused(capsys, "--out", str(tmp_path / "afile" / "pipe"))
    assert line.startswith(f"--out {tmp_path / 'afile' / 'pipe'}") and "is not a folder" in line, line


def test_overwrite_replaces_a_saved_pipeline_folder(tmp_path, quick_fit, umask_022, capsys):
    """The one thing --overwrite replaces; the written folder and report are 0755 / 0644 under umask
    022, and a user's ``OUT.old`` next to it is left alone (it used to be deleted)."""
    out, report = tmp_path / "cal", tmp_path / "c.json"
    (tmp_path / "cal.old").mkdir()
    (tmp_path / "cal.old" / "keep.txt").write_text("mine")
    assert main(["calibrate", "random-tiny", "--out", str(out), "--json", str(report), *FLAGS]) == 0
    assert (out / "model_index.json").is_file()
    (out / "marker").write_text("old run")
    line = _refused(capsys, "--out", str(out))
    assert "pass --overwrite" in line and (out / "marker").is_file()
    assert main(["calibrate", "random-tiny", "--out", str(out), "--json", str(report), "--overwrite", *FLAGS]) == 0
    assert (out / "model_index.json").is_file() and not (out / "marker").exists()
    assert out.stat().st_mode & 0o777 == 0o755 and report.stat().st_mode & 0o777 == 0o644
    assert json.loads(report.read_text())["out"] == str(out)
    assert (tmp_path / "cal.old" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "cal", "cal.old"]  # nothing temporary left


@pytest.mark.parametrize("name,match", [("nonexistent/c.json", "folder .*nonexistent does not exist"),
                                        ("emptydir", "is a directory")], ids=["missing-folder", "directory"])
def test_json_is_checked_before_any_work(tmp_path, no_load, capsys, name, match):
    """(defect 5) --json /nonexistent/c.json created /nonexistent/; --json DIR wrote the model, then failed."""
    import re

    (tmp_path / "emptydir").mkdir()
    path = str(tmp_path / name)
    line = _refused(capsys, "--out", str(tmp_path / "cal2"), "--json", path)
    assert line.startswith(f"--json {path}") and re.search(match, line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emptydir"]


@pytest.mark.parametrize("argv,match", [
    (["--bits", "1000"], "--bits must be"),
    (["--bits", "0"], "--bits must be"),
    (["--lr", "-1"], "--lr must be"),
    (["--lr", "nan"], "--lr must be"),
    (["--lr", "inf"], "--lr must be"),
    (["--pos-weight", "nan"], "--pos-weight must be"),
    (["--hidden", "0"], "--hidden must be positive"),
    (["--chunk-frames", "0"], "--chunk-frames must be positive, got 0"),
    (["--window-frames", "0"], "--window-frames must be positive, got 0"),
    (["--inference-steps", "0"], "--inference-steps must be positive, got 0"),
    (["--seed", "-1"], "--seed must be ≥ 0, got -1"),
    (["--world-seed", "-1"], "--world-seed must be ≥ 0, got -1"),
    (["--device", "foo"], "--device 'foo' is not a device"),
    (["--device", "cuda:99"], "--device cuda:99"),  # (no such device here, CPU or GPU machine alike)
], ids=["bits-1000", "bits-0", "lr-negative", "lr-nan", "lr-inf", "pos-weight-nan", "hidden-0", "chunk-frames-0",
        "window-frames-0", "inference-steps-0", "seed-negative", "world-seed-negative", "device-foo", "device-cuda99"])
def test_numeric_flags_are_checked_before_recording(tmp_path, no_load, capsys, argv, match):
    """(defect 5) --bits 1000 / --lr -1 / --lr nan were caught after recording, as ``n_bits``; --chunk-frames 0
    (and --window-frames 0, --inference-steps 0) read as the preset's value while -2 was refused; --seed -1
    failed in numpy after the model loaded, without naming the flag."""
    line = _refused(capsys, "--out", str(tmp_path / "cal"), *argv)
    assert line.startswith(match), line
    assert list(tmp_path.iterdir()) == []


def test_diffusers_json_is_checked_before_the_model_loads(tmp_path, capsys):
    """The drop-in path (a diffusers transformer folder) checks --json up front too."""
    folder = tmp_path / "wan"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    path = str(tmp_path / "nonexistent" / "c.json")
    rc = main(["calibrate", str(folder), "--inputs", str(tmp_path / "in.pt"), "--json", path])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.split(": error: ", 1)[-1].startswith(f"--json {path}"), err
    assert not (tmp_path / "nonexistent").exists()


@pytest.mark.parametrize("val_clips", ["0", "1"])
def test_val_clips_0_says_the_validation_was_skipped(tmp_path, quick_fit, capsys, val_clips):
    """--val-clips 0 (allowed: ≥ 0) wrote the signatures without the check against SimHash on held-out
    clips and without a word; a line says so now (and only then)."""
    out = tmp_path / "cal"
    assert main(["calibrate", "random-tiny", "--out", str(out), *FLAGS, "--val-clips", val_clips]) == 0
    printed = capsys.readouterr().out
    skipped = "validation skipped (--val-clips 0): the learned signatures were not checked against SimHash"
    assert (skipped in printed) == (val_clips == "0"), printed
    assert (out / "model_index.json").is_file()
