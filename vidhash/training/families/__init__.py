"""Model families: everything the trainer knows about the model it trains, behind one interface.

    python -c "from vidhash.training.families import FAMILIES; print(sorted(FAMILIES))"

The trainer (``vidhash.training.trainer`` and its loop) never names a model class or a batch
format. It asks the family that ``TrainConfig.model_family`` names for these:

=================================================  ==============================================
the config
``config_class``                                   the dataclass of its train config:
                                                   ``TrainConfig`` or a subclass with the family's
                                                   own ``model`` / ``data`` / … sections
``check(cfg) -> None``                             its sections' values (ValueError naming the
                                                   key); the run's keys are checked by the trainer
the model
``build(cfg) -> nn.Module``                        a fresh fp32 model on the CPU (seeded by
                                                   :func:`build_model`, which calls it)
``fingerprint(cfg) -> str``,                       what a checkpoint's tensors depend on: its
``model_config(cfg) -> dict``                      hash (compared on resume) and the dict saved
                                                   beside it (named in the error when they differ)
``prepare(model, cfg) -> None``                    training-only changes in place: gradient
                                                   checkpointing, regional ``torch.compile``
``param_groups(model, weight_decay) -> list``      AdamW's groups: which weights decay
the data and the objective
``samples(cfg) -> IndexedSamples``                 sample ``i`` a pure function of (seed, ``i``), so
                                                   a run's data position is one integer
                                                   (:class:`~vidhash.training.data.IndexedSamples`)
``loss_count(items, device) -> Tensor``            how many values the losses of one optimizer
                                                   step's micro-batches sum over, on ``device``
``to_device(item, device) -> batch``               one loader micro-batch on the device
                                                   (asynchronous copies)
``loss(model, batch, cfg) -> Tensor``              that micro-batch's summed squared error, float32
``validation(cfg) -> item | None``                 a fixed held-out batch in the loader's format
                                                   (``val_every``; None: the family has none)
the weights
``load_weights(model, folder, cfg) -> None``       ``init_from``: the weights of a saved export
``cast(model, dtype) -> nn.Module``                the EMA model in the export's dtype
``save(model, folder, cfg) -> None``               export: a ``from_pretrained`` folder of
                                                   ``model`` (the EMA weights, cast; the trainer
                                                   makes it atomic and picks the dtype)
``export_info(cfg) -> dict``                       what a user of the export must know beyond the
                                                   weights, into ``train_state.json`` (wan: the
                                                   training attention); ``{}`` by default
=================================================  ==============================================

One optimizer step of the loop: ``total`` = ``loss_count`` of its micro-batches summed over
processes; for each micro-batch ``err = loss(model, to_device(item))`` and backward of
``err · processes / total``; then clipping, AdamW, schedule, EMA — none of which depends on the
family. ``loss`` gets the model as the loop calls it (DDP's wrapper with several processes: call
it, and reach its module through :func:`unwrap`). The shared pieces of the rectified-flow
objective are in :mod:`vidhash.training.objective`.

Adding a family (``wan``: diffusers' ``WanTransformer3DModel``, :mod:`.wan`): a module in this
package with a ``ModelFamily`` subclass, one line in ``FAMILIES``, and ``model_family: <name>`` in
its YAML. The family reads its own settings from the config it is given (``model``, ``data``,
``noise`` … of its ``config_class``). The trainer itself reads only the run's keys: ``seed``,
``max_steps``, ``batch_size``, ``grad_accum``, ``mixed_precision``, ``compile`` and ``ddp_*``,
``optim``, ``ema``, ``checkpoint``, ``log_every``, ``max_minutes``, ``fit_schedule``,
``fit_after``, ``budget_minutes``, ``val_every``, ``val_clips``, ``init_from``, ``export_*``,
``out_dir`` and the loader's ``data.num_workers``, ``prefetch_factor``, ``pin_memory``,
``reserve_cores``.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig
from ..data import IndexedSamples

# model_family name -> "module:class" (imported when used)
FAMILIES = {
    "vidhash": "vidhash.training.families.vidhash:VidHashFamily",
    "wan": "vidhash.training.families.wan:WanFamily",
}


class ModelFamily(ABC):
    """The interface the trainer calls (see the module docstring); a family subclasses it and
    defines every abstract method (a family that misses one cannot be instantiated)."""

    name = ""
    config_class: type = TrainConfig

    def check(self, cfg: TrainConfig) -> None:
        """Nothing by default."""

    @abstractmethod
    def build(self, cfg: TrainConfig) -> nn.Module:
        ...

    @abstractmethod
    def fingerprint(self, cfg: TrainConfig) -> str:
        ...

    @abstractmethod
    def model_config(self, cfg: TrainConfig) -> dict:
        ...

    def prepare(self, model: nn.Module, cfg: TrainConfig) -> None:
        """Nothing by default."""

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        """Weight decay on matrices, none on biases, norms and embeddings."""
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    @abstractmethod
    def samples(self, cfg: TrainConfig) -> IndexedSamples:
        ...

    @abstractmethod
    def loss_count(self, items: list[dict[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
        ...

    @abstractmethod
    def to_device(self, item: dict[str, torch.Tensor], device: torch.device):
        ...

    @abstractmethod
    def loss(self, model: nn.Module, batch, cfg: TrainConfig) -> torch.Tensor:
        ...

    def validation(self, cfg: TrainConfig) -> dict[str, torch.Tensor] | None:
        """None by default (``val_every`` needs a family that has one)."""
        return None

    def load_weights(self, model: nn.Module, folder: Path, cfg: TrainConfig) -> None:
        """A family that does not define it cannot warm start: ValueError naming ``init_from``."""
        raise ValueError(f"init_from: model_family {self.name or type(self).__name__!r} cannot load a saved export")

    def cast(self, model: nn.Module, dtype: torch.dtype) -> nn.Module:
        """The whole model in ``dtype`` by default."""
        return model.to(dtype)

    @abstractmethod
    def save(self, model: nn.Module, folder: Path, cfg: TrainConfig) -> None:
        ...

    def export_info(self, cfg: TrainConfig) -> dict:
        """Nothing by default (keys added to ``train_state.json``; not ``fingerprint``, ``config``, ``run``)."""
        return {}


def get_family(name: str) -> ModelFamily:
    """The family registered as ``name`` (``TrainConfig.model_family``); ValueError naming
    ``model_family`` for a name not in ``FAMILIES``."""
    if name not in FAMILIES:
        raise ValueError(f"model_family must be one of {', '.join(sorted(FAMILIES))}, got {name!r}")
    module, cls = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def build_model(cfg: TrainConfig, family: ModelFamily | None = None) -> nn.Module:
    """``family.build(cfg)`` (default: ``cfg.model_family``'s) with the global torch RNG seeded by
    ``cfg.seed`` — the same initial weights on every process — and left as it was."""
    family = family or get_family(cfg.model_family)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(cfg.seed)
        return family.build(cfg)
    finally:
        torch.random.set_rng_state(state)


def unwrap(model: nn.Module) -> nn.Module:
    """The module behind DDP's wrapper (the model itself without one)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
