"""The standalone wan-mini loop: a stop and restart is bitwise the run straight through; warm starts
from an export; the time budget; refusals."""
import json

import pytest
import torch

from vidhash.training.checkpoint import find_checkpoint, load_checkpoint
from vidhash.training.wan_standalone import TRAIN_STATE, train_wan

KEYS = ("step", "loss", "lr", "grad_norm")


def quiet(*a):
    pass


def final_state(out):
    tensors, meta = load_checkpoint(find_checkpoint(out / "checkpoints"))
    return tensors, meta["run"]


def test_stop_and_resume_is_exact(tiny_cfg, tmp_path):
    cfg = tiny_cfg("max_steps=6", "log_every=1", "checkpoint_every=100", "noise.context_prob=0.5")
    train_wan(cfg, tmp_path / "a", log=quiet)
    first = train_wan(cfg, tmp_path / "b", stop_at_step=3, log=quiet)
    assert first["step"] == 3 and first["reason"] == "stop_at_step 3"
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train_wan(cfg, tmp_path / "b", log=quiet)
    second = train_wan(cfg, tmp_path / "b", resume=True, log=quiet)
    assert second["step"] == 6 and second["reason"] == "max_steps"
    (ta, ra), (tb, rb) = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    for group in ("model", "ema", "optim"):
        assert ta[group].keys() == tb[group].keys()
        for k in ta[group]:
            assert torch.equal(ta[group][k], tb[group][k]), (group, k)
    assert ra["data_position"] == rb["data_position"] == 12
    assert [[r[k] for k in KEYS] for r in ra["rows"]] == [[r[k] for k in KEYS] for r in rb["rows"]]
    assert len(rb["rows"]) == 6
    assert ra["rows"][-1]["val_loss_ema"] == rb["rows"][-1]["val_loss_ema"]  # every call ends with a validation
    assert "val_loss" in rb["rows"][2] and "val_loss" not in ra["rows"][2]


def test_warm_start_from_an_export_continues(tiny_cfg, tmp_path):
    cfg = tiny_cfg("max_steps=6", "log_every=2", "optim.rewarm_steps=4")
    train_wan(cfg, tmp_path / "a", stop_at_step=4, export_to=tmp_path / "out", log=quiet)
    export = tmp_path / "out" / "wan-mini"
    state = json.loads((export / TRAIN_STATE).read_text())
    assert state["run"]["step"] == 4 and (tmp_path / "out" / "loss.csv").is_file()
    s = train_wan(cfg, tmp_path / "c", init_from=str(export), log=quiet)
    _, run = final_state(tmp_path / "c")
    assert s["step"] == 6 and run["rewarm_from"] == 4 and run["data_position"] == 12
    assert [r["step"] for r in run["rows"]] == [2, 4, 6]
    assert {"val_loss", "val_loss_ema"} <= set(run["rows"][-1]) and "val_loss" not in run["rows"][0]
    assert run["rows"][-1]["lr"] < run["rows"][1]["lr"] * 0.75  # re-warming: 2/4 of the schedule's rate or less
    other = tiny_cfg("max_steps=6", "model.ffn_dim=32")
    with pytest.raises(ValueError, match="another model config"):
        train_wan(other, tmp_path / "d", init_from=str(export), log=quiet)
    with pytest.raises(FileNotFoundError, match="--init-from"):
        train_wan(cfg, tmp_path / "e", init_from=str(tmp_path / "nothing"), log=quiet)


def test_time_budget_and_limit(tiny_cfg, tmp_path):
    # budget_minutes: after fit_after steps max_steps is refitted (here to the next step: no time left), once
    cfg = tiny_cfg("max_steps=50", "budget_minutes=0.0001", "fit_after=2")
    s = train_wan(cfg, tmp_path / "a", log=quiet)
    _, run = final_state(tmp_path / "a")
    assert s["step"] == 3 and run["max_steps"] == 3 and run["fitted"]
    # --minutes: stops (with a checkpoint) when the next steps and the save would not fit
    s = train_wan(tiny_cfg("max_steps=50"), tmp_path / "b", minutes=1e-4, reserve_s=0.0, log=quiet)
    assert s["step"] == 1 and s["reason"].startswith("minutes") and find_checkpoint(tmp_path / "b" / "checkpoints")
