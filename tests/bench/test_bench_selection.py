"""``vidhash bench selection`` on a CPU with tiny shapes: one table, JSON rows, the oracle bounds."""
import json

import pytest
import torch

from vidhash.cli import main

TINY = ["bench", "selection", "--device", "cpu", "--sizes", "2048", "--no-wan", "--heads", "2", "--head-dim", "16",
        "--block-sizes", "16,32", "--eval-blocks", "4", "--fit-blocks", "8", "--fit-steps", "3"]


def _rows(path):
    data = json.loads(path.read_text())
    assert data["device"] == "cpu" and data["config"]["backend"] == "reference"
    return data["rows"]


def test_one_row_per_scorer_shape_and_block_size(tmp_path, capsys):
    out = tmp_path / "sel.json"
    assert main(TINY + ["--json", str(out)]) == 0
    rows = _rows(out)
    printed = capsys.readouterr().out
    assert "recall" in printed and "oracle" in printed and "×dense" in printed
    scorers = ["simhash", "pooled", "parent", "moments", "subgrid", "prefilter", "rescore", "learned", "oracle"]
    assert [(r["block_size"], r["scorer"]) for r in rows] == [(bk, s) for bk in (16, 32) for s in scorers]
    for r in rows:
        assert r.get("error") is None, r
        # no selection under select_blocks' rules (forced blocks first) holds more than the oracle that keeps them too
        assert 0 < r["recall"] <= r["oracle_f"] + 1e-6 and r["oracle_f"] <= r["oracle"] + 1e-6
        assert r["ratio"] == pytest.approx(r["recall"] / r["oracle"])
        assert r["err"] >= 0 and r["kept"] < r["key_blocks"]
        assert 0 <= r["err_mean"] < r["err"]  # the unkept blocks' mean tokens bring mass back on these inputs
        if r["scorer"] == "oracle":
            assert r["recall"] == pytest.approx(r["oracle_f"])
        else:
            assert r["sel_ms"] > 0 and r["total_ms"] == pytest.approx(r["sel_ms"] + r["attn_ms"])
            assert r["x_dense"] == pytest.approx(r["dense_ms"] / r["total_ms"])
    assert rows[scorers.index("learned")]["fit"]["held_out_after"] is not None  # the learned row reports its fit


def test_density_one_keeps_everything(tmp_path):
    out = tmp_path / "dense.json"
    args = TINY[:-8] + ["--block-sizes", "32", "--eval-blocks", "3", "--density", "1.0", "--scorers",
                        "simhash,pooled,moments float,subgrid m4,oracle", "--json", str(out)]
    assert main(args) == 0
    for r in _rows(out):
        assert r["recall"] == pytest.approx(1.0, abs=1e-5) and r["oracle"] == pytest.approx(1.0, abs=1e-5)
        assert r["err"] < 1e-5 and r["err_mean"] < 1e-5


def test_world_rows_from_a_recording(tmp_path):
    """``--world`` on a saved recording (``--world-cache``): rows per layer, then the mean over layers."""
    g = torch.Generator().manual_seed(0)
    layers = [(torch.randn(8, 2, 256, 16, generator=g), torch.randn(8, 2, 640, 16, generator=g)) for _ in range(2)]
    cache = tmp_path / "world.pt"
    torch.save((layers, 2), cache)
    out = tmp_path / "world.json"
    args = ["bench", "selection", "--device", "cpu", "--sizes", "", "--no-wan", "--block-sizes", "32",
            "--world", "unused", "--world-cache", str(cache), "--world-clips", "4", "--fit-steps", "2",
            "--scorers", "pooled,learned,oracle", "--json", str(out)]
    assert main(args) == 0
    rows = _rows(out)
    assert [r["shape"] for r in rows] == ["world L0"] * 3 + ["world L1"] * 3 + ["world mean"] * 3
    assert all(r["batch"] == 4 for r in rows[:6])  # 8 samples of 4 clips: measured on the second half
    mean = [r for r in rows if r["shape"] == "world mean" and r["scorer"] == "pooled"][0]
    assert mean["recall"] == pytest.approx((rows[0]["recall"] + rows[3]["recall"]) / 2)


def status(argv) -> int:
    """``main``'s exit status: its return value, or argparse's exit for a flag its type refuses."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_bad_flags_name_the_flag(capsys):
    assert status(TINY + ["--scorers", "pooled,exact"]) != 0
    assert "--scorers" in capsys.readouterr().err
    assert status(TINY[:-8] + ["--block-sizes", "16,x"]) == 2
    assert "--block-sizes" in capsys.readouterr().err
    for flag, value in (("--density", "2"), ("--density", "nan"), ("--heads", "0"), ("--sizes", "-1024"),
                        ("--sizes", "1024,,2048"), ("--device", "foo"), ("--json", "/nonexistent/x.json")):
        assert status(TINY + [flag, value]) == 2, (flag, value)
        assert f"argument {flag}" in capsys.readouterr().err


def test_no_forced_blocks_every_kept_block_is_ranked(tmp_path, capsys):
    """--local-blocks 0 --sink-blocks 0: nothing forced, so the oracle row is the oracle itself and each
    scorer's recall is bounded by it (with forced blocks the count grows to hold them: here the local
    block of a 128-query block spans 8 key blocks of 16)."""
    out0, out1 = tmp_path / "free.json", tmp_path / "forced.json"
    base = TINY[:-8] + ["--block-sizes", "16", "--eval-blocks", "4", "--scorers", "pooled,oracle"]
    assert main(base + ["--local-blocks", "0", "--sink-blocks", "0", "--json", str(out0)]) == 0
    assert main(base + ["--json", str(out1)]) == 0
    free, forced = _rows(out0), _rows(out1)
    for r in free:
        assert r["forced_per_row"] == 0 and r["oracle_f"] == pytest.approx(r["oracle"])
        assert 0 < r["recall"] <= r["oracle"] + 1e-6
    assert free[1]["recall"] == pytest.approx(free[1]["oracle"])  # the oracle row keeps the oracle's blocks
    assert forced[0]["forced_per_row"] > 0 and forced[0]["kept"] > free[0]["kept"] == 4  # ceil(128 / 32)
    assert json.loads(out0.read_text())["config"]["local_blocks"] == 0
    assert status(base + ["--local-blocks", "-1"]) != 0
    assert "--local-blocks" in capsys.readouterr().err
