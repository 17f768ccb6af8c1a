"""The learning-rate schedule and the time budget: warmup + cosine, ``max_minutes``, ``fit_schedule``.

    python -c "from vidhash.training import load_train_config; from vidhash.training.schedule import lr_lambda; \
print(lr_lambda(load_train_config('cpu_test'))(3))"

``--max-minutes`` stops a run with a checkpoint before its time is up (:func:`out_of_time`);
with ``fit_schedule`` the run first refits ``max_steps`` to the measured step rate
(:func:`fit_schedule`) so the cosine ends at the deadline instead of being cut mid-way.
"""
from __future__ import annotations

import math

import torch

from .config import TrainConfig


def lr_lambda(cfg: TrainConfig):
    """The LR multiplier of step ``step``: linear warmup, then cosine down to ``optim.min_lr_ratio``
    at ``max_steps`` (read at each call: a refit ``max_steps`` takes effect)."""
    o = cfg.optim

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        span = max(1, cfg.max_steps - o.warmup_steps)
        progress = min(1.0, (step - o.warmup_steps) / span)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def out_of_time(step_times: list[float], used_s: float, max_minutes: float, save_s: float) -> bool:
    """Stop now under ``--max-minutes``? True when three more steps (at the median of the recent
    ones), two saves and a slack would pass the limit. The run's first step is left out of the
    median: it holds compilation (a minute with ``compile=true``), which once made a 2.6-minute
    run stop after one step."""
    return used_s + 3 * median_step(step_times, 20) + 2 * save_s + slack(max_minutes) > max_minutes * 60


def median_step(step_times: list[float], last: int) -> float:
    """Median of the last ``last`` step times, the run's first (compiling) step left out; 0 if none."""
    warm = step_times[1:][-last:] or [0.0]
    return sorted(warm)[len(warm) // 2]


def slack(max_minutes: float) -> float:
    """Seconds kept free before a time limit for the final checkpoint and export."""
    return min(10.0, 3.0 * max_minutes)


def refresh_lr(scheduler) -> None:
    """The learning rate of the next step again from the schedule: ``LambdaLR`` computed it at
    its last ``step()``, before ``fit_schedule`` changed ``max_steps`` (else one step would use the
    old schedule's rate — the last one, when the refit leaves a single step)."""
    lrs = [base * lam(scheduler.last_epoch) for base, lam in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs


def fit_schedule(cfg: TrainConfig, accelerator, step: int, step_times: list[float], seconds_left: float,
                 margin_s: float, fit_at: int, main: bool, log) -> int | None:
    """``fit_schedule``: set ``cfg.max_steps`` to the steps that fit in ``seconds_left`` at the median
    rate of the recent steps (less ``margin_s`` for the final checkpoint and export), the same on
    every process. Returns the step count of this run at which to fit again (None: no more)."""
    per_step = median_step(step_times, max(20, fit_at // 2))
    budget = seconds_left - margin_s - 3 * per_step
    want = torch.tensor(float(step + max(1, int(0.97 * budget / max(per_step, 1e-6)))), device=accelerator.device)
    if accelerator.num_processes > 1:
        want = accelerator.reduce(want * (1.0 if main else 0.0), "sum")  # the main process decides
    new = max(step + 1, int(want.item()))
    if main and new != cfg.max_steps:
        log(f"fit_schedule: {per_step * 1000:.0f} ms/step, {seconds_left:.0f} s left: max_steps {cfg.max_steps} -> {new}")
    cfg.max_steps = new
    remaining = new - step
    return None if remaining < fit_at else fit_at * 2
