"""The step loop of ``vidhash train`` (:func:`vidhash.training.trainer.train`, step 6).

    loop = TrainLoop(cfg, family, accelerator, state, out_dir, ...); loop.run(loader, stop)

One optimizer step: the micro-batches' losses from the model family
(:class:`~vidhash.training.families.ModelFamily`), normalised over all processes, backward,
clipping, AdamW, the schedule, the EMA. Then, every ``log_every`` steps, a ``loss.csv`` row (with
the peak GPU memory on CUDA, and every ``val_every`` steps the validation losses,
:mod:`vidhash.training.validation`); the time budget (``fit_schedule``, ``budget_minutes``); the
stop conditions; a checkpoint every ``checkpoint.every`` steps and when the loop stops (done,
``--stop-at-step``, ``--max-minutes``, SIGTERM / Ctrl-C), after a last validation.

No step waits for the device: the loss is summed on the device and read once per log interval,
the step's parts are timed with CUDA events read then too (:mod:`vidhash.training.timing`),
batch copies are asynchronous, and processes agree on stopping one step late (:class:`LaggedMax`).
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .families import ModelFamily
from .profile import StepProfiler
from .schedule import fit_schedule, median_step, out_of_time, refresh_lr, slack
from .state import TrainState
from .timing import TIMING_FIELDS, TIMING_PARTS, StepTimes
from .validation import VAL_FIELDS, Validator

CSV_FIELDS = ("step", "loss", "lr", "grad_norm", "samples_per_s", "elapsed_s") + TIMING_FIELDS
EXTRA_FIELDS = ("gpu_mem_gb",) + VAL_FIELDS  # columns of loss.csv only when some row has them


class TrainLoop:
    """Runs ``state`` from its step to ``cfg.max_steps`` (or a stop); see the module docstring.
    After :meth:`run`: ``reason`` (why it stopped), ``last_ckpt``, ``times`` (:class:`StepTimes`),
    ``profiler``."""

    def __init__(self, cfg: TrainConfig, family: ModelFamily, accelerator, state: TrainState, out_dir: Path, *,
                 ckpt: Path | None, t_start: float, max_minutes: float, stop_at_step: int | None,
                 progress: bool, profile_steps: tuple[int, int] | None, log):
        self.cfg, self.family, self.acc, self.state = cfg, family, accelerator, state
        self.ckpt_root, self.csv_path = out_dir / "checkpoints", out_dir / "loss.csv"
        self.t_start, self.max_minutes, self.stop_at_step = t_start, max_minutes, stop_at_step
        self.progress, self.log, self.main = progress, log, accelerator.is_main_process
        self.nproc, self.dev = accelerator.num_processes, accelerator.device
        self.reason, self.last_ckpt, self.last_save_s = "done", ckpt, 0.0
        self.step_times: list[float] = []  # wall seconds of each step of this run
        self.run_start = state.step
        self.fit_next = cfg.fit_after if cfg.fit_schedule and max_minutes and max_minutes > 0 else None
        self.fit_budget = cfg.budget_minutes > 0 and state.fitted_for != cfg.budget_minutes  # once, then continued
        self.validator = Validator(cfg, family, accelerator) if cfg.val_every else None
        self.last_val: dict[str, float] = {}
        self.header = csv_fields(state.rows)
        self.times = StepTimes(accelerator)
        self.agree = LaggedMax(accelerator)
        self.loss_dev = torch.zeros((), dtype=torch.float64, device=self.dev)  # this interval's loss, on the device
        self.n_acc, self.samples_since, self.t_log = 0, 0, time.monotonic()
        rank = accelerator.process_index
        self.profiler = StepProfiler(profile_steps, out_dir / ("profile.txt" if self.nproc == 1 else f"profile-rank{rank}.txt"),
                                     self.dev, log if self.main else (lambda *a, **k: None))

    def run(self, loader, stop: StopFlag) -> None:
        """Steps until ``max_steps`` or a stop, then the final checkpoint."""
        from tqdm.auto import tqdm

        cfg, st = self.cfg, self.state
        bar = tqdm(total=cfg.max_steps, initial=st.step, disable=not (self.progress and self.main), desc="train",
                   dynamic_ncols=True)
        it = iter(loader)
        while st.step < cfg.max_steps:
            self.profiler.before_step(st.step)
            t0, t0m = time.perf_counter(), time.monotonic()
            batches = [next(it) for _ in range(cfg.grad_accum)]
            t_data = time.perf_counter() - t0
            lr, grad_norm = self._optimizer_step(batches)
            self.step_times.append(time.monotonic() - t0m)
            t_log0 = time.perf_counter()
            host = self.times.host_step(t_data, st.step)
            if st.step % cfg.log_every == 0 or st.step == cfg.max_steps:
                self._log_row(lr, grad_norm, bar)
                self.times.log_ms = (time.perf_counter() - t_log0) * 1000.0
            bar.update(1)
            if self.fit_next is not None and st.step - self.run_start >= self.fit_next:
                self._fit_schedule(bar)
            if self.fit_budget and st.step - self.run_start >= cfg.fit_after:
                self._fit_budget(bar)
            stopping = self._should_stop(stop)
            host["step"] = (time.perf_counter() - t0) * 1000.0  # everything since the start, stop checks included
            self.profiler.after_step(st.step, stopping or st.step >= cfg.max_steps)
            if stopping:
                break
            if st.step % cfg.checkpoint.every == 0 and st.step < cfg.max_steps:
                self.save("every")
        del it  # stops the loader's workers (they could publish worlds again)
        bar.close()
        if self.times.host:  # steps since the last log row
            self.times.flush()
        self._last_validation()
        self.save(self.reason)

    # ------------------------------------------------------------------ one optimizer step
    def _optimizer_step(self, batches: list[dict]) -> tuple[float, torch.Tensor]:
        """Micro-batches → loss → gradients → AdamW, schedule, EMA; returns (this step's lr, grad norm)."""
        cfg, st, timer = self.cfg, self.state, self.times.timer
        timer.begin()
        total = self.acc.reduce(self.family.loss_count(batches, self.dev), "sum").clamp(min=1.0)
        timer.mark("sync")
        err_sum = torch.zeros((), device=self.dev)
        st.model.train()
        for k, b in enumerate(batches):
            batch = self.family.to_device(b, self.dev)
            timer.mark("h2d")
            sync = self.acc.no_sync(st.model) if k < cfg.grad_accum - 1 else contextlib.nullcontext()
            with sync:
                err = self.family.loss(st.model, batch, cfg)
                timer.mark("fwd")
                self.acc.backward(err * self.nproc / total)
                timer.mark("bwd")
            err_sum += err.detach()
        if cfg.optim.grad_clip > 0:
            grad_norm = self.acc.clip_grad_norm_(st.model.parameters(), cfg.optim.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in st.model.parameters() if p.grad is not None]))
        st.optimizer.step()
        lr = st.scheduler.get_last_lr()[0]
        st.scheduler.step()
        st.optimizer.zero_grad(set_to_none=True)
        timer.mark("opt")
        st.ema.update(st.raw, st.step)
        timer.mark("ema")
        timer.end()
        st.step += 1
        st.data_pos += cfg.batch_size
        self.loss_dev += (err_sum / total).double()  # this process's share; summed over processes at the log
        self.n_acc += 1
        self.samples_since += cfg.batch_size
        return lr, grad_norm

    # ------------------------------------------------------------------ log, schedule, stop, save
    def _log_row(self, lr: float, grad_norm: torch.Tensor, bar) -> None:
        """One ``loss.csv`` row for the steps since the last (the only host reads of the interval)."""
        st, n = self.state, self.n_acc
        parts = self.times.close_interval(n)
        loss = float((self.acc.reduce(self.loss_dev, "sum") if self.nproc > 1 else self.loss_dev).item()) / n
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} in steps {st.step - n + 1}..{st.step}; "
                                     "lower optim.lr or use mixed_precision=no")
        now = time.monotonic()
        row = {"step": st.step, "loss": loss, "lr": float(lr), "grad_norm": float(grad_norm),
               "samples_per_s": self.samples_since / max(now - self.t_log, 1e-9),
               "elapsed_s": st.elapsed_before + now - self.t_start, **parts,
               "step_ms": (now - self.t_log) * 1000.0 / n}
        if self.dev.type == "cuda":
            row["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.dev) / 2**30
        if self.validator is not None and st.step % self.cfg.val_every == 0:
            row.update(self.validator(st))
            now = time.monotonic()  # the next interval starts after the validation
        st.rows.append(row)
        if self.main:
            self._write_row(row)
        self.acc.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=st.step)  # trackers (TensorBoard)
        if self.main and not self.progress:
            self.log(f"step {st.step} loss {row['loss']:.5f} lr {lr:.3e} grad_norm {float(grad_norm):.3f} "
                     f"samples/s {row['samples_per_s']:.1f} elapsed {row['elapsed_s']:.0f}s | ms/step "
                     + " ".join(f"{k} {row[f'{k}_ms']:.1f}" for k in TIMING_PARTS + ("step",))
                     + "".join(f" | {k} {row[k]:.4g}" for k in EXTRA_FIELDS if k in row))
        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", sps=f"{row['samples_per_s']:.0f}")
        self.loss_dev.zero_()
        self.n_acc, self.samples_since, self.t_log = 0, 0, now

    def _fit_schedule(self, bar) -> None:
        """``fit_schedule``: ``max_steps`` refit to the time left, and the next step's LR with it."""
        left = self.max_minutes * 60 - (time.monotonic() - self.t_start)
        self.fit_next = fit_schedule(self.cfg, self.acc, self.state.step, self.step_times, left,
                                     2 * self.last_save_s + 2 * slack(self.max_minutes), self.fit_next, self.main,
                                     self.log)
        refresh_lr(self.state.scheduler)
        bar.total = self.cfg.max_steps

    def _fit_budget(self, bar) -> None:
        """``budget_minutes``: ``max_steps`` set once, to the steps that fit in the budget's time
        left over all calls at the median rate of this call's steps (the main process decides);
        later calls keep it (:func:`~vidhash.training.state.continue_budget`)."""
        cfg, st = self.cfg, self.state
        per_step = median_step(self.step_times, max(20, cfg.fit_after))
        left = cfg.budget_minutes * 60 - self.elapsed()
        want = torch.tensor(float(st.step + int(left / max(per_step, 1e-6))), device=self.dev)
        if self.nproc > 1:
            want = self.acc.reduce(want * (1.0 if self.main else 0.0), "sum")
        new = max(st.step + 1, int(want.item()))
        if self.main:
            self.log(f"budget_minutes {cfg.budget_minutes:g}: {per_step * 1000:.0f} ms/step, {left:.0f} s left: "
                     f"max_steps {cfg.max_steps} -> {new} (kept by the calls that continue this run)")
        cfg.max_steps, st.fitted_for, self.fit_budget = new, cfg.budget_minutes, False
        refresh_lr(st.scheduler)
        bar.total = cfg.max_steps

    def _last_validation(self) -> None:
        """Every call ends with a validation: into the last log row when it is of this step, else a
        row of its own (step, elapsed_s before the validation, the validation losses) — so a loss
        curve (``vidhash bench train-compare``) holds every call's last point."""
        st = self.state
        if self.validator is None:
            return
        last = st.rows[-1] if st.rows and st.rows[-1]["step"] == st.step else None
        if last is not None and VAL_FIELDS[0] in last:
            self.last_val = {k: last[k] for k in VAL_FIELDS}
            return
        elapsed = self.elapsed()
        self.last_val = self.validator(st)
        if last is not None:
            last.update(self.last_val)
            if self.main:  # the row is in loss.csv already, without these columns
                self.header = csv_fields(st.rows)
                write_csv(self.csv_path, [fmt_row(r) for r in st.rows])
        elif st.step > 0:
            st.rows.append({"step": st.step, "elapsed_s": elapsed, **self.last_val})
            if self.main:
                self._write_row(st.rows[-1])
        if self.main:
            self.log(f"validation at step {st.step}: " + ", ".join(f"{k} {v:.5f}" for k, v in self.last_val.items()))

    def elapsed(self) -> float:
        """Training seconds of the run so far, earlier calls included."""
        return self.state.elapsed_before + time.monotonic() - self.t_start

    def run_extras(self) -> dict:
        """For the summary: the schedule's length, the last validation, this call's peak GPU memory."""
        out = {"max_steps": self.cfg.max_steps, **self.last_val}
        if self.dev.type == "cuda":
            out["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.dev) / 2**30
        return out

    def _write_row(self, row: dict) -> None:
        """Append ``row`` to ``loss.csv``; the whole file again when it brings a new column."""
        header = csv_fields(self.state.rows)
        if header != self.header:
            self.header = header
            write_csv(self.csv_path, [fmt_row(r) for r in self.state.rows])
            return
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.header, extrasaction="ignore").writerow(fmt_row(row))

    def _should_stop(self, stop: StopFlag) -> bool:
        """Stop now? ``stop_at_step`` is the same everywhere; a signal or the time limit is local, so
        processes agree on it (one step late: no step waits for the device). Sets ``reason``."""
        want, why = 0, None
        if stop.set:
            want, why = 1, f"signal {stop.signal}"
        m = self.max_minutes
        if m and m > 0 and out_of_time(self.step_times, time.monotonic() - self.t_start, m, self.last_save_s):
            want, why = 1, f"max_minutes {m}"
        if why is not None and self.reason == "done":
            self.reason = why
        stopping = self.agree(want) > 0
        if stopping and self.reason == "done":
            self.reason = "another process stopped"
        if self.stop_at_step is not None and self.state.step >= self.stop_at_step:
            stopping, self.reason = True, f"stop_at_step {self.stop_at_step}"
        return stopping

    def save(self, reason: str) -> None:
        """A checkpoint of this step and the loss log up to it (every process takes part)."""
        t0 = time.monotonic()
        st = self.state
        elapsed = st.elapsed_before + time.monotonic() - self.t_start
        folder = st.save(self.ckpt_root, self.cfg, self.family, self.acc, elapsed, reason)
        if self.main:
            self.last_ckpt = folder
            write_csv(self.csv_path, [fmt_row(r) for r in st.rows])
        self.acc.wait_for_everyone()
        self.last_save_s = time.monotonic() - t0


class LaggedMax:
    """Max over processes of a per-step int, answered one step late so that no step waits for the
    device: this step's all-reduce is copied to pinned host memory behind an event that is only
    waited for after the next step's work is queued. With one process: the value, at once."""

    def __init__(self, accelerator):
        self.acc, self.dev = accelerator, accelerator.device
        self.n = accelerator.num_processes
        self.pending = None

    def __call__(self, value: int) -> int:
        if self.n == 1:
            return int(value)
        prev = 0
        if self.pending is not None:
            host, ev = self.pending
            if ev is not None:
                ev.synchronize()
            prev = int(host[0])
        t = self.acc.reduce(torch.full((1,), int(value), dtype=torch.int32, device=self.dev), "max")
        if self.dev.type == "cuda":
            host = torch.empty(1, dtype=torch.int32, pin_memory=True)
            host.copy_(t, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record()
        else:
            host, ev = t, None
        self.pending = (host, ev)
        return prev


class StopFlag:
    """SIGTERM / SIGINT set a flag the loop checks after each step (a second Ctrl-C aborts)."""

    def __init__(self):
        self.set, self.signal = False, None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set, self.signal = True, signal.Signals(signum).name

    def __enter__(self):
        try:
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handler)
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def csv_fields(rows: list[dict]) -> tuple[str, ...]:
    """``loss.csv``'s columns: ``CSV_FIELDS``, then those of ``EXTRA_FIELDS`` some row has."""
    return CSV_FIELDS + tuple(k for k in EXTRA_FIELDS if any(k in r for r in rows))


def write_csv(path: Path, rows: list[dict]) -> None:
    """The whole loss log, atomically (temp file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=csv_fields(rows), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def fmt_row(row: dict) -> dict:
    """A log row for the CSV: floats as ``repr`` (exact)."""
    return {k: (repr(float(v)) if isinstance(v, float) else v) for k, v in row.items()}
