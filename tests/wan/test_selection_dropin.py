"""`vidhash bench selection --dropin`: a trained diffusers Wan's self-attention rows (here a tiny
randomly initialised wan-mini on a CPU: the code path, not the numbers), the recording kept and
re-read, and ``capture_steps`` stopping after the last wanted step."""
import json

import pytest
import torch

from vidhash.bench import dropin
from vidhash.cli import main

FLAGS = ["bench", "selection", "--sizes", "", "--no-wan", "--device", "cpu", "--block-sizes", "16", "--query-block", "32",
         "--density", "1/4", "--local-blocks", "0", "--sink-blocks", "0", "--scorers", "pooled,learned,oracle",
         "--fit-steps", "5", "--eval-blocks", "4"]


def test_dropin_rows_and_cache(tiny_model, tmp_path, capsys):
    # 8 frames of 32² with 8² patches = 128 tokens: key blocks of 16 → 8 blocks, 1/4 → 2 kept, none forced
    cache, out = tmp_path / "rec.pt", tmp_path / "sel.json"
    record = ["--dropin", str(tiny_model), "--dropin-seeds", "0,1", "--dropin-steps", "0,2", "--dropin-schedule", "3",
              "--dropin-frames", "8", "--dropin-size", "32", "--dropin-cache", str(cache)]
    assert main([*FLAGS, *record, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert report["config"]["dropin_steps"] == [0, 2] and "_run" not in report["config"]  # flags only
    assert report["config"]["dropin_cache"] == "rec.pt"  # by file name: no machine path
    assert all(r["recording"] == {"seeds": [0, 1], "steps": [0, 2], "frames": 8, "size": 32, "total": 3} for r in report["rows"])
    layers = [r for r in rows if r["shape"].startswith("dropin blocks.")]
    means = {r["scorer"]: r for r in rows if r["shape"] == "dropin mean"}
    assert sorted({r["shape"] for r in layers}) == ["dropin blocks.0.attn1", "dropin blocks.1.attn1"]
    assert set(means) == {"pooled", "learned", "oracle"} and all(r["layers"] == 2 for r in means.values())
    for r in layers:  # measured on the second seed's 2 steps only: 2 samples of 3 heads × 128 tokens
        assert r["batch"] == 2 and r["n"] == 128 and r["kept"] == 2 and r["forced_per_row"] == 0
        assert 0 < r["recall"] <= r["oracle"] + 1e-6
    assert means["oracle"]["ratio"] == pytest.approx(1.0)
    pooled = [r for r in layers if r["scorer"] == "pooled"]
    for key in ("recall", "err", "err_mean", "attn_ms"):  # every column of the mean row is the layers' mean
        assert means["pooled"][key] == pytest.approx(sum(r[key] for r in pooled) / 2), key
    rec = torch.load(cache)
    assert rec["seeds"] == [0, 1] and rec["steps"] == [0, 2] and rec["total"] == 3
    q, k, v = rec["layers"]["blocks.0.attn1"]
    assert q.shape == k.shape == v.shape == (4, q.shape[1], 128, q.shape[-1]) and q.dtype == torch.bfloat16
    # the recording alone (no model) measures the same rows
    out2 = tmp_path / "again.json"
    assert main([*FLAGS, "--dropin-cache", str(cache), "--json", str(out2)]) == 0
    again = json.loads(out2.read_text())["rows"]
    for a, b in zip(rows, again):
        if a["scorer"] != "learned":  # the learned fit is seeded but not bitwise across runs
            assert a["recall"] == b["recall"] and a["shape"] == b["shape"]
    assert "dropin mean" in capsys.readouterr().out
    # a recording of one seed cannot be split into a fitting and a measured half
    rec["seeds"] = [0]
    torch.save(rec, tmp_path / "one.pt")
    assert main([*FLAGS, "--dropin-cache", str(tmp_path / "one.pt")]) != 0
    assert "a recording of 1 seed" in capsys.readouterr().err


def test_capture_steps_stops_after_the_last_wanted_step(tiny_model, monkeypatch):
    pipe = dropin.load_pipeline(str(tiny_model), "cpu", "fp32")
    calls, freed = [], []
    monkeypatch.setattr(pipe, "maybe_free_model_hooks", lambda: freed.append(1))  # what CPU offload relies on
    handle = pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        captured = dropin.capture_steps(pipe, 0, (1,), 8, 32, 5)
    finally:
        handle.remove()
    assert len(calls) == 2 and list(captured) == [1] and freed == [1]
    assert sorted(captured[1]) == ["blocks.0.attn1", "blocks.1.attn1"]
    # the recording processors are gone: the model runs its own attention again
    assert not any(type(p).__name__ == "Recording" for p in pipe.transformer.attn_processors.values())


@pytest.mark.parametrize("argv, match", [
    (["--dropin", "no/such/folder"], "--dropin no/such/folder: no such pipeline folder"),
    (["--dropin-cache", "missing.pt"], "no --dropin model to record it from"),
])
def test_dropin_flag_errors_name_the_flag(argv, match, capsys):
    assert main([*FLAGS, *argv]) != 0
    assert match in capsys.readouterr().err


def test_dropin_needs_two_seeds_and_steps_in_the_schedule(tiny_model, capsys):
    assert main([*FLAGS, "--dropin", str(tiny_model), "--dropin-seeds", "0"]) != 0
    assert "--dropin-seeds needs at least 2 seeds" in capsys.readouterr().err
    assert main([*FLAGS, "--dropin", str(tiny_model), "--dropin-steps", "30"]) != 0
    assert "--dropin-steps must be denoising steps in [0, --dropin-schedule = 30)" in capsys.readouterr().err
