"""The ``vidhash`` family: ``VidHashTransformer3DModel`` trained and exported as a ``VidHashPipeline``.

    vidhash train cpu_test out_dir=/tmp/run max_steps=8      # model_family: vidhash (the default)

Settings: ``TrainConfig.model`` (the model's constructor arguments), ``temporal_mode`` (dense:
chunk-causal over the whole clip; selected: the inference selection, ``selection``),
``noise.chunk_frames`` (the causal chunk), ``gradient_checkpointing``, ``compile``.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from vidhash.config import config_diff, with_model_defaults

from ..config import TrainConfig, check_vidhash_sections, model_fingerprint, selection_arg
from ..data import TrainSamples
from ..objective import FlowBatch, flow_batch, noised, noisy_values, squared_error
from . import ModelFamily, unwrap


class VidHashFamily(ModelFamily):
    name = "vidhash"

    def check(self, cfg: TrainConfig) -> None:
        """``model``, ``data``, ``noise``, ``temporal_mode``, ``selection``; no validation batch yet."""
        check_vidhash_sections(cfg)
        if cfg.val_every:
            raise ValueError("val_every: the vidhash family has no validation batch yet (use vidhash eval world)")

    def build(self, cfg: TrainConfig) -> nn.Module:
        from vidhash.models.transformer_vidhash import VidHashTransformer3DModel

        return VidHashTransformer3DModel(**asdict(cfg.model))

    def fingerprint(self, cfg: TrainConfig) -> str:
        return model_fingerprint(cfg)

    def model_config(self, cfg: TrainConfig) -> dict:
        return asdict(cfg.model)

    def prepare(self, model: nn.Module, cfg: TrainConfig) -> None:
        if cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        if cfg.compile:
            for block in model.blocks:  # regional: one compiled graph per block, reused by every layer
                block.compile()

    def samples(self, cfg: TrainConfig) -> TrainSamples:
        return TrainSamples(cfg)

    def loss_count(self, items: list[dict[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
        """Values of the frames with σ > 0 (:func:`~vidhash.training.objective.noisy_values`)."""
        return noisy_values([b["sigmas"].to(device, non_blocking=True) for b in items], items[0]["frames"].shape[2:])

    def to_device(self, item: dict[str, torch.Tensor], device: torch.device) -> FlowBatch:
        return flow_batch(item, device)

    def loss(self, model: nn.Module, batch: FlowBatch, cfg: TrainConfig) -> torch.Tensor:
        """Rectified flow on chunk-causal temporal attention; the target is the model's
        ``velocity_target`` (``noise − x0``, or its ``prediction="sample"`` form)."""
        x_t, s = noised(batch)
        target = unwrap(model).velocity_target(x_t, batch.x0, batch.noise, s)
        select = {"temporal_select": selection_arg(cfg)} if cfg.temporal_mode == "selected" else {}
        pred = model(x_t, batch.sigmas * 1000.0, batch.actions, batch.poses, causal_frames=cfg.noise.chunk_frames,
                     **select).sample
        return squared_error(pred, target, s)

    def load_weights(self, model: nn.Module, folder: Path, cfg: TrainConfig) -> None:
        """A saved pipeline's transformer weights, if it was saved for the same model config
        (learned memory signatures are fitted after training by ``vidhash calibrate``: neither
        compared nor loaded)."""
        from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
        from safetensors.torch import load_file

        weights = folder / "transformer" / SAFETENSORS_WEIGHTS_NAME
        conf = folder / "transformer" / "config.json"
        if not weights.is_file() or not conf.is_file():
            raise ValueError(f"init_from={cfg.init_from}: not a saved pipeline folder (no transformer/{SAFETENSORS_WEIGHTS_NAME})")
        saved = with_model_defaults(json.loads(conf.read_text()))  # no prediction key: a velocity model
        want = dict(model.config)
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

    def save(self, model: nn.Module, folder: Path, cfg: TrainConfig) -> None:
        """A ``VidHashPipeline`` folder: the transformer and the flow-matching Euler scheduler."""
        from diffusers.schedulers import FlowMatchEulerDiscreteScheduler

        from vidhash.pipelines import VidHashPipeline

        VidHashPipeline(model, FlowMatchEulerDiscreteScheduler()).save_pretrained(str(folder))
