"""vidhash bench data: the loader alone, with and without the shared world cache (CPU, seconds)."""
import json

from vidhash.cli import main


def test_bench_data_rows(tmp_path, capsys):
    out = tmp_path / "data.json"
    args = ["bench", "data", "configs/train/cpu_test.yaml", "data.num_frames=8", "data.pool_size=2",
            "data.clips_per_world=2", "--processes", "2", "--workers", "0", "--steps", "3", "--cache", "off,auto",
            "--json", str(out)]
    assert main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["cache"] for r in rows] == ["off", "auto"]
    off, on = rows
    for r in rows:
        assert r["samples_per_s"] > 0 and len(r["per_process"]) == 2
        assert all(len(p["waits_s"]) == 2 for p in r["per_process"])
    # in-process loading (no prefetch): deterministic counts. Without the cache every process builds
    # every world it touches; with it, each world is built once in all
    assert sum(p["worlds_built"] for p in on["per_process"]) < sum(p["worlds_built"] for p in off["per_process"])
    assert "| world cache | samples/s" in capsys.readouterr().out
