"""The training objective's shared pieces: rectified flow with per-chunk noise levels.

    x_t, s = noised(batch); loss = squared_error(model(x_t, …), target, s)

Rectified flow, the convention of ``FlowMatchEulerDiscreteScheduler`` as the pipeline uses it:
``x_σ = (1 − σ)·x0 + σ·noise``; the model predicts the velocity ``noise − x0`` from ``x_σ`` at
timestep ``σ·1000``; a scheduler step is ``x ← x + (σ_next − σ)·v``. Noise levels are per frame
but shared by each chunk of ``noise.chunk_frames`` frames (one timestep per chunk, as at
generation; :func:`vidhash.training.data.noise_levels`); a share of chunks stays clean (σ = 0,
timestep 0, no loss) and acts as context. Temporal attention is chunk-causal
(``causal_frames = chunk_frames``): a chunk sees itself and earlier chunks only, as at
generation, so later noisy chunks learn to copy what clean earlier chunks showed — in particular
the places a trajectory returns to.

What the model is called with and what its output is compared with (``velocity_target``,
``prediction="sample"``) belong to its family (:mod:`vidhash.training.families`).

Letters: b batch, f frames, c channels, h w pixel rows and columns.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import model_frames, sample_noise


@dataclass
class FlowBatch:
    """One micro-batch on the training device.

    ``x0``: clean frames ``(b, f, c, h, w)`` float32 in [−1, 1]; ``noise``: the same shape;
    ``sigmas``: per-frame noise level ``(b, f)`` in [0, 1] (0 = clean context, no loss);
    ``actions``: ``(b, f)`` int ids; ``poses``: ``(b, f, 2)`` world (x, y) of each view centre.
    """

    x0: torch.Tensor
    noise: torch.Tensor
    sigmas: torch.Tensor
    actions: torch.Tensor
    poses: torch.Tensor


def flow_batch(item: dict[str, torch.Tensor], device: torch.device) -> FlowBatch:
    """A loader batch of :class:`~vidhash.training.data.TrainSamples` on ``device``: frames scaled
    there, noise drawn there."""
    sigmas = item["sigmas"].to(device, non_blocking=True)
    return FlowBatch(
        x0=model_frames(item["frames"].to(device, non_blocking=True)),  # uint8 world clips scaled on the device
        noise=sample_noise(item["noise_seed"], item["frames"].shape[1:], device),  # drawn on the device
        sigmas=sigmas,
        actions=item["actions"].to(device, non_blocking=True),
        poses=item["poses"].to(device, non_blocking=True),
    )


def noised(batch: FlowBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, s)``: the frames at their noise levels, ``(1 − σ)·x0 + σ·noise``, and σ broadcast
    over them ``(b, f, 1, 1, 1)``."""
    s = batch.sigmas[:, :, None, None, None]
    return (1 - s) * batch.x0 + s * batch.noise, s


def squared_error(pred: torch.Tensor, target: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Sum of float32 squared errors over the frames with σ > 0 (clean context frames get none)."""
    return ((pred.float() - target) ** 2 * (s > 0)).sum()


def noisy_values(sigmas: list[torch.Tensor], frame_shape) -> torch.Tensor:
    """The values :func:`squared_error` sums over a step's micro-batches (their ``sigmas``): noisy
    frames × values per frame ``(c, h, w)``."""
    count = sum((sg > 0).sum() for sg in sigmas).float()
    return count * float(torch.Size(frame_shape).numel())
