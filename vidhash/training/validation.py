"""Validation during training: the loss of the model and of its EMA on a fixed held-out batch.

    validator = Validator(cfg, family, accelerator); row.update(validator(state))   # every val_every steps

The batch is the model family's (:meth:`~vidhash.training.families.ModelFamily.validation`: the
loader's item format, e.g. wan-mini's clips of held-out worlds at fixed noise levels), built once
and scored with the family's own ``to_device``, ``loss`` and ``loss_count`` — the training
objective's mean squared error, in eval mode, under the run's autocast. The EMA weights are copied
into a second model built for it. Only the main process validates (the unwrapped model, so no
collective runs); the others get ``{}``. Nothing here draws from the global RNGs, so a run with
validations trains bitwise as one without.
"""
from __future__ import annotations

import torch

from .config import TrainConfig
from .families import ModelFamily, build_model
from .state import TrainState

VAL_FIELDS = ("val_loss", "val_loss_ema")


class Validator:
    """``validator(state)`` → ``{"val_loss": …, "val_loss_ema": …}`` (module docstring)."""

    def __init__(self, cfg: TrainConfig, family: ModelFamily, accelerator):
        self.cfg, self.family, self.acc = cfg, family, accelerator
        self.item: dict[str, torch.Tensor] | None = None
        self.ema_model: torch.nn.Module | None = None

    @torch.no_grad()
    def __call__(self, state: TrainState) -> dict[str, float]:
        if not self.acc.is_main_process:
            return {}
        cfg, family, dev = self.cfg, self.family, self.acc.device
        if self.item is None:
            self.item = family.validation(cfg)
            if self.item is None:
                raise ValueError(f"val_every: the {family.name or type(family).__name__} family has no validation batch")
            self.ema_model = build_model(cfg, family).to(dev)
        state.ema.copy_to(self.ema_model)
        count = float(family.loss_count([self.item], dev))
        out = {}
        for key, model in zip(VAL_FIELDS, (state.raw, self.ema_model)):
            was = model.training
            model.eval()
            with self.acc.autocast():
                err = family.loss(model, family.to_device(self.item, dev), cfg)
            model.train(was)
            out[key] = float(err) / count
        return out
