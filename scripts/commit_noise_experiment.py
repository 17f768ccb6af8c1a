"""Experiment (2026-11-30): commit generated chunks at noise level SIGMA instead of clean (t = 0), the
context-noise trick of diffusion forcing, then generate as `vidhash generate`. Not a pipeline option:
it made invented ground less real and revisits worse (BENCHMARKS.md, "Committing generated chunks
at a small noise level").
    python scripts/commit_noise_experiment.py SIGMA generate --model models/world-tiny-v1 ...
"""
import sys

import torch

from vidhash.pipelines.pipeline_vidhash import VidHashPipeline

SIG = float(sys.argv[1])
orig = VidHashPipeline._commit


def patched(self, state, latents, act, pos, chunk_poses, memory, trajectory, context=None, frame_inputs=None, graphs=None):
    """Generated chunks (the pipeline passes their context; prompt chunks come without) go through the
    commit pass noised to SIGMA, with timestep SIGMA * 1000; the rest of the commit is the pipeline's."""
    if context is None or SIG == 0:
        return orig(self, state, latents, act, pos, chunk_poses, memory, trajectory, context, frame_inputs, graphs)
    g = torch.Generator().manual_seed(1234 + state.frame_index)
    noised = (1 - SIG) * latents + SIG * torch.randn(latents.shape, generator=g).to(latents)
    model, forward = self.transformer, self.transformer.forward

    def noisy_forward(x, t, *args, **kwargs):
        return forward(noised, torch.full_like(t, SIG * 1000.0), *args, **kwargs)

    model.forward = noisy_forward  # the eager commit path calls self.transformer(latents, zero, ...)
    try:
        return orig(self, state, latents, act, pos, chunk_poses, memory, trajectory, context, frame_inputs, None)
    finally:
        del model.forward


VidHashPipeline._commit = patched
from vidhash.cli import main

sys.exit(main(sys.argv[2:]))
