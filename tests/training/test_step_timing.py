"""The trainer's step-time breakdown (loss.csv columns, summary) and the DDP / loader options."""
from __future__ import annotations

import csv
import os
import sys
import time

import pytest
import torch

from vidhash.training import load_train_config
from vidhash.training.checkpoint import load_checkpoint
from vidhash.training.loop import CSV_FIELDS, LaggedMax
from vidhash.training.timing import TIMING_FIELDS, TIMING_PARTS, StepTimer, format_timing, timing_summary
from vidhash.training.trainer import ddp_kwargs_handlers, train

MICRO = ["model.hidden_dim=16", "model.num_heads=2", "model.num_layers=1", "data.num_frames=4",
         "noise.chunk_frames=2", "batch_size=2", "checkpoint.every=1000", "optim.warmup_steps=1"]


def micro(tmp_path, *extra, name="run"):
    return load_train_config("cpu_test", [f"out_dir={tmp_path / name}", *MICRO, *extra])


def run(cfg, **kw):
    return train(cfg, progress=False, export=False, log=lambda *a, **k: None, **kw)


def test_breakdown_columns_in_the_log_and_summary(tmp_path):
    summary = run(micro(tmp_path, "max_steps=8", "log_every=2"))
    with open(tmp_path / "run" / "loss.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_FIELDS
        rows = list(reader)
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]
    for r in rows:
        vals = {k: float(r[k]) for k in TIMING_FIELDS}
        assert all(v >= 0 for v in vals.values()), vals
        assert vals["fwd_ms"] > 0 and vals["bwd_ms"] > 0 and vals["opt_ms"] > 0 and vals["step_ms"] > 0
        assert vals["idle_ms"] == 0  # CPU: no device to idle
        parts = sum(vals[f"{p}_ms"] for p in TIMING_PARTS)
        # on CPU every part is wall time inside the step; step_ms also holds the stop checks
        assert parts <= vals["step_ms"] * 1.05 + 1.0, (parts, vals)
        # samples_per_s and step_ms describe the same interval
        assert float(r["samples_per_s"]) == pytest.approx(2 / (vals["step_ms"] / 1000), rel=1e-6)
    t = summary["timing"]
    assert t["steps"] == 3  # 8 steps, the first 5 (compilation, warm-up) left out
    assert t["samples_per_s"] > 0 and all(t[f"{p}_ms"] >= 0 for p in TIMING_PARTS)
    assert "samples/s" in format_timing(t, 1)


def test_no_host_read_per_step(tmp_path, monkeypatch):
    """The trainer reads the loss, grad norm and timings once per log interval, not every step: 2
    log intervals read as many tensors to the host as 2 intervals twice as long. (Reads elsewhere,
    e.g. CPU AdamW's step counters, are CPU tensors on GPU runs too: not counted.)"""
    import vidhash.training as package

    # the trainer, its loop, state and objective, the model families; not the data pipeline (its
    # reads are of CPU tensors: the loader's batches, the noise seeds)
    watched = os.path.dirname(package.__file__) + os.sep
    data_py = os.path.join(watched, "data.py")
    reads = {"n": 0}
    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, **k):
            where = sys._getframe(1).f_code.co_filename
            if where.startswith(watched) and where != data_py:
                reads["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def count(steps):
        reads["n"] = 0
        run(micro(tmp_path, f"max_steps={steps}", f"log_every={steps // 2}", name=f"s{steps}"))
        return reads["n"]

    short, long = count(4), count(8)
    assert 0 < short == long, (short, long)  # the log rows' reads are seen: a per-step read would be too


def test_step_timer_on_cpu():
    timer = StepTimer(torch.device("cpu"))
    for _ in range(3):
        timer.begin()
        for part in ("h2d", "fwd", "bwd", "h2d", "fwd", "bwd", "opt", "ema"):  # two micro-batches
            time.sleep(0.001)
            timer.mark(part)
        timer.end()
    steps = timer.collect()
    assert len(steps) == 3 and timer.collect() == []
    for s in steps:
        assert s["h2d"] >= 2 and s["fwd"] >= 2 and s["opt"] >= 1 and s["idle"] == 0


def test_timing_summary_skips_warmup():
    steps = [{"data": 0.0, "fwd": 1000.0, "step": 60_000.0}] + [
        {"data": 1.0, "fwd": 10.0, "bwd": 20.0, "log": 0.5 if i % 2 else 0.0, "step": 50.0} for i in range(9)]
    t = timing_summary(steps, batch_size=64)
    assert t["steps"] == 5 and t["fwd_ms"] == 10.0 and t["step_ms"] == 50.0
    assert t["samples_per_s"] == pytest.approx(64 / 0.05) and 0 < t["log_ms"] < 0.5
    assert timing_summary([], 64) == {}


def test_lagged_max_one_process_answers_at_once():
    class Acc:
        num_processes, device = 1, torch.device("cpu")

    agree = LaggedMax(Acc())
    assert agree(0) == 0 and agree(1) == 1


# ------------------------------------------------------------------------------ options


def test_ddp_options_default_to_pytorch_and_reach_the_kwargs():
    base = load_train_config("cpu_test")
    (h,) = ddp_kwargs_handlers(base)
    assert h.to_kwargs() == {}  # PyTorch's DDP defaults: the behaviour before these keys
    cfg = load_train_config("cpu_test", ["ddp_bucket_cap_mb=50", "ddp_static_graph=true",
                                         "ddp_gradient_as_bucket_view=true", "ddp_split_compiled=false"])
    (h,) = ddp_kwargs_handlers(cfg)
    assert h.to_kwargs() == {"bucket_cap_mb": 50, "static_graph": True, "gradient_as_bucket_view": True}
    assert ddp_kwargs_handlers(load_train_config("cpu_test", ["ddp_bucket_cap_mb=2.5"]))[0].to_kwargs() == {
        "bucket_cap_mb": 2.5}
    assert cfg.ddp_split_compiled is False


def test_option_errors_name_the_key():
    with pytest.raises(ValueError, match="ddp_bucket_cap"):
        load_train_config("cpu_test", ["ddp_bucket_cap=10"])  # unknown key
    with pytest.raises(ValueError, match="ddp_static_graph"):
        load_train_config("cpu_test", ["ddp_static_graph=maybe"])
    with pytest.raises(ValueError, match="ddp_bucket_cap_mb"):
        load_train_config("cpu_test", ["ddp_bucket_cap_mb=0"])
    with pytest.raises(ValueError, match="data.prefetch_factor"):
        load_train_config("cpu_test", ["data.prefetch_factor=0"])
    with pytest.raises(ValueError, match="data.num_workers"):
        load_train_config("cpu_test", ["data.num_workers=-1"])
    cfg = load_train_config("cpu_test", ["data.num_workers=3", "data.prefetch_factor=2", "data.pin_memory=false"])
    assert (cfg.data.num_workers, cfg.data.prefetch_factor, cfg.data.pin_memory) == (3, 2, False)


def test_fused_adamw_setting():
    from vidhash.training.state import use_fused_adamw

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_fused_adamw("auto", cuda) and not use_fused_adamw("auto", cpu)  # auto: on CUDA only
    assert use_fused_adamw("on", cpu) and use_fused_adamw("True", cpu)
    assert not use_fused_adamw("off", cuda) and not use_fused_adamw("False", cuda)
    with pytest.raises(ValueError, match="optim.fused"):
        load_train_config("cpu_test", ["optim.fused=sometimes"])


def test_fused_adamw_trains_like_foreach_on_cpu(tmp_path):
    a = run(micro(tmp_path, "max_steps=3", name="foreach"))
    b = run(micro(tmp_path, "max_steps=3", "optim.fused=on", name="fused"))
    la = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "foreach" / "loss.csv"))]
    lb = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "fused" / "loss.csv"))]
    assert a["step"] == b["step"] == 3 and la == pytest.approx(lb, rel=1e-4)  # same math, another kernel
    groups = {name: load_checkpoint(s["checkpoint"])[1]["optim"]["param_groups"] for name, s in (("foreach", a), ("fused", b))}
    assert all(g["fused"] for g in groups["fused"]) and not any(g["fused"] for g in groups["foreach"])
