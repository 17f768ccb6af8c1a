"""wan-mini through ``vidhash train``: a stop and restart is bitwise the run straight through; a
warm start continues an export of the stand-in loop (the runs' real starting point) and the
trainer's own exports; the time budget is fitted once and continued; validations; refusals."""
import csv
import json
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel

from vidhash.cli import main as cli_main
from vidhash.training.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from vidhash.training.families import get_family
from vidhash.training.schedule import lr_lambda
from vidhash.training.state import TRAIN_STATE, build_state
from vidhash.training.trainer import setup_accelerator, train

STANDALONE_EXPORT = Path(__file__).parent / "data" / "standalone-export"  # step 4 of 155 (fitted to 0.5 min)
KEYS = ("step", "loss", "lr", "grad_norm")


def quiet(*a, **k):
    pass


def run(cfg, **kw):
    return train(cfg, progress=False, log=quiet, **kw)


def final(out):
    return load_checkpoint(find_checkpoint(Path(out) / "checkpoints"))


def rows(out):
    return list(csv.DictReader(open(Path(out) / "loss.csv")))


def test_stop_and_resume_is_exact(tiny_cfg, tmp_path):
    over = ["max_steps=6", "log_every=1", "val_every=2", "noise.context_prob=0.5"]
    run(tiny_cfg(f"out_dir={tmp_path / 'a'}", *over))
    b = tiny_cfg(f"out_dir={tmp_path / 'b'}", *over)
    first = run(b, stop_at_step=3, export=False)
    assert first["step"] == 3 and first["reason"] == "stop_at_step 3" and "val_loss_ema" in first
    with pytest.raises(ValueError, match="already holds checkpoints"):
        run(b)
    torch.manual_seed(99)  # the checkpoint restores the global RNGs
    second = run(tiny_cfg(f"out_dir={tmp_path / 'b'}", *over), resume="auto")
    assert second["step"] == 6 and second["reason"] == "done"
    (ta, ma), (tb, mb) = final(tmp_path / "a"), final(tmp_path / "b")
    for group in ("model", "ema", "optim"):
        assert ta[group].keys() == tb[group].keys()
        for k in ta[group]:
            assert torch.equal(ta[group][k], tb[group][k]), (group, k)
    assert ma["data_position"] == mb["data_position"] == 12
    ra, rb = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [[r[k] for k in KEYS] for r in ra] == [[r[k] for k in KEYS] for r in rb] and len(ra) == 6
    # validations at val_every's rows and at each call's end (step 3 of the stopped call)
    assert [r["step"] for r in ra if r["val_loss"]] == ["2", "4", "6"]
    assert [r["step"] for r in rb if r["val_loss"]] == ["2", "3", "4", "6"]
    assert ra[-1]["val_loss_ema"] == rb[-1]["val_loss_ema"] and ra[1]["val_loss"] == rb[1]["val_loss"]


def test_warm_start_continues_an_export_of_the_standalone_loop(tiny_cfg, tmp_path):
    saved = json.loads((STANDALONE_EXPORT / TRAIN_STATE).read_text())["run"]
    assert saved["fitted"] and "budget_minutes" not in saved  # the stand-in loop's format
    # the run's start: the export's weights in model and EMA, its position, its fitted schedule, re-warmed
    cfg = tiny_cfg(f"out_dir={tmp_path / 'c'}", f"init_from={STANDALONE_EXPORT}", "budget_minutes=0.5",
                   "log_every=2", "val_every=2", "optim.rewarm_steps=4")
    family = get_family("wan")
    state = build_state(cfg, family, setup_accelerator(cfg), None, quiet)
    weights = WanTransformer3DModel.from_pretrained(str(STANDALONE_EXPORT / "transformer")).state_dict()
    assert all(torch.equal(v, weights[k].float()) for k, v in state.raw.state_dict().items())
    assert all(torch.equal(v, weights[k].float()) for k, v in state.ema.shadow.items())
    assert (state.step, state.data_pos, cfg.max_steps) == (saved["step"], saved["data_position"], saved["max_steps"])
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optim.lr * lr_lambda(cfg)(4) / 4, rel=1e-12)
    # trained on: the loss log goes on from the export's rows, the schedule and data from its position
    s = run(tiny_cfg(f"out_dir={tmp_path / 'c'}", f"init_from={STANDALONE_EXPORT}", "budget_minutes=0.5",
                     "log_every=2", "val_every=2", "optim.rewarm_steps=4"), stop_at_step=8)
    assert (s["step"], s["data_position"], s["max_steps"]) == (8, 16, saved["max_steps"])
    log = rows(tmp_path / "c")
    assert [r["step"] for r in log] == ["2", "4", "6", "8"]
    assert [r["loss"] for r in log[:2]] == [repr(r["loss"]) for r in saved["rows"]]
    assert log[0]["samples_per_s"] == repr(saved["rows"][0]["clips_per_s"]) and log[3]["val_loss"]
    _, meta = final(tmp_path / "c")
    assert meta["schedule"] == {"max_steps": saved["max_steps"], "fitted_for": 0.5, "rewarm_from": 4, "budget": 0.5}
    # re-warmed: the rate ramps up over rewarm_steps from the continued step
    lr = [float(r["lr"]) for r in log[2:]]  # the rates of steps 5 and 7
    assert lr[0] == pytest.approx(cfg.optim.lr * lr_lambda(cfg)(5) * 2 / 4) and lr[1] == pytest.approx(
        cfg.optim.lr * lr_lambda(cfg)(7))
    # another budget: the saved length is not continued (max_steps from the config)
    s = run(tiny_cfg(f"out_dir={tmp_path / 'd'}", f"init_from={STANDALONE_EXPORT}", "max_steps=6"))
    assert s["step"] == s["max_steps"] == 6
    with pytest.raises(ValueError, match="another model config"):
        run(tiny_cfg(f"out_dir={tmp_path / 'e'}", f"init_from={STANDALONE_EXPORT}", "model.ffn_dim=32"))
    with pytest.raises(FileNotFoundError, match="init_from"):
        run(tiny_cfg(f"out_dir={tmp_path / 'f'}", f"init_from={tmp_path / 'nothing'}"))


def test_exports_chain_runs_through_the_cli(tiny_cfg, tmp_path, capsys):
    """`vidhash train wan_mini_cpu`: one call exports (with train_state.json), the next continues it."""
    base = ["wan_mini_cpu", "data.num_frames=8", "noise.max_context_frames=3", "batch_size=2", "max_steps=8",
            "log_every=2", "val_every=2", "--no-progress"]
    assert cli_main(["train", *base, f"out_dir={tmp_path / 'a'}", "--stop-at-step", "4"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    export = Path(first["export"])
    state = json.loads((export / TRAIN_STATE).read_text())
    assert state["run"]["step"] == 4 and state["run"]["data_position"] == 8 and not state["run"]["fitted"]
    assert len(state["run"]["rows"]) == 2 and state["fingerprint"] == get_family("wan").fingerprint(tiny_cfg())
    assert str(tmp_path) not in state["config"] and "out_dir: a\n" in state["config"]  # ships: no machine path
    assert cli_main(["train", *base, f"out_dir={tmp_path / 'b'}", f"init_from={export}"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["step"] == 8 and second["data_position"] == 16
    assert [r["step"] for r in rows(tmp_path / "b")] == ["2", "4", "6", "8"]
    assert rows(tmp_path / "b")[:2] == rows(tmp_path / "a")


def test_budget_is_fitted_once_and_continued(tiny_cfg, tmp_path):
    over = [f"out_dir={tmp_path}", "max_steps=50", "fit_after=2", "log_every=1"]
    # no time left in the budget: after fit_after steps max_steps becomes the next step
    s = run(tiny_cfg(*over, "budget_minutes=0.0001"))
    assert s["step"] == s["max_steps"] == 3
    _, meta = final(tmp_path)
    assert meta["schedule"] == {"max_steps": 3, "fitted_for": 0.0001, "rewarm_from": -1, "budget": 0.0001}
    s = run(tiny_cfg(*over, "budget_minutes=0.0001"), resume="auto")  # continued: nothing left to train
    assert s["step"] == s["max_steps"] == 3
    s = run(tiny_cfg(*over, "budget_minutes=0.0002"), resume="auto")  # another budget: fitted again
    assert s["step"] == s["max_steps"] == 6
    # a call that does not name the budget (keep_budget, the CLI's default then) keeps the fitted schedule
    # although its config says another budget (before, that one was fitted: 0.5 min, ~ hundreds of steps)
    s = run(tiny_cfg(*over, "budget_minutes=0.5"), resume="auto", keep_budget=True)
    assert s["step"] == s["max_steps"] == 6
    _, meta = final(tmp_path)
    assert meta["schedule"]["fitted_for"] == 0.0002


def test_a_new_budget_extends_a_run_past_a_shorter_config_length(tiny_cfg, tmp_path):
    """A run fitted and ended at step 3, continued with a new budget by a config whose max_steps (2)
    is behind it: the loop runs to the fit (before, it did not start: nothing was trained or fitted)."""
    over = [f"out_dir={tmp_path}", "fit_after=2", "log_every=1"]
    s = run(tiny_cfg(*over, "max_steps=50", "budget_minutes=0.0001"))
    assert s["step"] == s["max_steps"] == 3
    s = run(tiny_cfg(*over, "max_steps=2", "budget_minutes=0.0002"), resume="auto")
    assert s["step"] == s["max_steps"] == 6  # two steps to the fit (no time left: the next step)
    _, meta = final(tmp_path)
    assert meta["schedule"]["fitted_for"] == 0.0002


def test_a_length_set_without_a_budget_is_kept_too(tiny_cfg, tmp_path):
    """max_steps=5 with budget_minutes=0, stopped at step 2, continued by a call whose config has a
    budget (the YAML's): kept at 5 — before, that budget was fitted (here: to the next step, 3)."""
    over = [f"out_dir={tmp_path}", "fit_after=1", "log_every=1"]
    s = run(tiny_cfg(*over, "max_steps=5", "budget_minutes=0"), stop_at_step=2)
    assert s["step"] == 2
    s = run(tiny_cfg(*over, "max_steps=50", "budget_minutes=0.0001"), resume="auto", keep_budget=True)
    assert s["step"] == s["max_steps"] == 5


def test_a_continued_export_keeps_its_fit_and_a_new_budget_refits_from_its_length(tiny_cfg, tmp_path):
    """init_from an export fitted to 0.5 min (step 4 of 155): a call without budget_minutes keeps
    155 although its config says 0.0001; one that names 0.0001 refits (to the next step: no time
    left), its learning rate until then on the export's 155 steps, not the config's 50."""
    saved = json.loads((STANDALONE_EXPORT / TRAIN_STATE).read_text())["run"]
    over = [f"init_from={STANDALONE_EXPORT}", "max_steps=50", "budget_minutes=0.0001", "fit_after=1", "log_every=1"]
    s = run(tiny_cfg(f"out_dir={tmp_path / 'a'}", *over), stop_at_step=6, keep_budget=True)
    assert (s["step"], s["max_steps"]) == (6, saved["max_steps"])
    cfg = tiny_cfg(f"out_dir={tmp_path / 'b'}", *over)
    state = build_state(cfg, get_family("wan"), setup_accelerator(cfg), None, quiet)
    assert cfg.max_steps == saved["max_steps"] and state.fitted_for == 0  # the interim length; the loop refits
    s = run(tiny_cfg(f"out_dir={tmp_path / 'b'}", *over))
    assert s["step"] == s["max_steps"] == saved["step"] + 2  # fitted after one step: nothing left of 0.0001 min


def test_the_cli_keeps_a_fitted_budget_unless_the_call_names_one(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("vidhash.training.trainer.train",
                        lambda cfg, **kw: seen.append((kw["keep_budget"], cfg.budget_minutes, cfg.max_steps)) or {})
    base = ["train", "wan_mini", f"out_dir={tmp_path}"]  # the GPU recipe: budget_minutes 110, max_steps 8000
    assert cli_main([*base, "--resume", "auto"]) == 0
    assert cli_main([*base, "budget_minutes=66", "--resume", "auto"]) == 0
    assert cli_main([*base, "max_steps=600", "--resume", "auto"]) == 0  # a length named: that length, no budget
    assert cli_main([*base, "max_steps=600", "budget_minutes=66", "--resume", "auto"]) == 0  # both: as named
    assert seen == [(True, 110, 8000), (False, 66, 8000), (False, 0, 600), (False, 66, 600)]


def test_a_named_length_extends_a_run_set_by_length(tiny_cfg, tmp_path):
    """max_steps=3 budget_minutes=0, then a call naming only max_steps=6 (the CLI: not kept, with
    budget_minutes=0): to 6."""
    over = [f"out_dir={tmp_path}", "fit_after=1", "log_every=1", "budget_minutes=0"]
    assert run(tiny_cfg(*over, "max_steps=3"))["step"] == 3
    s = run(tiny_cfg(*over, "max_steps=6"), resume="auto", keep_budget=False)
    assert s["step"] == s["max_steps"] == 6


def test_a_named_length_replaces_a_fitted_budget_through_the_cli(tmp_path, capsys):
    """A run fitted to a budget, continued by `vidhash train ... max_steps=N`: N steps, budget off."""
    base = ["train", "wan_mini_cpu", "data.num_frames=8", "noise.max_context_frames=3", "batch_size=2",
            "log_every=1", "fit_after=1", f"out_dir={tmp_path}", "--no-progress", "--no-export"]
    assert cli_main([*base, "max_steps=50", "budget_minutes=0.0001"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["step"] == first["max_steps"] == 2  # fitted after one step: no time left
    assert cli_main([*base, "max_steps=4", "--resume", "auto"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["step"] == second["max_steps"] == 4


def test_a_checkpoint_of_the_standalone_loop_is_refused(tiny_cfg, tmp_path):
    cfg = tiny_cfg(f"out_dir={tmp_path}")
    meta = {"fingerprint": get_family("wan").fingerprint(cfg), "config": "", "optim": {"param_groups": []},
            "run": {"step": 3, "data_position": 6}}
    save_checkpoint(tmp_path / "checkpoints", 3, {"model": {}, "ema": {}, "optim": {}}, meta)
    with pytest.raises(ValueError, match="not written by vidhash train.*init_from"):
        run(cfg, resume="auto")
