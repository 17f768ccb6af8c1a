"""``vidhash train``: :func:`train` runs (or continues) one training run, in named steps.

    from vidhash.training import load_train_config, train
    train(load_train_config("cpu_test", ["out_dir=/tmp/run", "max_steps=8"]))

1. accelerator: processes, precision, DDP options (:func:`setup_accelerator`);
2. what to resume from, checked before any work (:func:`find_resume`), and the family's samples;
3. model, EMA, optimizer, schedule — fresh, warm-started or restored (:mod:`.state`);
4. the data loader from the saved data position (:func:`.data.make_loader`);
5. ``out_dir``: config.yaml, loss.csv up to the checkpoint, the run's header (:func:`start_log`);
6. the step loop, a checkpoint when it stops (:mod:`.loop`);
7. the summary and the EMA export (:func:`finish`, :func:`export_ema`; with ``export_train_state``
   the run's position beside it, which ``init_from`` continues: :mod:`.state`).

The model, its samples, its loss and its export come from the family ``cfg.model_family`` names
(:mod:`.families`): the trainer names no model class and no batch format. The objective (rectified
flow, per-chunk noise levels, chunk-causal attention) is described in :mod:`.objective`; the time budget and LR schedule in :mod:`.schedule`; the
``loss.csv`` timing columns in :mod:`.timing`.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from vidhash.config import config_diff, save_config

from .affinity import pinned
from .checkpoint import checkpoint_size, find_checkpoint, load_checkpoint
from .config import TrainConfig
from .data import make_loader
from .ema import EMA
from .families import ModelFamily, build_model, get_family
from .loop import StopFlag, TrainLoop, fmt_row, write_csv
from .state import TRAIN_STATE, TrainState, build_state
from .timing import format_timing


def train(cfg: TrainConfig, resume: str | None = None, max_minutes: float | None = None,
          stop_at_step: int | None = None, progress: bool = True, export: bool = True,
          log=None, profile_steps: tuple[int, int] | None = None, keep_budget: bool = False) -> dict:
    """Run (or continue) training; returns a summary dict. ``resume``: None (fresh; refuses to
    overwrite a run that has checkpoints), ``"auto"`` (latest under out_dir if any) or a path.
    ``stop_at_step``: stop (with a checkpoint) once this step is reached, as if interrupted.
    ``profile_steps``: (start, stop) — torch.profiler over those steps, report in out_dir/profile.txt
    (vidhash.training.profile). ``keep_budget``: a continued run keeps the schedule length its
    earlier calls fitted to ``budget_minutes`` even where ``cfg.budget_minutes`` differs (the CLI
    passes it when the call does not name ``budget_minutes``); without it a different budget is
    fitted anew."""
    log = log or (lambda *a, **k: print(*a, **{"flush": True, **k}))
    t_start = time.monotonic()
    max_minutes = cfg.max_minutes if max_minutes is None else max_minutes
    family = get_family(cfg.model_family)
    out_dir = Path(cfg.out_dir)

    # 1. accelerator
    accelerator = setup_accelerator(cfg)
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)  # the log's gpu_mem_gb: this call's peak
    # 2. what to resume from (checked before any work); the samples (checks a video folder)
    ckpt, saved = find_resume(cfg, family, resume, out_dir / "checkpoints")
    dataset = family.samples(cfg)
    # 3. model, EMA, optimizer, schedule
    state = build_state(cfg, family, accelerator, saved, log, keep_budget)
    # 4. data from the saved data position
    loader, pinned_cpus = make_loader(cfg, dataset, accelerator, state.data_pos, log)
    # 5. out_dir: config, the loss log up to the checkpoint, the header; the trackers (every process calls)
    accelerator.init_trackers(Path(cfg.out_dir).name or "train")
    if accelerator.is_main_process:
        start_log(cfg, accelerator, state, out_dir, ckpt, pinned_cpus, dataset.describe(), log)
    # 6. the step loop, a checkpoint when it stops
    loop = TrainLoop(cfg, family, accelerator, state, out_dir, ckpt=ckpt, t_start=t_start, max_minutes=max_minutes,
                     stop_at_step=stop_at_step, progress=progress, profile_steps=profile_steps, log=log)
    with StopFlag() as stop, pinned(pinned_cpus):
        loop.run(loader, stop)
    if accelerator.is_local_main_process:
        dataset.release(state.data_pos)  # e.g. the shared world files of this run's last blocks
    # 7. summary, export
    summary = finish(cfg, family, accelerator, state, loop, export, log)
    if accelerator.is_main_process:
        log(f"stopped at step {state.step}/{cfg.max_steps} ({loop.reason}); data position {state.data_pos}; "
            f"{(time.monotonic() - t_start) / 60:.1f} min this run")
    accelerator.wait_for_everyone()
    # Drop every reference to the DDP-wrapped model before the process group goes: its reducer keeps
    # the group alive, and a gloo group freed only at interpreter exit can abort the process there
    # (tests/training/test_multiprocess.py saw a rank end in SIGABRT once, after finishing its work).
    del loop, loader, state
    accelerator.free_memory()
    accelerator.end_training()
    return summary


def setup_accelerator(cfg: TrainConfig):
    """accelerate's ``Accelerator`` for this config (CPU when there is no GPU), TF32 matmuls on CUDA;
    ValueError when ``batch_size`` does not split over processes × ``grad_accum``."""
    from accelerate import Accelerator

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True  # dense_attention scores are float32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available(),
                              kwargs_handlers=ddp_kwargs_handlers(cfg), log_with=log_trackers(),
                              project_dir=cfg.out_dir)
    nproc = accelerator.num_processes
    if cfg.compile and nproc > 1 and not cfg.ddp_split_compiled:
        from torch import _dynamo

        _dynamo.config.optimize_ddp = False  # no DDPOptimizer graph splits at bucket bounds
    if cfg.batch_size % (nproc * cfg.grad_accum):
        raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by processes × grad_accum "
                         f"({nproc} × {cfg.grad_accum})")
    return accelerator


def log_trackers() -> list[str] | None:
    """accelerate's trackers for the loss log: ``["tensorboard"]`` when TensorBoard is installed
    (``pip install vidhash[train]``; event files in ``out_dir/<run name>``), else none — ``loss.csv``
    (always written: the log a resumed run continues) is then the only log (None: an empty list
    makes accelerate warn that no tracker is installed)."""
    from accelerate.utils import is_tensorboard_available

    return ["tensorboard"] if is_tensorboard_available() else None


def ddp_kwargs_handlers(cfg: TrainConfig) -> list:
    """accelerate kwargs handlers for the ``ddp_*`` keys (used only in multi-process runs)."""
    from accelerate.utils import DistributedDataParallelKwargs

    cap = cfg.ddp_bucket_cap_mb
    return [DistributedDataParallelKwargs(
        bucket_cap_mb=int(cap) if float(cap).is_integer() else cap, static_graph=bool(cfg.ddp_static_graph),
        gradient_as_bucket_view=bool(cfg.ddp_gradient_as_bucket_view))]


def find_resume(cfg: TrainConfig, family: ModelFamily, resume: str | None,
                ckpt_root: Path) -> tuple[Path | None, tuple[dict, dict] | None]:
    """(checkpoint folder, its (tensors, meta)) to resume from, or (None, None) for a fresh start.
    Errors: a ``resume`` path that does not exist or holds no checkpoint, a fresh start over a
    run that has checkpoints, a checkpoint written for another model config."""
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
    if ckpt is None:
        if cfg.init_from and not Path(cfg.init_from).exists():
            raise FileNotFoundError(f"init_from={cfg.init_from} does not exist")
        return None, None
    tensors, meta = load_checkpoint(ckpt)
    lacking = [k for k in ("fingerprint", "data_position", "rows", "optim", "scheduler", "rng") if k not in meta]
    if lacking:
        raise ValueError(f"checkpoint {ckpt} was not written by vidhash train (its metadata has no {lacking[0]!r}); "
                         "start from an export of that run with init_from= instead")
    if meta["fingerprint"] != family.fingerprint(cfg):
        raise ValueError(f"checkpoint {ckpt} was written for another model config "
                         f"({config_diff(meta['model'], family.model_config(cfg), 'checkpoint', 'model.')})")
    return ckpt, (tensors, meta)


def start_log(cfg: TrainConfig, accelerator, state: TrainState, out_dir: Path, ckpt: Path | None,
              pinned_cpus, data_line: str | None, log) -> None:
    """Main process: ``config.yaml``, ``loss.csv`` as of the checkpoint, the run's header lines."""
    nproc, csv_path = accelerator.num_processes, out_dir / "loss.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    if state.rows or not csv_path.exists() or ckpt is None:
        write_csv(csv_path, [fmt_row(r) for r in state.rows])  # the log up to the checkpoint, exactly
    how = (f"resumed from {ckpt} at step {state.step}" if ckpt else
           f"warm start from {cfg.init_from}" + (f" at step {state.step}" if state.step else "") if cfg.init_from else
           "fresh start")
    micro, workers = cfg.batch_size // (nproc * cfg.grad_accum), cfg.data.num_workers
    log(f"vidhash train: {how}; {state.num_parameters / 1e6:.2f}M parameters; {nproc} process(es) on "
        f"{accelerator.device.type}; batch {cfg.batch_size} = {nproc} × {cfg.grad_accum} × {micro}; "
        f"precision {cfg.mixed_precision}; temporal {cfg.temporal_mode}; {workers} data worker(s) per process"
        + (f"; main thread on CPUs {_cpus(pinned_cpus[0])}, workers on {len(pinned_cpus[1])} CPUs" if pinned_cpus else ""))
    if nproc > 1:
        log(f"ddp: bucket_cap_mb {cfg.ddp_bucket_cap_mb}, static_graph {cfg.ddp_static_graph}, "
            f"gradient_as_bucket_view {cfg.ddp_gradient_as_bucket_view}, split_compiled {cfg.ddp_split_compiled}")
    if data_line:
        log(data_line)


def finish(cfg: TrainConfig, family: ModelFamily, accelerator, state: TrainState, loop: TrainLoop,
           export: bool, log) -> dict:
    """The run's summary (timing over processes, checkpoint size) and, with ``export``, the EMA export."""
    main = accelerator.is_main_process
    timing = loop.times.summary(cfg.batch_size, loop.profiler.covers)
    if main:
        log(format_timing(timing, accelerator.num_processes))
    summary = {"step": state.step, "data_position": state.data_pos, "reason": loop.reason,
               "checkpoint": str(loop.last_ckpt), "params": state.num_parameters,
               "loss_csv": str(Path(cfg.out_dir) / "loss.csv"), "timing": timing, **loop.run_extras()}
    if loop.profiler.summary is not None:
        summary["profile"] = loop.profiler.summary
    if not main:
        return summary
    total_b, largest = checkpoint_size(loop.last_ckpt)
    summary.update(checkpoint_mb=total_b / 2**20, largest_file_mb=largest / 2**20)
    log(f"checkpoint {loop.last_ckpt}: {total_b / 2**20:.1f} MB in all (model + EMA + optimizer), largest file "
        f"{largest / 2**20:.1f} MB" + (" — over 16 MB in all; files are sharded under checkpoint.shard_mb"
                                       if total_b > 16 * 2**20 else ""))
    if export:
        extra = {TRAIN_STATE: state.train_state(cfg, family, loop.elapsed())} if cfg.export_train_state else None
        folder, dtype, mb = export_ema(cfg, family, state.ema, cfg.export_dir or Path(cfg.out_dir) / "export",
                                       cfg.export_dtype, cfg.export_max_mb, extra)
        summary.update(export=str(folder), export_dtype=dtype, export_mb=mb)
        log(f"exported EMA pipeline to {folder} ({dtype}, {mb:.1f} MB)")
    return summary


def export_ema(cfg: TrainConfig, family: ModelFamily, ema: EMA, out: str | os.PathLike, dtype: str = "auto",
               max_mb: float = 20.0, extra: dict[str, object] | None = None) -> tuple[Path, str, float]:
    """Save the EMA weights through ``family.save`` (a ``VidHashPipeline`` folder for vidhash's
    model) in ``family.cast``'s dtype, with ``extra`` JSON files (name → object), atomically: a temp
    folder, then a rename. ``auto``: fp32 if it fits ``max_mb`` else fp16. Returns (folder, dtype, MB)."""
    model = build_model(cfg, family)
    ema.copy_to(model)
    nbytes32 = sum(v.numel() * 4 for v in ema.shadow.values())
    if dtype == "auto":
        dtype = "fp32" if nbytes32 / 2**20 + 0.1 <= max_mb else "fp16"
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model = family.cast(model, torch_dtype).cpu().eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        family.save(model, tmp, cfg)
        for name, obj in (extra or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    return out, dtype, mb


def _cpus(cores) -> str:
    return ",".join(str(c) for c in sorted(cores))
