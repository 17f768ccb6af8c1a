"""A quick probe of a world model's next-chunk prediction (minutes of GPU are scarce; this takes
seconds): ground-truth context frames of a held-out world along a straight camera path, then
the next chunk predicted two ways —

* ``x0_psnr``: the one-step clean estimate from pure noise (σ = 1), ``x_1 − v``: how well the
  model copies what the context already shows (the next frames are the context shifted by a
  few pixels, plus a strip of new ground);
* ``sampled_psnr``: the chunk sampled with ``steps`` Euler steps from the same noise, as
  generation does.

PSNR in dB over the chunk (pixels in [−1, 1]), mean over ``seeds`` × 4 directions. The sampled
chunk is also scored apart on the pixels the last context frame shows (``seen_psnr``: copying —
the world renders as an exact translation, so a perfect copier scores ∞ there) and on the new
strips (``new_psnr``: inventing); PSNR per frame, then the mean.

    python -c "from vidhash.eval.probe import next_chunk_probe; from vidhash.models import random_model; print(next_chunk_probe(random_model('tiny'), seeds=[1000000]))"
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.world import ACTIONS, ProceduralWorld, integrate_actions

DIRECTIONS = ("right", "down", "left", "up")


@torch.no_grad()
def next_chunk_probe(transformer, seeds=(1_000_000, 1_000_001), context_frames: int = 12, chunk_frames: int = 4,
                     steps: int = 4, step_px: int = 4, world_size: int = 512, device=None, noise_seed: int = 0) -> dict:
    """``{"x0_psnr", "sampled_psnr", "n"}`` for ``transformer`` (a ``VidHashTransformer3DModel``)."""
    device = torch.device(device) if device is not None else next(transformer.parameters()).device
    dtype = next(transformer.parameters()).dtype
    side = transformer.config.sample_size
    f = context_frames + chunk_frames
    x0s, samples, seen, new = [], [], [], []
    for seed in seeds:
        world = ProceduralWorld(seed=int(seed), size=world_size, view=side)
        for d, name in enumerate(DIRECTIONS):
            ids = np.full(f, ACTIONS.index(name), dtype=np.int64)
            poses = integrate_actions(ids, (world_size / 2, world_size / 2), step_px, world_size).astype(np.float32)
            truth = torch.from_numpy(world.render_many(poses)).float().permute(0, 3, 1, 2)[None] / 127.5 - 1
            truth = truth.to(device)
            acts = torch.from_numpy(ids)[None].to(device).clamp(max=transformer.config.num_actions)
            pos = torch.from_numpy(poses)[None].to(device)
            g = torch.Generator().manual_seed(noise_seed * 1000 + d)
            noise = torch.randn((1, chunk_frames) + truth.shape[2:], generator=g).to(device)
            ctx = truth[:, :context_frames]

            def velocity(x, sigma):
                t = torch.zeros(1, f, device=device)
                t[:, context_frames:] = sigma * 1000.0
                inp = torch.cat([ctx, x], 1).to(dtype)
                return transformer(inp, t.to(dtype), acts, pos, causal_frames=chunk_frames).sample[:, context_frames:].float()

            x0s.append(_psnr(noise - velocity(noise, 1.0), truth[:, context_frames:]))
            x, sig = noise, np.linspace(1.0, 0.0, steps + 1)
            for i in range(steps):
                x = x + float(sig[i + 1] - sig[i]) * velocity(x, float(sig[i]))
            samples.append(_psnr(x.clamp(-1, 1), truth[:, context_frames:]))
            for k in range(chunk_frames):
                vis = seen_mask(poses[context_frames + k] - poses[context_frames - 1], side, world_size).to(device)
                pred, true = x[0, k].clamp(-1, 1), truth[0, context_frames + k]
                if vis.any():
                    seen.append(_psnr(pred[:, vis], true[:, vis]))
                if (~vis).any():
                    new.append(_psnr(pred[:, ~vis], true[:, ~vis]))
    return {"x0_psnr": float(np.mean(x0s)), "sampled_psnr": float(np.mean(samples)),
            "seen_psnr": float(np.mean(seen)) if seen else float("nan"),
            "new_psnr": float(np.mean(new)) if new else float("nan"), "n": len(x0s)}


def seen_mask(offset, side: int, world_size: int) -> torch.Tensor:
    """(side, side) bool: the pixels of a view moved by ``offset`` = (dx, dy) world pixels (shortest
    way round the torus) that the unmoved view also shows. Views are centred on their pose, x to the
    right and y down, as ``ProceduralWorld.render_many`` draws them."""
    dx, dy = (int(round((float(o) + world_size / 2) % world_size - world_size / 2)) for o in offset)
    xs = torch.arange(side)
    in_x = (xs + dx >= 0) & (xs + dx < side)
    in_y = (xs + dy >= 0) & (xs + dy < side)
    return in_y[:, None] & in_x[None, :]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 10 * np.log10(4.0 / max(mse, 1e-12))
