"""The training loop behind ``vidhash train`` (see ``vidhash.training`` for the recipe).

Objective (rectified flow, the convention of ``FlowMatchEulerDiscreteScheduler`` as the pipeline
uses it): ``x_σ = (1 − σ)·x0 + σ·noise``, the model predicts the velocity ``noise − x0`` from
``x_σ`` at timestep ``σ·1000``; a scheduler step is ``x ← x + (σ_next − σ)·v``. Noise levels are
per frame but shared by each chunk of ``noise.chunk_frames`` frames (one timestep per chunk, as
at generation); a share of chunks stays clean (σ = 0, timestep 0, no loss) and acts as context.
Temporal attention is chunk-causal (``causal_frames = chunk_frames``): a chunk sees itself and
earlier chunks only, as at generation, so later noisy chunks learn to copy what clean earlier
chunks showed — in particular the places a trajectory returns to.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import random
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidhash.config import config_diff, save_config, to_yaml, with_model_defaults

from .affinity import pin_worker, pinned, process_plan
from .checkpoint import checkpoint_size, find_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, fused_mode, model_fingerprint, model_supports_selection, selection_arg
from .data import IndexBatches, TrainSamples, model_frames, revisit_share, sample_noise
from .ema import EMA
from .profile import StepProfiler

# Step-time breakdown (ms per step, mean over the log interval, the largest over processes):
#   data: host time blocked waiting for the next batch(es);
#   sync: the step-start all-reduce of the loss normaliser (with 2+ processes: waiting for the
#         slowest process to start the step, e.g. one still waiting for data);  h2d: batch copies;
#   fwd / bwd: forward, backward (bwd includes waiting for a DDP all-reduce that did not overlap);
#   opt: gradient clipping + optimizer step + schedule + zero_grad;  ema: EMA update;
#   idle: device idle between steps (waiting for the host: data, launches; CUDA only, 0 on CPU);
#   log: host time in logging (the previous log row, spread over the interval's steps);
#   step: wall time per step (= batch_size / samples_per_s).
# On CUDA h2d..ema are CUDA-event times read once per log interval (no per-step sync); the host
# runs ahead of the device, so data and log overlap device work there and sync+h2d+...+ema+idle
# ≈ step. On CPU every part is wall time and the parts sum to at most step.
TIMING_PARTS = ("data", "sync", "h2d", "fwd", "bwd", "opt", "ema", "idle", "log")
TIMING_FIELDS = tuple(f"{p}_ms" for p in TIMING_PARTS) + ("step_ms",)
CSV_FIELDS = ("step", "loss", "lr", "grad_norm", "samples_per_s", "elapsed_s") + TIMING_FIELDS
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


class _LaggedMax:
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


def use_fused_adamw(setting, device: torch.device) -> bool:
    """``optim.fused``: "auto" = on CUDA (host time: one kernel for every parameter); "on"/"off"."""
    mode = fused_mode(setting)
    return device.type == "cuda" if mode == "auto" else mode == "on"


def ddp_kwargs_handlers(cfg: TrainConfig) -> list:
    """accelerate kwargs handlers for the ``ddp_*`` keys (used only in multi-process runs)."""
    from accelerate.utils import DistributedDataParallelKwargs

    cap = cfg.ddp_bucket_cap_mb
    return [DistributedDataParallelKwargs(
        bucket_cap_mb=int(cap) if float(cap).is_integer() else cap, static_graph=bool(cfg.ddp_static_graph),
        gradient_as_bucket_view=bool(cfg.ddp_gradient_as_bucket_view))]


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
    if not t:
        return "timing: no steps"
    parts = " | ".join(f"{k} {t[f'{k}_ms']:.1f}" for k in TIMING_PARTS if k != "log")
    return (f"timing ({nproc} process(es), median ms/step over {t['steps']} steps, largest over processes): "
            f"{parts} | log {t['log_ms']:.2f} (mean) | step {t['step_ms']:.1f}; "
            f"{t['samples_per_s']:.1f} samples/s ({t['samples_per_s_median']:.1f} at the median step)")


def _cpus(cores) -> str:
    return ",".join(str(c) for c in sorted(cores))


class _StopFlag:
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


def lr_lambda(cfg: TrainConfig):
    o = cfg.optim

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        span = max(1, cfg.max_steps - o.warmup_steps)
        progress = min(1.0, (step - o.warmup_steps) / span)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build_model(cfg: TrainConfig):
    from vidhash.models.transformer_vidhash import VidHashTransformer3DModel

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(cfg.seed)
        model = VidHashTransformer3DModel(**asdict(cfg.model))
    finally:
        torch.random.set_rng_state(state)
    return model


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _rng_state() -> dict:
    return {
        "torch": torch.random.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(s: dict) -> None:
    torch.random.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def _optim_tensors(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    flat = {f"{i}.{k}": v for i, st in opt_state["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    rest = {"param_groups": opt_state["param_groups"],
            "scalars": {i: {k: v for k, v in st.items() if not torch.is_tensor(v)} for i, st in opt_state["state"].items()}}
    return flat, rest


def _optim_state(flat: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(v) for i, v in rest["scalars"].items()}
    for key, v in flat.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    return {"state": state, "param_groups": rest["param_groups"]}


def write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _fmt_row(row: dict) -> dict:
    return {k: (repr(float(v)) if isinstance(v, float) else v) for k, v in row.items()}


def export_pipeline(model_cfg_model, ema: EMA, out: str | os.PathLike, dtype: str = "auto",
                    max_mb: float = 20.0) -> tuple[Path, str, float]:
    """Save the EMA weights as a ``VidHashPipeline`` folder (atomic: temp folder, then rename).
    ``auto``: fp32 if it fits ``max_mb`` else fp16. Returns (folder, dtype, MB)."""
    import shutil

    from diffusers.schedulers import FlowMatchEulerDiscreteScheduler

    from vidhash.pipelines import VidHashPipeline

    model = model_cfg_model
    ema.copy_to(model)
    nbytes32 = sum(v.numel() * 4 for v in ema.shadow.values())
    if dtype == "auto":
        dtype = "fp32" if nbytes32 / 2**20 + 0.1 <= max_mb else "fp16"
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model = model.to(torch_dtype).cpu().eval()
    pipe = VidHashPipeline(model, FlowMatchEulerDiscreteScheduler())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp))
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    return out, dtype, mb


def train(cfg: TrainConfig, resume: str | None = None, max_minutes: float | None = None,
          stop_at_step: int | None = None, progress: bool = True, export: bool = True,
          log=None, profile_steps: tuple[int, int] | None = None) -> dict:
    """Run (or continue) training; returns a summary dict. ``resume``: None (fresh; refuses to
    overwrite a run that has checkpoints), ``"auto"`` (latest under out_dir if any) or a path.
    ``stop_at_step``: stop (with a checkpoint) once this step is reached, as if interrupted.
    ``profile_steps``: (start, stop) — torch.profiler over those steps, report in out_dir/profile.txt
    (vidhash.training.profile)."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    log = log or (lambda *a, **k: print(*a, **{"flush": True, **k}))

    t_start = time.monotonic()
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True  # dense_attention scores are float32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    max_minutes = cfg.max_minutes if max_minutes is None else max_minutes
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available(),
                              kwargs_handlers=ddp_kwargs_handlers(cfg))
    nproc, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if cfg.compile and nproc > 1 and not cfg.ddp_split_compiled:
        from torch import _dynamo

        _dynamo.config.optimize_ddp = False  # no DDPOptimizer graph splits at bucket bounds
    if cfg.batch_size % (nproc * cfg.grad_accum):
        raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by processes × grad_accum "
                         f"({nproc} × {cfg.grad_accum})")
    select_kw = model_supports_selection() if cfg.temporal_mode == "selected" else None
    out_dir = Path(cfg.out_dir)
    ckpt_root = out_dir / "checkpoints"
    csv_path = out_dir / "loss.csv"
    fp = model_fingerprint(cfg)

    # 1. what to resume from (checked before any work)
    ckpt = None
    if resume == "auto":
        ckpt = find_checkpoint(ckpt_root)
    elif resume:
        if not Path(resume).exists():
            raise FileNotFoundError(f"checkpoint {resume} does not exist")
        ckpt = find_checkpoint(resume)
        if ckpt is None:
            raise ValueError(f"{resume} holds no complete checkpoint")
    elif find_checkpoint(ckpt_root) is not None:
        raise ValueError(f"{ckpt_root} already holds checkpoints: pass --resume auto to continue, or another out_dir")
    tensors = meta = None
    if ckpt is not None:
        tensors, meta = load_checkpoint(ckpt)
        if meta["fingerprint"] != fp:
            raise ValueError(f"checkpoint {ckpt} was written for another model config "
                             f"({config_diff(meta['model'], asdict(cfg.model), 'checkpoint', 'model.')})")

    dataset = TrainSamples(cfg)  # checks a video folder before any work

    # 2. model, EMA, optimizer, schedule
    torch.manual_seed(cfg.seed + rank)
    np.random.seed((cfg.seed + rank) % 2**32)
    random.seed(cfg.seed + rank)
    model = build_model(cfg)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if cfg.compile:
        for block in model.blocks:  # regional: one compiled graph per block, reused by every layer
            block.compile()
    ema = EMA(model, cfg.ema.decay, cfg.ema.warmup)
    o = cfg.optim
    optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  fused=use_fused_adamw(o.fused, accelerator.device) or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    step, data_pos, rows, elapsed_before = 0, 0, [], 0.0
    if meta is None and cfg.init_from:
        _init_from(model, ema, cfg)
        if main:
            log(f"initialised model and EMA from {cfg.init_from} (weights only: a new optimizer and schedule)")
    if meta is not None:
        model.load_state_dict(tensors["model"])
        ema.load_state_dict(tensors["ema"])
        optimizer.load_state_dict(_optim_state(tensors.get("optim", {}), meta["optim"]))
        scheduler.load_state_dict(meta["scheduler"])
        step, data_pos, rows = meta["step"], meta["data_position"], list(meta["rows"])
        elapsed_before = meta.get("elapsed_s", 0.0)
        rng = meta["rng"]
        if len(rng) == nproc:
            _set_rng_state(rng[rank])
        elif main:
            log(f"note: checkpoint from {len(rng)} processes, now {nproc}: global RNGs reseeded "
                "(training randomness is per sample index, so the data stream is unchanged)")
    model.to(accelerator.device)
    ema.shadow = {k: v.to(accelerator.device) for k, v in ema.shadow.items()}
    model, optimizer = accelerator.prepare(model, optimizer)
    if meta is not None and meta.get("scaler") is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(meta["scaler"])
    raw = accelerator.unwrap_model(model)
    n_params = sum(p.numel() for p in raw.parameters())

    # 3. data (indices from the saved data position)
    micro = cfg.batch_size // (nproc * cfg.grad_accum)
    workers = cfg.data.num_workers
    pinned_cpus = None
    if cfg.data.reserve_cores > 0:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", nproc))
        pinned_cpus = process_plan(cfg.data.reserve_cores, accelerator.local_process_index, local_world)
        if pinned_cpus is None and main:
            log(f"data.reserve_cores={cfg.data.reserve_cores}: not pinned (needs Linux and more than "
                f"{cfg.data.reserve_cores} × {local_world} physical cores)")
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=IndexBatches(data_pos, cfg.batch_size, cfg.grad_accum, nproc, rank),
        num_workers=workers, pin_memory=accelerator.device.type == "cuda" and cfg.data.pin_memory,
        persistent_workers=False, prefetch_factor=cfg.data.prefetch_factor if workers else None,
        worker_init_fn=functools.partial(pin_worker, pinned_cpus[1]) if (pinned_cpus and workers) else None,
    )
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
        if rows or not csv_path.exists() or meta is None:
            write_csv(csv_path, [_fmt_row(r) for r in rows])  # the log up to the checkpoint, exactly
        how = f"resumed from {ckpt} at step {step}" if meta else "fresh start"
        log(f"vidhash train: {how}; {n_params / 1e6:.2f}M parameters; {nproc} process(es) on "
            f"{accelerator.device.type}; batch {cfg.batch_size} = {nproc} × {cfg.grad_accum} × {micro}; "
            f"precision {cfg.mixed_precision}; temporal {cfg.temporal_mode}; {workers} data worker(s) per process"
            + (f"; main thread on CPUs {_cpus(pinned_cpus[0])}, workers on {len(pinned_cpus[1])} CPUs" if pinned_cpus else ""))
        if nproc > 1:
            log(f"ddp: bucket_cap_mb {cfg.ddp_bucket_cap_mb}, static_graph {cfg.ddp_static_graph}, "
                f"gradient_as_bucket_view {cfg.ddp_gradient_as_bucket_view}, split_compiled {cfg.ddp_split_compiled}")
        if cfg.data.source == "world":
            share = revisit_share(cfg, 128)
            log(f"data: worlds {cfg.data.world_seed_start}..{cfg.data.world_seed_start + cfg.data.num_worlds - 1} "
                f"(seeds >= 1000000 held out), {cfg.data.trajectory} trajectories; {share:.0%} of frames revisit "
                f"a place seen more than {cfg.noise.window_frames} frames earlier")

    # 4. loop. No step waits for the device: the loss is summed on the device and read once per
    # log interval, the step's parts are timed with CUDA events read then too, batch copies are
    # asynchronous, and processes agree on stopping one step late (_LaggedMax).
    chunk = cfg.noise.chunk_frames
    dev = accelerator.device
    stop = _StopFlag()
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (progress and main), desc="train", dynamic_ncols=True)
    it = iter(loader)
    loss_dev = torch.zeros((), dtype=torch.float64, device=dev)
    n_acc, samples_since, t_log = 0, 0, time.monotonic()
    step_times: list[float] = []
    last_save_s = 0.0
    reason = "done"
    last_ckpt = ckpt
    run_start = step
    fit_next = 50 if cfg.fit_schedule and max_minutes and max_minutes > 0 else None
    timer = StepTimer(dev)
    agree = _LaggedMax(accelerator)
    host: list[dict[str, float]] = []  # per step of this interval: data, log, step (ms, host)
    timings: list[dict[str, float]] = []  # per step of this run: every part
    log_pending = 0.0  # host ms of the last log block, spread over the next interval

    def save(reason_now: str):
        nonlocal last_save_s, last_ckpt
        t0 = time.monotonic()
        rng_all = gather_object([_rng_state()]) if nproc > 1 else [_rng_state()]
        if main:
            opt_flat, opt_rest = _optim_tensors(optimizer.state_dict())
            if cfg.checkpoint.moments_dtype == "bf16":  # smaller, but resume is then not bitwise exact
                opt_flat = {k: (v.to(torch.bfloat16) if v.ndim > 0 else v) for k, v in opt_flat.items()}
            meta_out = {
                "fingerprint": fp, "model": asdict(cfg.model), "config": to_yaml(cfg),
                "data_position": data_pos, "rows": rows, "optim": opt_rest,
                "scheduler": scheduler.state_dict(), "rng": rng_all, "num_processes": nproc,
                "elapsed_s": elapsed_before + time.monotonic() - t_start, "reason": reason_now,
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            }
            state = {k: v for k, v in raw.state_dict().items()}
            folder = save_checkpoint(ckpt_root, step, {"model": state, "ema": ema.state_dict(), "optim": opt_flat},
                                     meta_out, cfg.checkpoint.shard_mb, cfg.checkpoint.keep)
            last_ckpt = folder
            write_csv(csv_path, [_fmt_row(r) for r in rows])
        accelerator.wait_for_everyone()
        last_save_s = time.monotonic() - t0

    def flush_timing() -> dict[str, float]:
        """Join this interval's device parts with the host parts; the interval means, max over processes."""
        dev_parts = timer.collect()
        for h, d in zip(host, dev_parts):
            h.update(d)  # the same dict: its "step" is filled in after the log
            timings.append(h)
        n = max(1, len(host))
        means = [sum(t.get(k, 0.0) for t in timings[-len(host):]) / n if host else 0.0 for k in TIMING_PARTS]
        host.clear()
        if nproc > 1:
            means = accelerator.reduce(torch.tensor(means, dtype=torch.float64, device=dev), "max").tolist()
        return dict(zip(TIMING_FIELDS, means))

    profiler = StepProfiler(profile_steps, out_dir / ("profile.txt" if nproc == 1 else f"profile-rank{rank}.txt"),
                            dev, log if main else (lambda *a, **k: None))
    with stop, pinned(pinned_cpus):
        while step < cfg.max_steps:
            profiler.before_step(step)
            t0 = time.perf_counter()
            t0m = time.monotonic()
            batches = [next(it) for _ in range(cfg.grad_accum)]
            t_data = time.perf_counter() - t0
            timer.begin()
            sigs = [b["sigmas"].to(dev, non_blocking=True) for b in batches]
            count = sum((sg > 0).sum() for sg in sigs).float() * float(np.prod(batches[0]["frames"].shape[2:]))
            total = accelerator.reduce(count, "sum").clamp(min=1.0)
            timer.mark("sync")
            err_sum = torch.zeros((), device=dev)
            model.train()
            for k, b in enumerate(batches):
                x0 = model_frames(b["frames"].to(dev, non_blocking=True))  # uint8 world clips scaled on the device
                noise = sample_noise(b["noise_seed"], b["frames"].shape[1:], dev)  # drawn on the device
                actions = b["actions"].to(dev, non_blocking=True)
                poses = b["poses"].to(dev, non_blocking=True)
                sig = sigs[k]
                timer.mark("h2d")
                s = sig[:, :, None, None, None]
                x_t = (1 - s) * x0 + s * noise
                target = raw.velocity_target(x_t, x0, noise, s)  # noise − x0 (or its prediction="sample" form)
                kwargs = {select_kw: selection_arg(cfg)} if select_kw else {}
                sync = accelerator.no_sync(model) if k < cfg.grad_accum - 1 else contextlib.nullcontext()
                with sync:
                    pred = model(x_t, sig * 1000.0, actions, poses, causal_frames=chunk, **kwargs).sample
                    err = ((pred.float() - target) ** 2 * (s > 0)).sum()
                    timer.mark("fwd")
                    accelerator.backward(err * nproc / total)
                    timer.mark("bwd")
                err_sum += err.detach()
            if cfg.optim.grad_clip > 0:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            else:
                grad_norm = torch.linalg.vector_norm(
                    torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
            optimizer.step()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            timer.mark("opt")
            ema.update(raw, step)
            timer.mark("ema")
            timer.end()
            step += 1
            data_pos += cfg.batch_size
            loss_dev += (err_sum / total).double()  # this process's share; summed over processes at the log
            n_acc += 1
            samples_since += cfg.batch_size
            step_times.append(time.monotonic() - t0m)
            t_log0 = time.perf_counter()
            h_cur = {"data": t_data * 1000.0, "log": 0.0, "done": step}
            host.append(h_cur)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                for h in host:
                    h["log"] = log_pending / n_acc
                parts = flush_timing()
                loss = float((accelerator.reduce(loss_dev, "sum") if nproc > 1 else loss_dev).item()) / n_acc
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss} in steps {step - n_acc + 1}..{step}; "
                                             "lower optim.lr or use mixed_precision=no")
                now = time.monotonic()
                row = {"step": step, "loss": loss, "lr": float(lr), "grad_norm": float(grad_norm),
                       "samples_per_s": samples_since / max(now - t_log, 1e-9),
                       "elapsed_s": elapsed_before + now - t_start, **parts,
                       "step_ms": (now - t_log) * 1000.0 / n_acc}
                rows.append(row)
                if main:
                    with open(csv_path, "a", newline="") as f:
                        csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow(_fmt_row(row))
                if main and not progress:
                    log(f"step {step} loss {row['loss']:.5f} lr {lr:.3e} grad_norm {float(grad_norm):.3f} "
                        f"samples/s {row['samples_per_s']:.1f} elapsed {row['elapsed_s']:.0f}s | ms/step "
                        + " ".join(f"{k} {row[f'{k}_ms']:.1f}" for k in TIMING_PARTS + ("step",)))
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", sps=f"{row['samples_per_s']:.0f}")
                loss_dev.zero_()
                n_acc, samples_since, t_log = 0, 0, now
                log_pending = (time.perf_counter() - t_log0) * 1000.0
            bar.update(1)
            if fit_next is not None and step - run_start >= fit_next:
                fit_next = _fit_schedule(cfg, accelerator, step, step_times, max_minutes * 60 - (time.monotonic() - t_start),
                                         2 * last_save_s + 2 * _slack(max_minutes), fit_next, main, log)
                _refresh_lr(scheduler)
                bar.total = cfg.max_steps
            # stop conditions: stop_at_step is the same everywhere; a signal or the time limit is
            # local, so processes agree on it (one step late: no step waits for the device)
            want, why = 0, None
            if stop.set:
                want, why = 1, f"signal {stop.signal}"
            if max_minutes and max_minutes > 0 and out_of_time(step_times, time.monotonic() - t_start, max_minutes, last_save_s):
                want, why = 1, f"max_minutes {max_minutes}"
            if why is not None and reason == "done":
                reason = why
            stopping = agree(want) > 0
            if stopping and reason == "done":
                reason = "another process stopped"
            if stop_at_step is not None and step >= stop_at_step:
                stopping, reason = True, f"stop_at_step {stop_at_step}"
            # the step's wall time: everything since its start (logging and stop checks included)
            h_cur["step"] = (time.perf_counter() - t0) * 1000.0
            profiler.after_step(step, stopping or step >= cfg.max_steps)
            if stopping:
                break
            if step % cfg.checkpoint.every == 0 and step < cfg.max_steps:
                save("every")
        bar.close()
        if host:  # steps since the last log row
            flush_timing()
        save(reason)
    it = None  # stops the loader's workers (they could publish worlds again)
    if accelerator.is_local_main_process:
        dataset.release_worlds(data_pos)  # the shared world files of this run's last blocks
    # profiled steps run slower, and the step after the window waits for the other processes' reports
    timing = timing_summary([t for t in timings if not profiler.covers(t.get("done", -1))], cfg.batch_size)
    if nproc > 1 and timing:
        keys = sorted(k for k in timing if k.endswith("_ms"))
        mine = torch.tensor([timing[k] for k in keys], dtype=torch.float64, device=dev)
        mn = (-accelerator.reduce(-mine, "max")).tolist()  # accelerate's reduce has no "min"
        mx = accelerator.reduce(mine.clone(), "max").tolist()
        timing.update(zip(keys, mx))
        timing["fastest_process"] = dict(zip(keys, mn))  # rank skew: a part slower on one process only
        # wall-time throughput: the slowest process's, the same number on every process
        timing["samples_per_s"] = float(-accelerator.reduce(
            torch.tensor([-timing["samples_per_s"]], dtype=torch.float64, device=dev), "max").item())
        timing["samples_per_s_median"] = cfg.batch_size / max(timing["step_ms"] / 1000.0, 1e-9)
    if main:
        log(format_timing(timing, nproc))
        if "fastest_process" in timing:
            fast = timing["fastest_process"]
            log("fastest process (median ms/step): " + " | ".join(f"{k[:-3]} {fast[k]:.1f}" for k in
                                                                 ("data_ms", "h2d_ms", "fwd_ms", "bwd_ms", "step_ms")))
    summary = {"step": step, "data_position": data_pos, "reason": reason, "checkpoint": str(last_ckpt),
               "params": n_params, "loss_csv": str(csv_path), "timing": timing}
    if profiler.summary is not None:
        summary["profile"] = profiler.summary
    if main:
        total_b, largest = checkpoint_size(last_ckpt)
        summary.update(checkpoint_mb=total_b / 2**20, largest_file_mb=largest / 2**20)
        log(f"checkpoint {last_ckpt}: {total_b / 2**20:.1f} MB in all (model + EMA + optimizer), largest file "
            f"{largest / 2**20:.1f} MB" + (" — over 16 MB in all; files are sharded under checkpoint.shard_mb"
                                           if total_b > 16 * 2**20 else ""))
        if export:
            folder, dtype, mb = export_pipeline(build_model(cfg), ema, cfg.export_dir or out_dir / "export",
                                                cfg.export_dtype, cfg.export_max_mb)
            summary.update(export=str(folder), export_dtype=dtype, export_mb=mb)
            log(f"exported EMA pipeline to {folder} ({dtype}, {mb:.1f} MB)")
        log(f"stopped at step {step}/{cfg.max_steps} ({reason}); data position {data_pos}; "
            f"{(time.monotonic() - t_start) / 60:.1f} min this run")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def out_of_time(step_times: list[float], used_s: float, max_minutes: float, save_s: float) -> bool:
    """Stop now under ``--max-minutes``? True when three more steps (at the median of the recent
    ones), two saves and a slack would pass the limit. The run's first step is left out of the
    median: it holds compilation (a minute with ``compile=true``), which once made a 2.6-minute
    run stop after one step."""
    return used_s + 3 * _median_step(step_times, 20) + 2 * save_s + _slack(max_minutes) > max_minutes * 60


def _median_step(step_times: list[float], last: int) -> float:
    """Median of the last ``last`` step times, the run's first (compiling) step left out; 0 if none."""
    warm = step_times[1:][-last:] or [0.0]
    return sorted(warm)[len(warm) // 2]


def _slack(max_minutes: float) -> float:
    """Seconds kept free before a time limit for the final checkpoint and export."""
    return min(10.0, 3.0 * max_minutes)


def _refresh_lr(scheduler) -> None:
    """The learning rate of the next step again from the schedule: ``LambdaLR`` computed it at
    its last ``step()``, before ``fit_schedule`` changed ``max_steps`` (else one step would use the
    old schedule's rate — the last one, when the refit leaves a single step)."""
    lrs = [base * lam(scheduler.last_epoch) for base, lam in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs


def _fit_schedule(cfg: TrainConfig, accelerator, step: int, step_times: list[float], seconds_left: float,
                  margin_s: float, fit_at: int, main: bool, log) -> int | None:
    """``fit_schedule``: set ``cfg.max_steps`` to the steps that fit in ``seconds_left`` at the median
    rate of the recent steps (less ``margin_s`` for the final checkpoint and export), the same on
    every process. Returns the step count of this run at which to fit again (None: no more)."""
    per_step = _median_step(step_times, max(20, fit_at // 2))
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


def _init_from(model, ema, cfg) -> None:
    """Start from a saved pipeline's transformer weights (a warm start, not an exact resume)."""
    from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import load_file

    folder = Path(cfg.init_from)
    weights = folder / "transformer" / SAFETENSORS_WEIGHTS_NAME
    conf = folder / "transformer" / "config.json"
    if not weights.is_file() or not conf.is_file():
        raise ValueError(f"init_from={cfg.init_from}: not a saved pipeline folder (no transformer/{SAFETENSORS_WEIGHTS_NAME})")
    saved = with_model_defaults(json.loads(conf.read_text()))  # no prediction key: a velocity model
    want = dict(model.config)
    # learned memory signatures are fitted after training (vidhash calibrate): not compared, not loaded
    keep = [k for k in want if not k.startswith(("_", "memory_hash")) and k in saved]
    diff = config_diff({k: saved[k] for k in keep}, {k: want[k] for k in keep}, "there", "model.")
    if diff:
        raise ValueError(f"init_from={cfg.init_from} was saved for another model config: {diff}")
    own = set(model.state_dict())
    state = {k: v for k, v in load_file(str(weights)).items() if "memory_hash" not in k or k in own}
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if unexpected or [k for k in missing if "memory_hash" not in k]:
        raise ValueError(f"init_from={cfg.init_from}: weights do not match the model "
                         f"(missing {list(missing)[:4]}, unexpected {list(unexpected)[:4]})")
    ema.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items() if k in ema.shadow}
