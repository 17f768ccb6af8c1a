"""vidhash bench generation: a saved model and preset overrides reach the timed worker."""
import json

import pytest

from vidhash.cli import main


def test_bench_generation_with_a_saved_model(tmp_path, capsys):
    from vidhash.pipelines import VidHashPipeline

    VidHashPipeline.random("tiny", seed=0).save_pretrained(tmp_path / "m")
    out = tmp_path / "g.json"
    assert main(["bench", "generation", "--model", str(tmp_path / "m"), "--seconds", "1", "--fps", "4", "--modes",
                 "hashed", "--steps", "1", "--threads", "1", "--set", "memory.top_k=8", "--json", str(out)]) == 0
    rows = json.load(open(out))["rows"]
    assert len(rows) == 1 and "skipped" not in rows[0]
    assert rows[0]["model"] == str(tmp_path / "m") and rows[0]["memory_config"]["top_k"] == 8
    assert sum(rows[0]["chunk_frames"]) == 4
    assert "preset tiny memory.top_k=8" in capsys.readouterr().out


def test_bench_generation_bad_override_fails_before_running(capsys):
    assert main(["bench", "generation", "--seconds", "1", "--set", "memory.nope=1"]) == 2
    assert "memory.nope" in capsys.readouterr().err


@pytest.mark.parametrize("item, match", [
    ("memory.mode=full", "--set memory.mode=full: each row runs the mode --modes names"),
    ("memory=1", "--set memory=1: set the memory's fields one by one"),
])
def test_bench_generation_refuses_overrides_the_rows_would_not_run_with(item, match, monkeypatch, capsys):
    """--set memory.mode=full ran the hashed rows (the worker sets each row's mode after the overrides),
    and --set memory=1 was dropped by the mode set after it: both exited 0 having ignored the flag."""
    import vidhash.bench.generation as generation

    monkeypatch.setattr(generation, "_world_speed", lambda *a: pytest.fail("the bench started"))
    assert main(["bench", "generation", "--seconds", "1", "--modes", "hashed", "--set", item]) == 2
    assert match in capsys.readouterr().err


def test_bench_generation_refuses_a_clip_of_no_frames_up_front(monkeypatch, capsys):
    """--seconds 0.01 at 8 fps (0 frames) failed in the worker, exit status 1: a usage error now."""
    import subprocess

    import vidhash.bench.generation as generation

    monkeypatch.setattr(generation, "_world_speed", lambda *a: pytest.fail("the bench started"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a worker started"))
    assert main(["bench", "generation", "--preset", "tiny", "--seconds", "1,0.01", "--modes", "hashed", "--device", "cpu"]) == 2
    assert "--seconds 0.01 at --fps 8 is less than one frame" in capsys.readouterr().err


def test_bench_generation_compile_mode_needs_compile(monkeypatch, capsys):
    import vidhash.bench.generation as generation

    monkeypatch.setattr(generation, "_world_speed", lambda *a: pytest.fail("the bench started"))
    assert main(["bench", "generation", "--seconds", "1", "--compile-mode", "max-autotune"]) == 2
    assert "--compile-mode sets how --compile compiles" in capsys.readouterr().err
