"""What a run trains and where it stands: model, EMA, optimizer, schedule, position — built fresh,
warm-started (``init_from``) or restored from a checkpoint, and saved into one.

    state = build_state(cfg, family, accelerator, saved, log)   # saved: load_checkpoint(...) or None
    state.save(root, cfg, family, accelerator, elapsed_s, reason)

A checkpoint (:mod:`vidhash.training.checkpoint` writes the files) holds the tensor groups
``model``, ``ema``, ``optim`` (Adam moments, flattened as ``"<param index>.<name>"``) and a meta
dict: ``fingerprint`` and ``model`` (the family's), ``config`` (YAML), ``data_position``, ``rows``
(the loss log so far), ``optim`` (param groups, scalar state), ``scheduler``, ``rng`` (one set of
global RNG states per process), ``num_processes``, ``elapsed_s``, ``reason``, ``scaler``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vidhash.config import to_yaml

from .checkpoint import save_checkpoint
from .config import TrainConfig, fused_mode
from .ema import EMA
from .families import ModelFamily, build_model
from .schedule import lr_lambda


@dataclass
class TrainState:
    """``model``: what the loop calls (DDP's wrapper with several processes); ``raw``: the model
    itself. ``step``, ``data_pos`` (samples consumed), ``rows`` (loss log) and ``elapsed_before``
    (seconds of earlier runs) advance with the run."""

    model: nn.Module
    raw: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    data_pos: int = 0
    rows: list[dict] = field(default_factory=list)
    elapsed_before: float = 0.0

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
            "scheduler": self.scheduler.state_dict(), "rng": rng_all, "num_processes": accelerator.num_processes,
            "elapsed_s": elapsed_s, "reason": reason,
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        }
        tensors = {"model": dict(self.raw.state_dict()), "ema": self.ema.state_dict(), "optim": opt_flat}
        return save_checkpoint(root, self.step, tensors, meta, cfg.checkpoint.shard_mb, cfg.checkpoint.keep)


def build_state(cfg: TrainConfig, family: ModelFamily, accelerator, saved: tuple[dict, dict] | None,
                log) -> TrainState:
    """Model (+ the family's ``prepare``), EMA, AdamW, warmup-cosine schedule; then the checkpoint
    ``saved`` = (tensors, meta) restored, or ``init_from``'s weights; on the device, prepared by
    accelerate. Global RNGs are seeded per process (restored from the checkpoint when it has as
    many processes)."""
    rank = accelerator.process_index
    torch.manual_seed(cfg.seed + rank)
    np.random.seed((cfg.seed + rank) % 2**32)
    random.seed(cfg.seed + rank)
    model = build_model(cfg, family)
    family.prepare(model, cfg)
    ema = EMA(model, cfg.ema.decay, cfg.ema.warmup)
    o = cfg.optim
    optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  fused=use_fused_adamw(o.fused, accelerator.device) or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    state = TrainState(model, model, ema, optimizer, scheduler)
    if saved is None and cfg.init_from:
        family.load_weights(model, Path(cfg.init_from), cfg)  # a warm start, not an exact resume
        ema.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items() if k in ema.shadow}
        if accelerator.is_main_process:
            log(f"initialised model and EMA from {cfg.init_from} (weights only: a new optimizer and schedule)")
    if saved is not None:
        _restore(state, *saved, accelerator, log)
    model.to(accelerator.device)
    ema.shadow = {k: v.to(accelerator.device) for k, v in ema.shadow.items()}
    state.model, state.optimizer = accelerator.prepare(model, optimizer)
    if saved is not None and saved[1].get("scaler") is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(saved[1]["scaler"])
    state.raw = accelerator.unwrap_model(state.model)
    return state


def _restore(state: TrainState, tensors: dict, meta: dict, accelerator, log) -> None:
    """A checkpoint's tensors and position into ``state`` (before accelerate prepares it)."""
    state.raw.load_state_dict(tensors["model"])
    state.ema.load_state_dict(tensors["ema"])
    state.optimizer.load_state_dict(optim_state(tensors.get("optim", {}), meta["optim"]))
    state.scheduler.load_state_dict(meta["scheduler"])
    state.step, state.data_pos, state.rows = meta["step"], meta["data_position"], list(meta["rows"])
    state.elapsed_before = meta.get("elapsed_s", 0.0)
    rng = meta["rng"]
    if len(rng) == accelerator.num_processes:
        set_rng_state(rng[accelerator.process_index])
    elif accelerator.is_main_process:
        log(f"note: checkpoint from {len(rng)} processes, now {accelerator.num_processes}: global RNGs reseeded "
            "(training randomness is per sample index, so the data stream is unchanged)")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices, none on biases, norms and embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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
