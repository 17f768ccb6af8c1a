"""Exponential moving average of a model's weights (fp32 shadow copies)."""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    """``shadow = decay·shadow + (1 − decay)·param`` after every optimizer step; with ``warmup``
    the decay is ``min(decay, (1 + step) / (10 + step))`` so early averages are not stuck at init."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.decay, self.warmup = float(decay), bool(warmup)
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    def current_decay(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.current_decay(step)
        shadows, values = [], []
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.device != v.device:
                self.shadow[k] = s = s.to(v.device)
            if v.dtype.is_floating_point:
                shadows.append(s)
                values.append(v.detach().float())
            else:
                s.copy_(v)
        if shadows:  # one multi-tensor update (a few kernels on CUDA, not one per tensor): same numbers as lerp_
            torch._foreach_lerp_(shadows, values, 1.0 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise ValueError(f"EMA state does not match the model (keys {sorted(missing)[:4]}...)")
        for k in self.shadow:
            self.shadow[k] = state[k].to(self.shadow[k].device, torch.float32).clone()

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})
