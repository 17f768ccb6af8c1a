"""The standalone wan-mini training loop, until ``vidhash train`` takes model families.

    python -m vidhash.training.wan_standalone configs/train/wan_mini.yaml --out /tmp/wan --minutes 8 --resume \
        [--init-from FOLDER] [--export-to DIR] [key=value ...]

One process, one device. A call starts from, in this order: the newest checkpoint under
``OUT/checkpoints`` (``--resume``; exact), ``--init-from`` — a checkpoint folder (exact) or a
wan-mini export with ``train_state.json`` (a warm start: model and EMA from the exported EMA
weights, new AdamW moments re-warmed over ``optim.rewarm_steps``, step, data position, schedule
and loss log continued) — or nothing (fresh). It trains until ``--minutes`` are used (keeping
time for the checkpoint and export) or ``max_steps``, saves a checkpoint (model, EMA and AdamW
moments in fp32: bitwise-exact resume), and with ``--export-to DIR`` writes ``DIR/wan-mini`` (the
EMA as a fp16 ``WanMiniPipeline`` folder plus ``train_state.json``) and ``DIR/loss.csv``.

Per step: bf16 autocast (``mixed_precision``), ``grad_accum`` micro-batches, gradient clipping,
AdamW (fused on CUDA), EMA. The learning rate is a pure function of (step, max_steps, rewarm
start): linear warmup, cosine to ``min_lr_ratio``. With ``budget_minutes`` the first run sets
``max_steps`` from its measured step time after ``fit_after`` steps, once (kept in checkpoints).
Every ``val_every`` steps and at the end of every call, the loss of the model and of its EMA on a
fixed batch of held-out worlds (``val_loss``, ``val_loss_ema`` in loss.csv).
Nothing waits for the device inside a log interval: the loss and gradient norm are summed there
and read at the log.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vidhash.config import to_yaml

from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .data import IndexBatches
from .ema import EMA
from .wan_family import WanSamples, WanTrainConfig, build, conditioning, export, load_wan_config, loss, \
    loss_elements, model_kwargs, param_groups, validation_batch

CSV_FIELDS = ("step", "loss", "lr", "grad_norm", "clips_per_s", "elapsed_s", "gpu_mem_gb", "val_loss", "val_loss_ema")
TRAIN_STATE = "train_state.json"


@dataclass
class RunState:
    """Where a run stands (saved in checkpoints and exports)."""

    step: int = 0
    data_position: int = 0
    max_steps: int = 0
    fitted: bool = False  # budget_minutes has set max_steps
    rewarm_from: int = -1  # step of the last warm start (new optimizer moments); -1: none
    elapsed_s: float = 0.0  # training wall time of all runs before this one
    rows: list = field(default_factory=list)


def fingerprint(cfg: WanTrainConfig) -> str:
    """Hash of what the weights depend on: the model's constructor arguments."""
    blob = json.dumps(model_kwargs(cfg), sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tokens_per_clip(cfg: WanTrainConfig) -> int:
    p_t, p_h, p_w = cfg.model.patch_size
    return (cfg.data.num_frames // p_t) * (cfg.data.frame_size // p_h) * (cfg.data.frame_size // p_w)


def lr_factor(cfg: WanTrainConfig, run: RunState, step: int) -> float:
    o = cfg.optim
    f = (step + 1) / o.warmup_steps if step < o.warmup_steps else 1.0
    if step >= o.warmup_steps:
        progress = min(1.0, (step - o.warmup_steps) / max(1, run.max_steps - o.warmup_steps))
        f = o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if run.rewarm_from >= 0 and o.rewarm_steps > 0:
        f *= min(1.0, (step - run.rewarm_from + 1) / o.rewarm_steps)
    return f


def _optim_split(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    flat = {f"{i}.{k}": v for i, st in opt_state["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    return flat, {"param_groups": opt_state["param_groups"]}


def _optim_join(flat: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in flat.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    return {"state": state, "param_groups": rest["param_groups"]}


def write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    os.replace(tmp, path)


def start(cfg: WanTrainConfig, model, ema: EMA, optimizer, ckpt_root: Path, resume: bool,
          init_from: str | None, log) -> RunState:
    """Load what the run starts from into model / EMA / optimizer (module docstring); the run state."""
    ckpt = find_checkpoint(ckpt_root) if resume else None
    if ckpt is None and not resume and find_checkpoint(ckpt_root) is not None:
        raise ValueError(f"{ckpt_root} already holds checkpoints: pass --resume to continue, or another --out")
    if ckpt is None and init_from:
        folder = Path(init_from)
        if not folder.exists():
            raise FileNotFoundError(f"--init-from {init_from} does not exist")
        if (folder / TRAIN_STATE).is_file():
            return warm_start(cfg, model, ema, folder, log)
        ckpt = find_checkpoint(folder)
        if ckpt is None:
            raise ValueError(f"--init-from {init_from}: neither a checkpoint nor a wan-mini export ({TRAIN_STATE})")
    if ckpt is None:
        log("fresh start")
        return RunState(max_steps=cfg.max_steps)
    tensors, meta = load_checkpoint(ckpt)
    if meta.get("fingerprint") != fingerprint(cfg):
        raise ValueError(f"checkpoint {ckpt} was written for another model config")
    model.load_state_dict(tensors["model"])
    ema.load_state_dict(tensors["ema"])
    optimizer.load_state_dict(_optim_join(tensors.get("optim", {}), meta["optim"]))
    log(f"resumed from {ckpt} at step {meta['run']['step']}")
    return RunState(**meta["run"])


def warm_start(cfg: WanTrainConfig, model, ema: EMA, folder: Path, log) -> RunState:
    """Model and EMA from an export's (EMA) weights; its run state, re-warmed from its step."""
    from diffusers import WanTransformer3DModel

    state = json.loads((folder / TRAIN_STATE).read_text())
    if state.get("fingerprint") != fingerprint(cfg):
        raise ValueError(f"--init-from {folder} was exported for another model config")
    saved = WanTransformer3DModel.from_pretrained(str(folder / "transformer"))  # float32 (the saved fp16 upcast)
    model.load_state_dict({k: v.float() for k, v in saved.state_dict().items()})
    ema.load_state_dict(model.state_dict())
    run = RunState(**state["run"])
    run.rewarm_from = run.step
    log(f"warm start from {folder} at step {run.step} (EMA weights, new optimizer moments)")
    return run


def setup(cfg: WanTrainConfig, dev: torch.device, ckpt_root: Path, resume: bool, init_from: str | None, log):
    """Model (on ``dev``), EMA, AdamW and the run state, loaded from what the run starts from."""
    model = build(cfg).to(dev)
    ema = EMA(model, cfg.ema.decay, cfg.ema.warmup)
    o = cfg.optim
    optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  fused=True if (o.fused and dev.type == "cuda") else None)
    run = start(cfg, model, ema, optimizer, ckpt_root, resume, init_from, log)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if cfg.compile:
        model.compile_repeated_blocks()  # regional: one compiled graph per block, names unchanged
    return model, ema, optimizer, run


def train_step(model, optimizer, ema: EMA, batches: list[dict], cond, cfg: WanTrainConfig, run: RunState,
               dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over ``batches`` (the micro-batches); (mean loss, grad norm) on the device."""
    total = sum(loss_elements(b) for b in batches)
    for group in optimizer.param_groups:
        group["lr"] = cfg.optim.lr * lr_factor(cfg, run, run.step)
    model.train()
    err_sum = torch.zeros((), device=dev)
    for b in batches:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
            err, _ = loss(model, b, cond, dev)
        (err / total).backward()
        err_sum += err.detach()
    if cfg.optim.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    else:
        grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.update(model, run.step)
    run.step += 1
    run.data_position += cfg.batch_size
    return err_sum / total, grad_norm.detach()


def save(model, ema: EMA, optimizer, run: RunState, cfg: WanTrainConfig, ckpt_root: Path, elapsed_s: float) -> Path:
    flat, rest = _optim_split(optimizer.state_dict())
    meta = {"fingerprint": fingerprint(cfg), "config": to_yaml(cfg), "optim": rest,
            "run": {**asdict(run), "elapsed_s": elapsed_s}}
    return save_checkpoint(ckpt_root, run.step, {"model": model.state_dict(), "ema": ema.state_dict(), "optim": flat},
                           meta, cfg.shard_mb, cfg.checkpoint_keep)


class Validator:
    """Loss of the model and of its EMA on :func:`validation_batch` (world clips; else nothing)."""

    def __init__(self, cfg: WanTrainConfig, dev: torch.device):
        self.cfg, self.dev = cfg, dev
        self.batch = validation_batch(cfg, cfg.val_clips) if cfg.data.source == "world" and cfg.val_clips else None
        self.ema_model = None

    @torch.no_grad()
    def __call__(self, model, ema: EMA) -> dict[str, float]:
        if self.batch is None:
            return {}
        if self.ema_model is None:
            self.ema_model = build(self.cfg).to(self.dev)
        ema.copy_to(self.ema_model)
        cond, out = conditioning(self.cfg), {}
        for key, m in (("val_loss", model), ("val_loss_ema", self.ema_model)):
            was = m.training
            m.eval()
            with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.cfg.mixed_precision == "bf16"):
                err, n = loss(m, self.batch, cond, self.dev)
            m.train(was)
            out[key] = float(err) / n
        return out


def _median(xs: list[float]) -> float:
    xs = sorted(xs) or [0.0]
    return xs[len(xs) // 2]


def _fit_max_steps(cfg: WanTrainConfig, run: RunState, step_times: list[float], trained_s: float, log) -> None:
    """``budget_minutes``: max_steps from the median step time of this run (its first 5 steps left out)."""
    per_step = _median(step_times[5:] or step_times)
    left = cfg.budget_minutes * 60 - trained_s
    new = max(run.step + 1, run.step + int(left / max(per_step, 1e-9)))
    log(f"budget_minutes {cfg.budget_minutes}: {per_step * 1000:.0f} ms/step, {left:.0f} s left: "
        f"max_steps {run.max_steps} -> {new}")
    run.max_steps, run.fitted = new, True


class Interval:
    """Loss and gradient-norm sums of the steps since the last log row, on the device (read at the row)."""

    def __init__(self):
        self.reset(time.monotonic())

    def reset(self, now: float) -> None:
        self.loss = self.grad_norm = None
        self.n, self.t = 0, now

    def add(self, loss_mean: torch.Tensor, grad_norm: torch.Tensor) -> None:
        first = self.loss is None
        self.loss = loss_mean if first else self.loss + loss_mean
        self.grad_norm = grad_norm if first else self.grad_norm + grad_norm
        self.n += 1


def log_row(interval: Interval, run: RunState, cfg: WanTrainConfig, lr: float, elapsed_s: float,
            validation: dict[str, float], out_dir: Path, log) -> None:
    """One loss.csv row for the interval's steps (and ``validation``), printed and written."""
    now = time.monotonic()
    row = {"step": run.step, "loss": float(interval.loss) / interval.n, "lr": lr,
           "grad_norm": float(interval.grad_norm) / interval.n,
           "clips_per_s": interval.n * cfg.batch_size / max(now - interval.t, 1e-9), "elapsed_s": elapsed_s,
           "gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
           **validation}
    if not math.isfinite(row["loss"]):
        raise FloatingPointError(f"loss is {row['loss']} at step {run.step}; lower optim.lr")
    run.rows.append(row)
    write_csv(out_dir / "loss.csv", run.rows)
    log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    interval.reset(now)


def train_wan(cfg: WanTrainConfig, out_dir: str | os.PathLike, minutes: float = 0.0, resume: bool = False,
              init_from: str | None = None, export_to: str | os.PathLike | None = None,
              stop_at_step: int | None = None, reserve_s: float = 20.0, max_steps: int | None = None,
              log=None) -> dict:
    """Run (or continue) wan-mini training (module docstring); returns a summary dict. ``max_steps``:
    replace the run's schedule length (a longer or shorter run; the schedule changes from here)."""
    log = log or (lambda *a: print(*a, flush=True))
    t0 = time.monotonic()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats()
    out_dir, ckpt_root = Path(out_dir), Path(out_dir) / "checkpoints"
    # 1. model, EMA, optimizer, run state; data from the run's position
    model, ema, optimizer, run = setup(cfg, dev, ckpt_root, resume, init_from, log)
    if max_steps is not None:
        if max_steps <= run.step:
            raise ValueError(f"--max-steps {max_steps} must be above the run's step {run.step}")
        log(f"max_steps {run.max_steps} -> {max_steps} (--max-steps)")
        run.max_steps, run.fitted = max_steps, True
    loader = torch.utils.data.DataLoader(
        WanSamples(cfg), batch_sampler=IndexBatches(run.data_position, cfg.batch_size, cfg.grad_accum, 1, 0),
        num_workers=cfg.num_workers, pin_memory=dev.type == "cuda",
        prefetch_factor=cfg.prefetch_factor if cfg.num_workers else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(to_yaml(cfg))
    summary = {"params": sum(p.numel() for p in model.parameters()), "tokens_per_clip": tokens_per_clip(cfg)}
    log(f"wan-mini: {summary['params'] / 1e6:.2f}M parameters, {summary['tokens_per_clip']} tokens per clip, batch "
        f"{cfg.batch_size} ({cfg.grad_accum} micro-batches), {dev.type}, precision {cfg.mixed_precision}, "
        f"step {run.step}/{run.max_steps}")
    # 2. loop
    cond, it, validate, interval = conditioning(cfg), iter(loader), Validator(cfg, dev), Interval()
    loop_start, elapsed_before = time.monotonic(), run.elapsed_s
    step_times: list[float] = []
    last_save_s, reason, lr = 0.0, "max_steps", cfg.optim.lr
    while run.step < run.max_steps:
        ts = time.monotonic()
        batches = [next(it) for _ in range(cfg.grad_accum)]
        lr = cfg.optim.lr * lr_factor(cfg, run, run.step)
        interval.add(*train_step(model, optimizer, ema, batches, cond, cfg, run, dev))
        step_times.append(time.monotonic() - ts)
        if run.step % cfg.log_every == 0:
            val = validate(model, ema) if run.step % cfg.val_every == 0 else {}
            log_row(interval, run, cfg, lr, elapsed_before + time.monotonic() - loop_start, val, out_dir, log)
        if cfg.budget_minutes > 0 and not run.fitted and len(step_times) >= cfg.fit_after:
            _fit_max_steps(cfg, run, step_times, elapsed_before + time.monotonic() - loop_start, log)
        if stop_at_step is not None and run.step >= stop_at_step:
            reason = f"stop_at_step {stop_at_step}"
            break
        used = time.monotonic() - t0
        if minutes > 0 and used + 3 * _median(step_times[-20:]) + reserve_s + 2 * last_save_s > minutes * 60:
            reason = f"minutes {minutes}"
            break
        if run.step % cfg.checkpoint_every == 0 and run.step < run.max_steps:
            ts = time.monotonic()
            save(model, ema, optimizer, run, cfg, ckpt_root, elapsed_before + ts - loop_start)
            last_save_s = time.monotonic() - ts
    # 3. a last row with a validation, checkpoint, export
    elapsed = elapsed_before + time.monotonic() - loop_start
    if interval.n:
        log_row(interval, run, cfg, lr, elapsed, validate(model, ema), out_dir, log)
    elif run.rows and run.rows[-1]["step"] == run.step and "val_loss" not in run.rows[-1]:
        run.rows[-1].update(validate(model, ema))
        write_csv(out_dir / "loss.csv", run.rows)
    ckpt = save(model, ema, optimizer, run, cfg, ckpt_root, elapsed)
    summary.update(step=run.step, max_steps=run.max_steps, reason=reason, checkpoint=str(ckpt), elapsed_s=elapsed,
                   clips_per_s=cfg.batch_size / max(_median(step_times[5:] or step_times), 1e-9),
                   last_row=run.rows[-1] if run.rows else None,
                   gpu_mem_gb=torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0)
    if export_to is not None:
        state = {"fingerprint": fingerprint(cfg), "config": to_yaml(cfg), "run": {**asdict(run), "elapsed_s": elapsed}}
        folder, mb = export(ema.state_dict(), cfg, Path(export_to) / "wan-mini", extra={TRAIN_STATE: state})
        write_csv(Path(export_to) / "loss.csv", run.rows)
        summary.update(export=str(folder), export_mib=mb)
    log("summary " + json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m vidhash.training.wan_standalone", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML (configs/train/wan_mini.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, loss.csv, config.yaml")
    p.add_argument("--minutes", type=float, default=0.0, help="stop (with a checkpoint and export) within this wall time")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints when it holds one")
    p.add_argument("--init-from", default=None, help="a checkpoint folder (exact) or a wan-mini export (warm start)")
    p.add_argument("--export-to", default=None, help="write DIR/wan-mini (EMA, fp16) and DIR/loss.csv at the end")
    p.add_argument("--stop-at-step", type=int, default=None)
    p.add_argument("--reserve-s", type=float, default=20.0, help="seconds kept for the checkpoint and export")
    p.add_argument("--max-steps", type=int, default=None,
                   help="replace the run's schedule length (max_steps, also after budget_minutes fitted it)")
    a = p.parse_args(argv)
    cfg = load_wan_config(a.config, a.overrides)
    return train_wan(cfg, a.out, a.minutes, a.resume, a.init_from, a.export_to, a.stop_at_step, a.reserve_s,
                     a.max_steps)


if __name__ == "__main__":
    main()
