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


def test_seen_mask_follows_the_render():
    """The pixels the mask calls seen are exactly the ones the moved render repeats."""
    import numpy as np

    from vidhash.data.world import ProceduralWorld
    from vidhash.eval.probe import seen_mask

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
    import numpy as np

    from vidhash.eval.probe import seen_mask

    real = random_model("tiny", seed=0)

    class Copier(torch.nn.Module):
        config = real.config

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, t, actions, poses, causal_frames=None):
            c = causal_frames
            last, out = x[:, -c - 1], torch.zeros_like(x)
            sigma = (t[0, -1] / 1000.0).item()
            for k in range(c):
                off = (poses[0, -c + k] - poses[0, -c - 1]).tolist()
                dx, dy = (int(round(o)) for o in off)
                target = torch.zeros_like(last)  # grey (0) where the last frame shows nothing
                vis = seen_mask(off, last.shape[-1], 512)
                ys, xs = torch.nonzero(vis, as_tuple=True)
                target[:, :, ys, xs] = last[:, :, ys + dy, xs + dx]
                noise_est = (x[:, -c + k] - (1 - sigma) * target) / max(sigma, 1e-6)
                out[:, -c + k] = noise_est - target  # v = noise − x0 with x0 = target
            return type("O", (), {"sample": out})()

    r = next_chunk_probe(Copier(), seeds=[1_000_000], steps=3)
    assert r["seen_psnr"] > 60 and r["new_psnr"] < 20 and np.isfinite(r["new_psnr"])
