"""Where a training step's time goes: the ``*_ms`` columns of ``loss.csv`` and the run's summary.

    python -c "from vidhash.training.timing import TIMING_FIELDS; print(TIMING_FIELDS)"

Step-time breakdown (ms per step, mean over the log interval, the largest over processes):
  data: host time blocked waiting for the next batch(es);
  sync: the step-start all-reduce of the loss normaliser (with 2+ processes: waiting for the
        slowest process to start the step, e.g. one still waiting for data);  h2d: batch copies;
  fwd / bwd: forward, backward (bwd includes waiting for a DDP all-reduce that did not overlap);
  opt: gradient clipping + optimizer step + schedule + zero_grad;  ema: EMA update;
  idle: device idle between steps (waiting for the host: data, launches; CUDA only, 0 on CPU);
  log: host time in logging (the previous log row, spread over the interval's steps);
  step: wall time per step (= batch_size / samples_per_s).
On CUDA h2d..ema are CUDA-event times read once per log interval (no per-step sync); the host
runs ahead of the device, so data and log overlap device work there and sync+h2d+...+ema+idle
≈ step. On CPU every part is wall time and the parts sum to at most step.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

TIMING_PARTS = ("data", "sync", "h2d", "fwd", "bwd", "opt", "ema", "idle", "log")
TIMING_FIELDS = tuple(f"{p}_ms" for p in TIMING_PARTS) + ("step_ms",)
DEVICE_PARTS = ("sync", "h2d", "fwd", "bwd", "opt", "ema")


class StepTimer:
    """Per-step device-part times without a per-step sync: CUDA events on CUDA (read in
    ``collect``, which waits for the last one), wall time (``perf_counter``) elsewhere.

    Each step: ``begin()``, then ``mark(part)`` after each part (a part may repeat: summed), then
    ``end()``. ``collect()`` returns one dict ``{part: ms, "idle": ms}`` per finished step."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._pool: list = []
        self._steps: list[list] = []  # per step: [(part or None, stamp), ...]
        self._cur: list | None = None
        self._last_end = None  # the previous step's last stamp (idle = this begin - that)

    def _stamp(self):
        if not self.cuda:
            return time.perf_counter()
        ev = self._pool.pop() if self._pool else torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def begin(self) -> None:
        self._cur = [(None, self._stamp())]

    def mark(self, part: str) -> None:
        self._cur.append((part, self._stamp()))

    def end(self) -> None:
        self._steps.append(self._cur)
        self._cur = None

    def _ms(self, a, b) -> float:
        return max(0.0, (b - a) * 1000.0) if not self.cuda else max(0.0, a.elapsed_time(b))

    def collect(self) -> list[dict[str, float]]:
        if not self._steps:
            return []
        if self.cuda:
            self._steps[-1][-1][1].synchronize()
        out = []
        for marks in self._steps:
            d = {p: 0.0 for p in DEVICE_PARTS}
            d["idle"] = self._ms(self._last_end, marks[0][1]) if (self.cuda and self._last_end is not None) else 0.0
            for (_, a), (part, b) in zip(marks, marks[1:]):
                d[part] = d.get(part, 0.0) + self._ms(a, b)
            out.append(d)
            if self.cuda and self._last_end is not None:
                self._pool.append(self._last_end)
            self._last_end = marks[-1][1]
            if self.cuda:
                self._pool.extend(st for _, st in marks[:-1])
        self._steps = []
        return out


class StepTimes:
    """A run's step times: device parts (:class:`StepTimer`, ``self.timer``) joined with the host
    parts kept here — one dict per step from :meth:`host_step` (``data``, ``log``, ``done``: steps
    done after it, and ``step``: its wall time, which the loop fills in last)."""

    def __init__(self, accelerator):
        self.acc = accelerator
        self.timer = StepTimer(accelerator.device)
        self.host: list[dict[str, float]] = []  # per step of this log interval
        self.steps: list[dict[str, float]] = []  # per step of this run: every part
        self.log_ms = 0.0  # host ms of the last log block, spread over the next interval

    def host_step(self, data_s: float, done: int) -> dict[str, float]:
        h = {"data": data_s * 1000.0, "log": 0.0, "done": done}
        self.host.append(h)
        return h

    def close_interval(self, n_steps: int) -> dict[str, float]:
        """At a log row: the last log block's time spread over this interval, then :meth:`flush`."""
        for h in self.host:
            h["log"] = self.log_ms / n_steps
        return self.flush()

    def flush(self) -> dict[str, float]:
        """Join this interval's device parts with the host parts; the interval means, max over processes."""
        dev_parts = self.timer.collect()
        for h, d in zip(self.host, dev_parts):
            h.update(d)  # the same dict: its "step" is filled in after the log
            self.steps.append(h)
        n = max(1, len(self.host))
        means = [sum(t.get(k, 0.0) for t in self.steps[-len(self.host):]) / n if self.host else 0.0 for k in TIMING_PARTS]
        self.host.clear()
        if self.acc.num_processes > 1:
            means = self.acc.reduce(torch.tensor(means, dtype=torch.float64, device=self.acc.device), "max").tolist()
        return dict(zip(TIMING_FIELDS, means))

    def summary(self, batch_size: int, left_out) -> dict:
        """:func:`timing_summary` of the steps not ``left_out(done)`` (profiled ones run slower); with
        several processes each part is the largest over them, ``fastest_process`` the smallest."""
        timing = timing_summary([t for t in self.steps if not left_out(t.get("done", -1))], batch_size)
        if self.acc.num_processes > 1 and timing:
            acc, dev = self.acc, self.acc.device
            keys = sorted(k for k in timing if k.endswith("_ms"))
            mine = torch.tensor([timing[k] for k in keys], dtype=torch.float64, device=dev)
            mn = (-acc.reduce(-mine, "max")).tolist()  # accelerate's reduce has no "min"
            mx = acc.reduce(mine.clone(), "max").tolist()
            timing.update(zip(keys, mx))
            timing["fastest_process"] = dict(zip(keys, mn))  # rank skew: a part slower on one process only
            # wall-time throughput: the slowest process's, the same number on every process
            timing["samples_per_s"] = float(-acc.reduce(
                torch.tensor([-timing["samples_per_s"]], dtype=torch.float64, device=dev), "max").item())
            timing["samples_per_s_median"] = batch_size / max(timing["step_ms"] / 1000.0, 1e-9)
        return timing


def timing_summary(per_step: list[dict[str, float]], batch_size: int, skip: int = 5) -> dict:
    """Medians (ms) of each part over the steps after the first ``skip`` (compilation, warm-up);
    ``log`` is a mean (it happens once per interval). ``samples_per_s`` = batch / median step."""
    warm = per_step[skip:] if len(per_step) > skip else per_step[min(1, len(per_step) - 1):]
    if not warm:
        return {}
    out: dict[str, Any] = {"steps": len(warm)}
    for key in TIMING_PARTS + ("step",):
        vals = sorted(s.get(key, 0.0) for s in warm)
        out[f"{key}_ms"] = float(np.mean(vals)) if key == "log" else float(vals[len(vals) // 2])
    total_s = sum(s.get("step", 0.0) for s in warm) / 1000.0
    out["samples_per_s"] = batch_size * len(warm) / max(total_s, 1e-9)
    out["samples_per_s_median"] = batch_size / max(out["step_ms"] / 1000.0, 1e-9)
    return out


def format_timing(t: dict, nproc: int) -> str:
    """The summary's log line (and, with several processes, a second line: the fastest process)."""
    if not t:
        return "timing: no steps"
    parts = " | ".join(f"{k} {t[f'{k}_ms']:.1f}" for k in TIMING_PARTS if k != "log")
    text = (f"timing ({nproc} process(es), median ms/step over {t['steps']} steps, largest over processes): "
            f"{parts} | log {t['log_ms']:.2f} (mean) | step {t['step_ms']:.1f}; "
            f"{t['samples_per_s']:.1f} samples/s ({t['samples_per_s_median']:.1f} at the median step)")
    if "fastest_process" in t:
        fast = t["fastest_process"]
        text += "\nfastest process (median ms/step): " + " | ".join(
            f"{k[:-3]} {fast[k]:.1f}" for k in ("data_ms", "h2d_ms", "fwd_ms", "bwd_ms", "step_ms"))
    return text
