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
    if context is None or SIG == 0:
        return orig(self, state, latents, act, pos, chunk_poses, memory, trajectory, context, frame_inputs, graphs)
    self._committing = True
    c = latents.shape[1]
    g = torch.Generator().manual_seed(1234 + state.frame_index)
    noise = torch.randn(latents.shape, generator=g).to(latents)
    x = (1 - SIG) * latents + SIG * noise
    t = torch.full((1, c), SIG * 1000.0, dtype=latents.dtype)
    kv = self.transformer(x, t, act, pos, context=context, return_kv=True, frame_inputs=frame_inputs).kv
    state.push(kv, state.frame_index)
    state.top_k = memory.top_k
    state.frame_index += c
    state.pose = [float(chunk_poses[-1][0]), float(chunk_poses[-1][1])]
    if trajectory is not None:
        state.trajectory = trajectory.state_dict()
    self._committing = False


VidHashPipeline._commit = patched
from vidhash.cli import main
sys.exit(main(sys.argv[2:]))
