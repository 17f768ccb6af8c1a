"""fit_schedule: under a time limit, max_steps follows the measured step rate so the cosine
schedule ends (LR at its floor) when time runs out, instead of being cut mid-way."""
import csv
import time

from vidhash.training import load_train_config
from vidhash.training.schedule import lr_lambda
from vidhash.training.trainer import train


def test_fit_schedule_ends_the_schedule_at_the_deadline(tmp_path):
    minutes = 0.25
    cfg = load_train_config("configs/train/cpu_test.yaml", [
        f"out_dir={tmp_path / 'run'}", "max_steps=1000000", "fit_schedule=true", "checkpoint.every=1000000",
        "optim.min_lr_ratio=0.1", "log_every=1"])
    t0 = time.monotonic()
    summary = train(cfg, max_minutes=minutes, progress=False, export=False, log=lambda *a, **k: None)
    took = time.monotonic() - t0
    assert took < minutes * 60 + 15
    # the schedule was refitted to what the time allows: far below the configured million steps,
    # and the run ended by reaching it (the LR at its floor), not by the time limit
    assert 50 <= cfg.max_steps < 100_000
    rows = list(csv.DictReader(open(tmp_path / "run" / "loss.csv")))
    if summary["reason"] != "done":
        # the fit is from the first steps' times; on a machine whose load grows after it (CI with other
        # jobs) the deadline can come a little before the last step: still most of the fitted schedule
        assert summary["reason"].startswith("max_minutes") and summary["step"] >= 0.75 * cfg.max_steps, summary
        return
    assert summary["step"] == cfg.max_steps
    last_lr = float(rows[-1]["lr"])
    assert abs(last_lr - cfg.optim.lr * lr_lambda(cfg)(cfg.max_steps - 1)) < 1e-12
    assert last_lr < cfg.optim.lr * 0.11


def test_without_fit_schedule_the_time_limit_cuts_the_schedule(tmp_path):
    cfg = load_train_config("configs/train/cpu_test.yaml", [
        f"out_dir={tmp_path / 'run'}", "max_steps=1000000", "checkpoint.every=1000000", "log_every=1"])
    summary = train(cfg, max_minutes=0.1, progress=False, export=False, log=lambda *a, **k: None)
    assert cfg.max_steps == 1_000_000 and summary["reason"].startswith("max_minutes")


def test_a_slow_first_step_does_not_end_a_timed_run():
    from vidhash.training.schedule import out_of_time

    # 55 s of compilation in step 1, then 0.2 s steps: 60 s into a 2.6-minute run there is time left
    assert not out_of_time([55.0], 60.0, 2.6, 0.5)
    assert not out_of_time([55.0, 0.2, 0.2], 61.0, 2.6, 0.5)
    assert out_of_time([55.0, 0.2, 0.2], 150.0, 2.6, 0.5)
    assert out_of_time([1.0, 30.0, 30.0], 60.0, 2.6, 0.5)  # slow steps: three more would overrun


def test_a_refit_changes_the_next_steps_rate_at_once():
    """After fit_schedule changes max_steps, the rate of the very next step is the new schedule's
    (LambdaLR computed it at its last step(), under the old max_steps)."""
    import torch

    from vidhash.training.schedule import refresh_lr

    cfg = load_train_config("configs/train/cpu_test.yaml", ["max_steps=1000", "optim.min_lr_ratio=0.1"])
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=cfg.optim.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    for _ in range(40):
        opt.step()
        sched.step()
    cfg.max_steps = 41  # a refit leaving one step: it must run near the schedule's floor
    stale = sched.get_last_lr()[0]
    refresh_lr(sched)
    want = cfg.optim.lr * lr_lambda(cfg)(40)
    assert stale != want and sched.get_last_lr()[0] == want == opt.param_groups[0]["lr"]
    assert want < cfg.optim.lr * 0.11 < stale
