import pytest
import torch

from vidhash.training import load_train_config
from vidhash.training.profile import StepProfiler, parse_steps
from vidhash.training.trainer import train

MICRO = ["model.hidden_dim=16", "model.num_heads=2", "model.num_layers=1", "data.num_frames=4",
         "noise.chunk_frames=2", "batch_size=2", "checkpoint.every=1000", "optim.warmup_steps=1",
         "data.num_workers=0", "data.world_cache=off"]


def test_parse_steps():
    assert parse_steps("300:310") == (300, 310)
    for bad in ("300", "a:b", "5:5", "-1:3", "9:2"):
        with pytest.raises(ValueError, match="--profile-steps"):
            parse_steps(bad)


def test_profiled_window_of_a_run(tmp_path):
    logs = []
    summary = train(load_train_config("cpu_test", [f"out_dir={tmp_path}", "max_steps=6", *MICRO]),
                    progress=False, export=False, log=lambda *a, **k: logs.append(" ".join(map(str, a))),
                    profile_steps=(2, 5))
    p = summary["profile"]
    assert p["steps"] == 3  # steps 2, 3, 4
    assert p["host_op_ms"] > 0 and p["wall_ms"] > 0 and p["launches"] == 0  # CPU: no kernel launches
    text = (tmp_path / "profile.txt").read_text()
    assert "profiled steps 2..4 (3)" in text and "aten::" in text  # the model's ops were recorded
    assert any("profile:" in ln for ln in logs)
    rows = [ln.split() for ln in text.splitlines()[5:35] if ln.startswith("aten::")]
    assert sum(float(r[-2]) for r in rows) <= p["host_op_ms"] * 1.001  # per-op ms per step add up to at most the total


def test_window_past_the_end_is_cut_at_the_last_step(tmp_path):
    summary = train(load_train_config("cpu_test", [f"out_dir={tmp_path}", "max_steps=3", *MICRO]),
                    progress=False, export=False, log=lambda *a, **k: None, profile_steps=(1, 100))
    assert summary["profile"]["steps"] == 2


def test_no_window_no_profile(tmp_path):
    prof = StepProfiler(None, tmp_path / "p.txt", torch.device("cpu"))
    prof.before_step(0)
    assert prof.after_step(1, stopping=True) is None and not (tmp_path / "p.txt").exists()


def test_timing_summary_leaves_the_profiled_steps_out(tmp_path):
    summary = train(load_train_config("cpu_test", [f"out_dir={tmp_path}", "max_steps=12", *MICRO]),
                    progress=False, export=False, log=lambda *a, **k: None, profile_steps=(7, 9))
    assert summary["profile"]["steps"] == 2
    # 12 steps, less the 2 profiled and the one after them, less the 5 warm-up steps the summary skips
    assert summary["timing"]["steps"] == 12 - 3 - 5
