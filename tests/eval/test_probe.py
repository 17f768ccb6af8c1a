"""next_chunk_probe: deterministic numbers, and it tells a model that copies from one that doesn't."""
import numpy as np
import torch

from vidhash.data.world import ACTIONS, ProceduralWorld, integrate_actions
from vidhash.eval.probe import DIRECTIONS, next_chunk_probe, seen_mask
from vidhash.models import random_model


class StandIn(torch.nn.Module):
    """A stand-in transformer whose clean estimate of the chunk is ``x0_of(x, poses, chunk_frames)``
    (``(1, chunk_frames, 3, h, w)``); its velocity is the one that lands there:
    x_σ = (1 − σ)·x0 + σ·noise  ⇒  v = noise − x0 = (x_σ − x0) / σ."""

    config = random_model("tiny", seed=0).config

    def __init__(self, x0_of):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))  # the probe reads device and dtype from a parameter
        self.x0_of = x0_of

    def forward(self, x, t, actions, poses, causal_frames=None):
        c = causal_frames
        sigma = (t[0, -1] / 1000.0).item()
        out = torch.zeros_like(x)
        out[:, -c:] = (x[:, -c:] - self.x0_of(x, poses, c)) / max(sigma, 1e-6)
        return type("O", (), {"sample": out})()


def test_probe_is_deterministic_and_finite():
    torch.set_num_threads(1)
    m = random_model("tiny", seed=0)
    a = next_chunk_probe(m, seeds=[1_000_000], steps=2)
    b = next_chunk_probe(m, seeds=[1_000_000], steps=2)
    assert a == b and a["n"] == 4
    assert 0 < a["x0_psnr"] < 20 and 0 < a["sampled_psnr"] < 20  # random weights predict nothing


def test_probe_scores_a_perfect_velocity_high():
    """A stand-in that knows the answer (the same renders the probe makes): both estimates recover the truth."""
    truth_of = {}
    w = ProceduralWorld(seed=1_000_000, size=512, view=64)
    for name in DIRECTIONS:
        poses = integrate_actions(np.full(16, ACTIONS.index(name)), (256, 256), 4, 512).astype(np.float32)
        frames = torch.from_numpy(w.render_many(poses)).float().permute(0, 3, 1, 2)[None] / 127.5 - 1
        truth_of[tuple(torch.from_numpy(poses)[-1].tolist())] = frames[:, 12:]
    oracle = StandIn(lambda x, poses, c: truth_of[tuple(poses[0, -1].tolist())])
    r = next_chunk_probe(oracle, seeds=[1_000_000], steps=3)
    assert r["x0_psnr"] > 60 and r["sampled_psnr"] > 60


def test_seen_mask_follows_the_render():
    """The pixels the mask calls seen are exactly the ones the moved render repeats."""
    w = ProceduralWorld(seed=1_000_000, size=512, view=64)
    a = w.render_many(np.array([[256.0, 256.0]], dtype=np.float32))[0]
    for off in ((8, 0), (-12, 0), (0, 4), (0, -20), (6, -6), (511, 0)):  # 511: one pixel left, round the torus
        b = w.render_many(np.array([[256.0 + off[0], 256.0 + off[1]]], dtype=np.float32) % 512)[0]
        m = seen_mask(off, 64, 512).numpy()
        dx, dy = ((o + 256) % 512 - 256 for o in off)
        ys, xs = np.nonzero(m)
        assert m.sum() == (64 - abs(dy)) * (64 - abs(dx))
        assert np.array_equal(b[ys, xs], a[ys + dy, xs + dx])


def test_probe_splits_copying_from_inventing():
    """A model that copies the last context frame perfectly and invents grey: seen ≫ new."""

    def copy_last(x, poses, c):
        last, out = x[:, -c - 1], torch.zeros_like(x[:, -c:])  # grey (0) where the last frame shows nothing
        for k in range(c):
            off = (poses[0, -c + k] - poses[0, -c - 1]).tolist()
            dx, dy = (int(round(o)) for o in off)
            ys, xs = torch.nonzero(seen_mask(off, last.shape[-1], 512), as_tuple=True)
            out[:, k, :, ys, xs] = last[:, :, ys + dy, xs + dx]
        return out

    r = next_chunk_probe(StandIn(copy_last), seeds=[1_000_000], steps=3)
    assert r["seen_psnr"] > 60 and r["new_psnr"] < 20 and np.isfinite(r["new_psnr"])
