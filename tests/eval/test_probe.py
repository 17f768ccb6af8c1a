"""next_chunk_probe: deterministic numbers, and it tells a model that copies from one that doesn't."""
import torch

from vidhash.eval.probe import next_chunk_probe
from vidhash.models import random_model


def test_probe_is_deterministic_and_finite():
    torch.set_num_threads(1)
    m = random_model("tiny", seed=0)
    a = next_chunk_probe(m, seeds=[1_000_000], steps=2)
    b = next_chunk_probe(m, seeds=[1_000_000], steps=2)
    assert a == b and a["n"] == 4
    assert 0 < a["x0_psnr"] < 20 and 0 < a["sampled_psnr"] < 20  # random weights predict nothing


def test_probe_scores_a_perfect_velocity_high():
    """A stand-in transformer whose velocity is exactly noise − truth (it knows the answer):
    both estimates recover the truth."""
    from vidhash.data.world import ProceduralWorld  # noqa: F401  (the probe renders the same world)

    real = random_model("tiny", seed=0)
    truth_of = {}

    class Oracle(torch.nn.Module):
        config = real.config

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, t, actions, poses, causal_frames=None):
            key = tuple(poses[0, -1].tolist())
            truth = truth_of[key]
            sigma = (t[0, -1] / 1000.0).item()
            chunk = x[:, -truth.shape[1]:]
            # x_σ = (1 − σ)·truth + σ·noise  ⇒  v = noise − truth = (x_σ − truth) / σ
            v = (chunk - truth) / max(sigma, 1e-6)
            out = torch.zeros_like(x)
            out[:, -truth.shape[1]:] = v
            return type("O", (), {"sample": out})()

    # fill the oracle's answers from the same renders the probe makes
    import numpy as np

    from vidhash.data.world import ACTIONS, integrate_actions
    from vidhash.eval.probe import DIRECTIONS
    w = ProceduralWorld(seed=1_000_000, size=512, view=64)
    for name in DIRECTIONS:
        poses = integrate_actions(np.full(16, ACTIONS.index(name)), (256, 256), 4, 512).astype(np.float32)
        frames = torch.from_numpy(w.render_many(poses)).float().permute(0, 3, 1, 2)[None] / 127.5 - 1
        truth_of[tuple(torch.from_numpy(poses)[-1].tolist())] = frames[:, 12:]
    r = next_chunk_probe(Oracle(), seeds=[1_000_000], steps=3)
    assert r["x0_psnr"] > 60 and r["sampled_psnr"] > 60
