"""The ``wan`` family: diffusers' own ``WanTransformer3DModel`` trained in pixel space (wan-mini) and
exported as a ``WanMiniPipeline``.

    vidhash train wan_mini out_dir=/tmp/wan --resume auto --max-minutes 8 init_from=.wan/wan-mini

Config: :class:`~vidhash.training.wan_family.WanTrainConfig` (``model``, ``condition``, ``data``,
``noise``, ``sample_shift``, ``attention``: dense or hash attention while training, recorded in the
export's ``train_state.json``, :mod:`vidhash.training.attention`); the pieces (model, samples, loss, export) are in
:mod:`vidhash.training.wan_family`. Validation (``val_every``): model and EMA on a fixed batch of
held-out worlds (:func:`~vidhash.training.wan_family.validation_batch`). The export keeps Wan's
``_keep_in_fp32_modules`` in float32 and is sharded under ``checkpoint.shard_mb``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import wan_family
from ..attention import attention_record, fingerprint_part
from ..wan_family import WanBatch, WanSamples, WanTrainConfig
from . import ModelFamily


class WanFamily(ModelFamily):
    name = "wan"
    config_class = WanTrainConfig

    def check(self, cfg: WanTrainConfig) -> None:
        wan_family.check_wan_sections(cfg)

    def build(self, cfg: WanTrainConfig) -> nn.Module:
        return wan_family.build(cfg)

    def fingerprint(self, cfg: WanTrainConfig) -> str:
        return wan_family.fingerprint(cfg)

    def model_config(self, cfg: WanTrainConfig) -> dict:
        kw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in wan_family.model_kwargs(cfg).items()}
        return {**kw, **fingerprint_part(cfg.attention)}  # a sparse run's attention is named in a mismatch

    def export_info(self, cfg: WanTrainConfig) -> dict:
        return attention_record(cfg.attention)

    def prepare(self, model: nn.Module, cfg: WanTrainConfig) -> None:
        if cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        if cfg.compile:
            model.compile_repeated_blocks()  # regional: one compiled graph per block, names unchanged

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        return wan_family.param_groups(model, weight_decay)

    def samples(self, cfg: WanTrainConfig) -> WanSamples:
        return WanSamples(cfg)

    def loss_count(self, items: list[dict[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
        return wan_family.loss_elements(items, device)

    def to_device(self, item: dict[str, torch.Tensor], device: torch.device) -> WanBatch:
        return wan_family.wan_batch(item, device)

    def loss(self, model: nn.Module, batch: WanBatch, cfg: WanTrainConfig) -> torch.Tensor:
        return wan_family.loss(model, batch, wan_family.conditioning(cfg))

    def validation(self, cfg: WanTrainConfig) -> dict[str, torch.Tensor] | None:
        return wan_family.validation_batch(cfg, cfg.val_clips) if cfg.data.source == "world" else None

    def load_weights(self, model: nn.Module, folder: Path, cfg: WanTrainConfig) -> None:
        wan_family.load_transformer(model, folder, cfg)

    def cast(self, model: nn.Module, dtype: torch.dtype) -> nn.Module:
        return wan_family.cast_keeping_fp32(model, dtype)

    def save(self, model: nn.Module, folder: Path, cfg: WanTrainConfig) -> None:
        wan_family.save_pipeline(model, folder, cfg)
