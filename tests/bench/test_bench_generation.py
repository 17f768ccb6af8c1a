"""vidhash bench generation: a saved model and preset overrides reach the timed worker."""
import json

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
