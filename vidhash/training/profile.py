"""Profile a window of training steps (``vidhash train ... --profile-steps 300:310``).

Where does a step's host time go, and does the device wait for it? ``torch.profiler`` records
steps ``[start, stop)`` (counted from the run's first step, after compilation has warmed up);
``OUT_DIR/profile.txt`` (``profile-rank<r>.txt`` with several processes) then holds:

- a summary: wall ms per step, device kernel ms per step (the sum of kernel times; on CUDA),
  host ms per step inside operators (self CPU time of every recorded op, waits included), host
  ms per step blocked in synchronisations, and kernel launches per step;
- the operators by self CPU time and, on CUDA, by device time (per step).

A device busy share (kernel ms / wall ms) well under 1 with no synchronisation wait means the
device waits for the host to launch work. Kernel time is summed over streams, so kernels that
overlap (a DDP all-reduce waiting beside the backward pass) can take it over 100%. The profiled
steps, and the step after them, are left out of the run's timing summary.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

SYNC_OPS = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize", "cudaMemcpy",
            "cudaStreamWaitEvent")
LAUNCH_OPS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def parse_steps(text: str) -> tuple[int, int]:
    """'300:310' -> (300, 310): steps 300..309 (the step counter before each step)."""
    try:
        a, b = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise ValueError(f"--profile-steps must be START:STOP (e.g. 300:310), got {text!r}") from None
    if a < 0 or b <= a:
        raise ValueError(f"--profile-steps must be START:STOP with 0 <= START < STOP, got {text!r}")
    return a, b


def _device_us(evt) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total"):
        v = getattr(evt, name, None)
        if v is not None:
            return float(v)
    return 0.0


class StepProfiler:
    """``before_step(step)`` before each step and ``after_step(step)`` after it (``step`` = the
    number of steps done before it); records steps ``[start, stop)`` and writes the report."""

    def __init__(self, steps: tuple[int, int] | None, out_file: str | Path, device: torch.device, log=print):
        self.start, self.stop = steps if steps else (None, None)
        self.out_file, self.device, self.log = Path(out_file), device, log
        self.prof = None
        self.t0 = self.first = None
        self.summary: dict | None = None
        self.window: tuple[int, int] | None = None  # (steps done before the first profiled step, after the last)

    def covers(self, done: int) -> bool:
        """Whether the step after which ``done`` steps were done was profiled or is the one after the
        window (whose time holds the wait for other processes' reports): left out of timing summaries."""
        return self.window is not None and self.window[0] < done <= self.window[1] + 1

    def before_step(self, step: int) -> None:
        if self.start is None or self.prof is not None or self.summary is not None or step < self.start:
            return
        acts = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize(self.device)
        self.prof = torch.profiler.profile(activities=acts)
        self.prof.__enter__()
        self.t0 = time.perf_counter()
        self.first = step

    def after_step(self, step_done: int, stopping: bool = False) -> dict | None:
        """``step_done`` = steps done after this one. Ends the window at ``stop`` (or when the run stops)."""
        if self.prof is None or (step_done < self.stop and not stopping):
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        wall = time.perf_counter() - self.t0
        self.prof.__exit__(None, None, None)
        n = max(1, step_done - self.first)
        self.window = (self.first, step_done)
        self.summary = self._report(self.prof.key_averages(), wall, n)
        self.prof = None
        return self.summary

    def _report(self, avgs, wall_s: float, n: int) -> dict:
        evts = list(avgs)
        per = 1.0 / (1000.0 * n)  # us in all -> ms per step
        cpu_total = sum(e.self_cpu_time_total for e in evts) * per
        sync = sum(e.self_cpu_time_total for e in evts if e.key in SYNC_OPS) * per
        launches = sum(e.count for e in evts if e.key in LAUNCH_OPS) / n
        device = sum(_device_us(e) for e in evts if e.device_type == torch.autograd.DeviceType.CUDA) * per \
            if self.device.type == "cuda" else 0.0
        wall_ms = wall_s * 1000.0 / n
        summary = {"steps": n, "wall_ms": wall_ms, "device_kernel_ms": device, "host_op_ms": cpu_total,
                   "host_sync_ms": sync, "launches": launches,
                   "device_busy": device / wall_ms if wall_ms > 0 and device else None}
        lines = [f"profiled steps {self.first}..{self.first + n - 1} ({n}) on {self.device}",
                 f"wall {wall_ms:.1f} ms/step; device kernels {device:.1f} ms/step (summed over streams)"
                 + (f" (busy {device / wall_ms:.0%})" if device else "")
                 + f"; host inside ops {cpu_total:.1f} ms/step, of which blocked in syncs {sync:.1f}; "
                   f"{launches:.0f} kernel launches/step", ""]
        lines.append("by self CPU time (per step):")
        lines.append(f"{'op':60} {'calls':>7} {'self CPU ms':>12} {'device ms':>10}")
        for e in sorted(evts, key=lambda e: -e.self_cpu_time_total)[:30]:
            lines.append(f"{e.key[:60]:60} {e.count / n:7.1f} {e.self_cpu_time_total * per:12.3f} "
                         f"{_device_us(e) * per:10.3f}")
        if device:
            lines += ["", "by device time (per step):", f"{'kernel':60} {'calls':>7} {'device ms':>10}"]
            kern = [e for e in evts if e.device_type == torch.autograd.DeviceType.CUDA]
            for e in sorted(kern, key=lambda e: -_device_us(e))[:25]:
                lines.append(f"{e.key[:60]:60} {e.count / n:7.1f} {_device_us(e) * per:10.3f}")
        self.out_file.parent.mkdir(parents=True, exist_ok=True)
        self.out_file.write_text("\n".join(lines) + "\n")
        self.log(lines[1] + f" (profile: {self.out_file})")
        return summary
