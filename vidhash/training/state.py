"""What a run trains and where it stands: model, EMA, optimizer, schedule, position — built fresh,
warm-started (``init_from``) or restored from a checkpoint, and saved into one.

    state = build_state(cfg, family, accelerator, saved, log)   # saved: load_checkpoint(...) or None
    state.save(root, cfg, family, accelerator, elapsed_s, reason)

A checkpoint (:mod:`vidhash.training.checkpoint` writes the files) holds the tensor groups
``model``, ``ema``, ``optim`` (Adam moments, flattened as ``"<param index>.<name>"``) and a meta
dict: ``fingerprint`` and ``model`` (the family's), ``config`` (YAML), ``data_position``, ``rows``
(the loss log so far), ``optim`` (param groups, scalar state), ``scheduler``, ``schedule``
(``max_steps``, the ``budget_minutes`` it was fitted for, the step of the last re-warm), ``rng``
(one set of global RNG states per process), ``num_processes``, ``elapsed_s``, ``reason``, ``scaler``.

**Runs chained through exports.** An export with ``train_state.json`` (:meth:`TrainState.train_state`,
``export_train_state``) carries the run's position without the optimizer: ``init_from`` of it
continues the run (:func:`continue_run`) — model and EMA from the exported EMA weights, step, data
position, schedule length and loss log as they were, new AdamW moments, the learning rate ramped
up again over ``optim.rewarm_steps`` (:func:`lr_with_rewarm`). The stand-in wan-mini loop of
main at 60f642e wrote the same file (its rows say ``clips_per_s``; read as ``samples_per_s``).
"""
from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from omegaconf import OmegaConf

from vidhash.config import to_yaml

from .checkpoint import save_checkpoint
from .config import TrainConfig, fused_mode
from .ema import EMA
from .families import ModelFamily, build_model
from .schedule import lr_lambda, refresh_lr

TRAIN_STATE = "train_state.json"  # an export's run position (export_train_state; init_from continues it)


@dataclass
class TrainState:
    """``model``: what the loop calls (DDP's wrapper with several processes); ``raw``: the model
    itself. ``step``, ``data_pos`` (samples consumed), ``rows`` (loss log) and ``elapsed_before``
    (seconds of earlier runs) advance with the run; ``fitted_for``: the ``budget_minutes`` that
    ``cfg.max_steps`` was fitted for (0: not fitted); ``rewarm_from``: the step of the last warm
    start with new AdamW moments (-1: none)."""

    model: nn.Module
    raw: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    data_pos: int = 0
    rows: list[dict] = field(default_factory=list)
    elapsed_before: float = 0.0
    fitted_for: float = 0.0
    rewarm_from: int = -1

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.raw.parameters())

    def save(self, root: Path, cfg: TrainConfig, family: ModelFamily, accelerator, elapsed_s: float,
             reason: str) -> Path | None:
        """Write checkpoint ``self.step`` under ``root`` (every process gathers its RNG states; the
        main process writes). Returns its folder on the main process, None elsewhere."""
        from accelerate.utils import gather_object

        rng_all = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
        if not accelerator.is_main_process:
            return None
        opt_flat, opt_rest = optim_tensors(self.optimizer.state_dict())
        if cfg.checkpoint.moments_dtype == "bf16":  # smaller, but resume is then not bitwise exact
            opt_flat = {k: (v.to(torch.bfloat16) if v.ndim > 0 else v) for k, v in opt_flat.items()}
        meta = {
            "fingerprint": family.fingerprint(cfg), "model": family.model_config(cfg), "config": to_yaml(cfg),
            "data_position": self.data_pos, "rows": self.rows, "optim": opt_rest,
            "scheduler": self.scheduler.state_dict(), "schedule": self.schedule(cfg), "rng": rng_all,
            "num_processes": accelerator.num_processes,
            "elapsed_s": elapsed_s, "reason": reason,
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        }
        tensors = {"model": dict(self.raw.state_dict()), "ema": self.ema.state_dict(), "optim": opt_flat}
        return save_checkpoint(root, self.step, tensors, meta, cfg.checkpoint.shard_mb, cfg.checkpoint.keep)

    def schedule(self, cfg: TrainConfig) -> dict:
        """The schedule's state beside the scheduler's: length, what fitted it, the last re-warm, and
        the run's ``budget_minutes`` (fitted or not yet: what a continuing call keeps)."""
        return {"max_steps": cfg.max_steps, "fitted_for": self.fitted_for, "rewarm_from": self.rewarm_from,
                "budget": cfg.budget_minutes}

    def train_state(self, cfg: TrainConfig, family: ModelFamily, elapsed_s: float) -> dict:
        """``train_state.json`` of an export: what :func:`continue_run` continues (no optimizer), and
        the family's :meth:`~vidhash.training.families.ModelFamily.export_info` (wan: ``attention``)."""
        run = {"step": self.step, "data_position": self.data_pos, "max_steps": cfg.max_steps,
               "fitted": self.fitted_for > 0, "budget_minutes": self.fitted_for, "rewarm_from": self.rewarm_from,
               "budget": cfg.budget_minutes, "elapsed_s": elapsed_s, "rows": self.rows}
        return {**family.export_info(cfg), "fingerprint": family.fingerprint(cfg), "config": portable_yaml(cfg),
                "run": run}


def portable_yaml(cfg: TrainConfig) -> str:
    """``cfg`` as YAML for an export that ships: the training machine's absolute ``out_dir``,
    ``export_dir`` and ``init_from`` are reduced to their last part (nothing reads them back: the
    fingerprint and :func:`continue_run` use neither)."""
    def short(path: str | None) -> str | None:
        return Path(path).name if path and Path(path).is_absolute() else path
    return to_yaml(dataclasses.replace(cfg, out_dir=short(cfg.out_dir), export_dir=short(cfg.export_dir),
                                       init_from=short(cfg.init_from)))


def build_state(cfg: TrainConfig, family: ModelFamily, accelerator, saved: tuple[dict, dict] | None,
                log, keep_budget: bool = False) -> TrainState:
    """Model (+ the family's ``prepare``), EMA, AdamW, warmup-cosine schedule; then the checkpoint
    ``saved`` = (tensors, meta) restored, or ``init_from``'s weights (and its run, when the folder
    has a ``train_state.json``); on the device, prepared by accelerate. Global RNGs are seeded per
    process (restored from the checkpoint when it has as many processes). ``keep_budget``: a
    continued run keeps the schedule fitted to its budget whatever ``cfg.budget_minutes`` says
    (:func:`continue_budget`)."""
    rank = accelerator.process_index
    torch.manual_seed(cfg.seed + rank)
    np.random.seed((cfg.seed + rank) % 2**32)
    random.seed(cfg.seed + rank)
    model = build_model(cfg, family)
    family.prepare(model, cfg)
    ema = EMA(model, cfg.ema.decay, cfg.ema.warmup)
    o = cfg.optim
    optimizer = torch.optim.AdamW(family.param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas),
                                  eps=o.eps, fused=use_fused_adamw(o.fused, accelerator.device) or None)
    state = TrainState(model, model, ema, optimizer, None)
    state.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_with_rewarm(cfg, state))
    main_log = log if accelerator.is_main_process else (lambda *a, **k: None)
    if saved is None and cfg.init_from:
        folder = Path(cfg.init_from)
        family.load_weights(model, folder, cfg)  # a warm start, not an exact resume
        ema.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items() if k in ema.shadow}
        run = read_train_state(folder, cfg, family)
        if run is None:
            main_log(f"initialised model and EMA from {cfg.init_from} (weights only: a new optimizer and schedule)")
        else:
            continue_run(state, run, cfg, main_log, keep_budget)
    if saved is not None:
        _restore(state, *saved, cfg, accelerator, log, keep_budget)
    model.to(accelerator.device)
    ema.shadow = {k: v.to(accelerator.device) for k, v in ema.shadow.items()}
    state.model, state.optimizer = accelerator.prepare(model, optimizer)
    if saved is not None and saved[1].get("scaler") is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(saved[1]["scaler"])
    state.raw = accelerator.unwrap_model(state.model)
    return state


def lr_with_rewarm(cfg: TrainConfig, state: TrainState):
    """:func:`~vidhash.training.schedule.lr_lambda`, times a linear ramp over ``optim.rewarm_steps``
    from ``state.rewarm_from`` when the run was continued with new AdamW moments (read at each call)."""
    base = lr_lambda(cfg)

    def f(step: int) -> float:
        if state.rewarm_from < 0 or cfg.optim.rewarm_steps <= 0:
            return base(step)
        return base(step) * min(1.0, (step - state.rewarm_from + 1) / cfg.optim.rewarm_steps)

    return f


def read_train_state(folder: Path, cfg: TrainConfig, family: ModelFamily) -> dict | None:
    """The run of an export's ``train_state.json`` (None: the folder has none); ValueError when it
    was exported for another model config."""
    path = folder / TRAIN_STATE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if saved.get("fingerprint") != family.fingerprint(cfg):
        raise ValueError(f"init_from={folder} was exported for another model config ({TRAIN_STATE}: fingerprint "
                         f"{saved.get('fingerprint')}, this config {family.fingerprint(cfg)})")
    run = dict(saved["run"])
    if run.get("fitted") and "budget_minutes" not in run:  # the stand-in loop's file: the budget is in its config
        run["budget_minutes"] = float(OmegaConf.create(saved["config"]).get("budget_minutes", 0.0))
    return run


def continue_run(state: TrainState, run: dict, cfg: TrainConfig, log, keep: bool = False) -> None:
    """An export's run (:func:`read_train_state`) continued: step, data position, loss log, time,
    the schedule's length (while ``budget_minutes`` is the one it was fitted for) and the learning
    rate of this step, re-warmed from here (the AdamW moments are new)."""
    state.step, state.data_pos, state.elapsed_before = int(run["step"]), int(run["data_position"]), float(run["elapsed_s"])
    state.rows = [{("samples_per_s" if k == "clips_per_s" else k): v for k, v in r.items()} for r in run["rows"]]
    state.rewarm_from = state.step
    continue_budget(cfg, state, float(run.get("budget_minutes", 0.0)) if run.get("fitted") else 0.0,
                    int(run["max_steps"]), keep, log, run.get("budget"))
    state.scheduler.last_epoch = state.step
    refresh_lr(state.scheduler)
    log(f"continued the run of {cfg.init_from} at step {state.step}/{cfg.max_steps} (data position {state.data_pos}"
        + (f", schedule fitted to budget_minutes {state.fitted_for:g}" if state.fitted_for else "")
        + f"): model and EMA from its EMA weights, new AdamW moments, lr re-warmed over {cfg.optim.rewarm_steps} steps")


def continue_budget(cfg: TrainConfig, state: TrainState, fitted_for: float, max_steps: int,
                    keep: bool = False, log=None, budget: float | None = None) -> None:
    """The schedule a continued run goes on with, from what was saved: its length ``max_steps``,
    the ``budget_minutes`` it was fitted to (``fitted_for``, 0: none yet) and the run's own
    ``budget`` (None in files from before it was saved).

    * ``keep`` (a ``vidhash train`` call that names neither ``budget_minutes`` nor ``max_steps``;
      one that names ``max_steps`` alone runs with ``budget_minutes=0``: that length):
      the run's — its fit, else (not fitted yet, or a length set with ``budget_minutes=0``) its
      saved length and budget; ``cfg.budget_minutes`` becomes the run's, whatever the YAML says.
    * else a fit is kept while ``cfg.budget_minutes`` is the one fitted (said when the config's
      ``max_steps`` differs: ``budget_minutes=0 max_steps=N`` sets a length instead); another
      budget > 0 is fitted anew by the loop after ``fit_after`` steps — for a run that had a budget
      or a fit, its saved length stands until then where it reaches that far (no jump of the
      learning rate to the YAML's ``max_steps`` in between); otherwise the config's ``max_steps``,
      at least ``fit_after`` steps past ``state.step`` (a run extended past a shorter YAML length
      reaches its fit); with budget 0 the config's ``max_steps``. ``state.step`` is the run's step already."""
    say = log if log is not None else (lambda *a, **k: None)
    if fitted_for > 0 and (keep or fitted_for == cfg.budget_minutes):
        if cfg.budget_minutes != fitted_for:
            say(f"kept the schedule fitted to budget_minutes {fitted_for:g} (max_steps {max_steps}); the config's "
                f"budget_minutes {cfg.budget_minutes:g} is not used — name budget_minutes= on the call to fit it anew")
        elif cfg.max_steps != max_steps:
            say(f"kept the schedule fitted to budget_minutes {fitted_for:g} (max_steps {max_steps}); max_steps "
                f"{cfg.max_steps} is not used — budget_minutes=0 max_steps=N sets a length instead")
        cfg.max_steps, state.fitted_for, cfg.budget_minutes = max_steps, fitted_for, fitted_for
    elif keep and budget is not None:
        if (cfg.budget_minutes, cfg.max_steps) != (float(budget), max_steps):
            say(f"kept the run's schedule: max_steps {max_steps}, budget_minutes {float(budget):g} (the config says "
                f"{cfg.max_steps}, {cfg.budget_minutes:g}; name budget_minutes= or max_steps= on the call to change it)")
        cfg.max_steps, cfg.budget_minutes = max_steps, float(budget)
    elif cfg.budget_minutes > 0:  # the loop fits this budget after fit_after steps; until then:
        if (fitted_for > 0 or budget) and max_steps > state.step + cfg.fit_after:
            cfg.max_steps = max_steps  # the run's saved length (a run at its end: the config's, to get there)
        cfg.max_steps = max(cfg.max_steps, state.step + cfg.fit_after + 1)  # at least as far as the fit


def _restore(state: TrainState, tensors: dict, meta: dict, cfg: TrainConfig, accelerator, log,
             keep_budget: bool = False) -> None:
    """A checkpoint's tensors and position into ``state`` (before accelerate prepares it)."""
    state.raw.load_state_dict(tensors["model"])
    state.ema.load_state_dict(tensors["ema"])
    state.optimizer.load_state_dict(optim_state(tensors.get("optim", {}), meta["optim"]))
    state.scheduler.load_state_dict(meta["scheduler"])
    state.step, state.data_pos, state.rows = meta["step"], meta["data_position"], list(meta["rows"])
    state.elapsed_before = meta.get("elapsed_s", 0.0)
    schedule = meta.get("schedule", {})  # checkpoints before it: no re-warm, nothing fitted to a budget
    state.rewarm_from = int(schedule.get("rewarm_from", -1))
    continue_budget(cfg, state, float(schedule.get("fitted_for", 0.0)), int(schedule.get("max_steps", cfg.max_steps)),
                    keep_budget, log if accelerator.is_main_process else None, schedule.get("budget"))
    rng = meta["rng"]
    if len(rng) == accelerator.num_processes:
        set_rng_state(rng[accelerator.process_index])
    elif accelerator.is_main_process:
        log(f"note: checkpoint from {len(rng)} processes, now {accelerator.num_processes}: global RNGs reseeded "
            "(training randomness is per sample index, so the data stream is unchanged)")


def use_fused_adamw(setting, device: torch.device) -> bool:
    """``optim.fused``: "auto" = on CUDA (host time: one kernel for every parameter); "on"/"off"."""
    mode = fused_mode(setting)
    return device.type == "cuda" if mode == "auto" else mode == "on"


def rng_state() -> dict:
    """This process's global RNG states (torch, CUDA, numpy, Python)."""
    return {
        "torch": torch.random.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(s: dict) -> None:
    torch.random.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def optim_tensors(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state dict as (tensors ``"<param index>.<name>"``, the rest: param groups, scalars)."""
    flat = {f"{i}.{k}": v for i, st in opt_state["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    rest = {"param_groups": opt_state["param_groups"],
            "scalars": {i: {k: v for k, v in st.items() if not torch.is_tensor(v)} for i, st in opt_state["state"].items()}}
    return flat, rest


def optim_state(flat: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict:
    """The inverse of :func:`optim_tensors`."""
    state: dict[int, dict] = {int(i): dict(v) for i, v in rest["scalars"].items()}
    for key, v in flat.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    return {"state": state, "param_groups": rest["param_groups"]}
