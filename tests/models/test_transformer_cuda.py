"""On CUDA, attention without a memory read to merge goes through fused SDPA; it must match the
float32 reference path the CPU takes (same weights, same inputs)."""
import pytest
import torch

from vidhash.models import TemporalContext, random_model

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("rope", [False, True], ids=["abs-pos", "rope"])
@pytest.mark.parametrize("causal_frames", [None, 2])
def test_sdpa_paths_match_reference(causal_frames, rope):
    model = random_model("tiny", seed=3, rope=rope)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, 64, 64, generator=g)
    t = torch.rand(2, 6, generator=g) * 1000
    poses = torch.randn(2, 6, 2, generator=g) * 50
    ref = model(x, t, poses=poses, causal_frames=causal_frames).sample
    cuda = model.to("cuda")(x.cuda(), t.cuda(), poses=poses.cuda(), causal_frames=causal_frames).sample.cpu()
    torch.testing.assert_close(cuda, ref, atol=2e-4, rtol=1e-3)


def test_window_context_matches_reference():
    model = random_model("tiny", seed=4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 3, 64, 64, generator=g)
    t = torch.full((1, 4), 500.0)
    hd, heads, n = model.config.hidden_dim // model.config.num_heads, model.config.num_heads, 64
    ctx = [TemporalContext(k=torch.randn(1, heads, 8 * n, hd, generator=g), v=torch.randn(1, heads, 8 * n, hd, generator=g))
           for _ in range(model.config.num_layers)]
    ref = model(x, t, context=ctx).sample
    ctx_cuda = [TemporalContext(k=c.k.cuda(), v=c.v.cuda()) for c in ctx]
    cuda = model.to("cuda")(x.cuda(), t.cuda(), context=ctx_cuda).sample.cpu()
    torch.testing.assert_close(cuda, ref, atol=2e-4, rtol=1e-3)
