"""Learned memory signatures in the model and training-time selection (``temporal_select``).

The contract: a model run over a whole clip with ``causal_frames=c, temporal_select={window_frames:
W, top_k: K}`` gives, for its last chunk, what generation computes for that chunk — window K/V
exact + a ``HashedMemory`` holding every older token (same signatures, same ``top_k``).
"""
import pytest
import torch

from vidhash.hashing import LearnedHash
from vidhash.memory import HashedMemory, MemoryRead
from vidhash.models import TemporalContext, VidHashTransformer3DModel, random_model

C, W, F = 4, 4, 16  # chunk frames, window frames, clip frames (older than the window: 8 frames = 512 tokens)


def _inputs(b=1, f=F, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, f, 3, 64, 64, generator=g)
    t = torch.rand(b, f, generator=g) * 1000
    actions = torch.randint(0, 6, (b, f), generator=g)
    poses = torch.rand(b, f, 2, generator=g) * 1024
    return x, t, actions, poses


def _learned(seed=0, bits=32):
    m = random_model("tiny", seed=seed)
    m.set_memory_hash(bits, hidden=32)
    return m.eval()


@pytest.fixture(scope="module")
def simhash_model():
    return random_model("tiny", seed=0)


@pytest.fixture(scope="module")
def learned_model():
    return _learned()


def _context_path(model, x, t, a, p, kv, top_k, num_buckets=1, n_bits=32, seed=0):
    """The last chunk as generation computes it: window K/V exact, everything older in memories."""
    n = model.tokens_per_frame(64, 64)
    f = x.shape[1]
    win0, last0 = (f - C - W) * n, (f - C) * n
    hashers = model.memory_hashers()
    ctx = []
    for layer, (k, v) in enumerate(kv):
        old = win0 // num_buckets + 1
        mem = HashedMemory(num_buckets, old if num_buckets == 1 else win0, heads=4, head_dim=32, n_bits=n_bits,
                           seed=seed + layer, hasher=None if hashers is None else hashers[layer])
        mem.write(k[:, :, :win0], v[:, :, :win0], torch.arange(win0) // n)
        ctx.append(TemporalContext(k=k[:, :, win0:last0], v=v[:, :, win0:last0], memory=mem, read=MemoryRead(top_k)))
    s = slice(f - C, f)
    return model(x[:, s], t[:, s], a[:, s], p[:, s], context=ctx).sample, ctx


@torch.no_grad()
@pytest.mark.parametrize("which,top_k", [("simhash", 16), ("simhash", 1), ("learned", 16), ("learned", 100)],
                         ids=["simhash-K16", "simhash-K1", "learned-K16", "learned-K100"])
def test_select_equals_generation_context(simhash_model, learned_model, which, top_k):
    model = simhash_model if which == "simhash" else learned_model
    x, t, a, p = _inputs()
    sel = dict(window_frames=W, top_k=top_k)
    out = model(x, t, a, p, causal_frames=C, temporal_select=sel, return_kv=True)
    ref, ctx = _context_path(model, x, t, a, p, out.kv, top_k)  # one bucket: entries in token order, same ties
    torch.testing.assert_close(out.sample[:, -C:], ref, rtol=1e-5, atol=1e-5)
    # selection is not a no-op: plain chunk-causal attention (every older token) differs
    assert not torch.allclose(out.sample[:, -C:], model(x, t, a, p, causal_frames=C).sample[:, -C:], atol=1e-4)


@torch.no_grad()
def test_select_with_all_older_tokens_equals_chunk_causal(simhash_model):
    x, t, a, p = _inputs()
    full = simhash_model(x, t, a, p, causal_frames=C).sample
    sel = simhash_model(x, t, a, p, causal_frames=C, temporal_select=dict(window_frames=W, top_k=10_000)).sample
    torch.testing.assert_close(sel, full, rtol=1e-5, atol=1e-5)
    # a many-bucket memory that holds everything, read with top_k ≥ entries, agrees too
    kv = simhash_model(x, t, a, p, causal_frames=C, return_kv=True).kv
    ref, _ = _context_path(simhash_model, x, t, a, p, kv, 10_000, num_buckets=16)
    torch.testing.assert_close(full[:, -C:], ref, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_select_uses_simhash_seed_and_bits(simhash_model):
    x, t, a, p = _inputs()
    base = dict(window_frames=W, top_k=8)
    out = simhash_model(x, t, a, p, causal_frames=C, temporal_select=base, return_kv=True)
    other = simhash_model(x, t, a, p, causal_frames=C, temporal_select=dict(base, seed=7, n_bits=64)).sample
    assert not torch.allclose(out.sample[:, -C:], other[:, -C:])
    ref, _ = _context_path(simhash_model, x, t, a, p,
                           simhash_model(x, t, a, p, causal_frames=C, temporal_select=dict(base, seed=7, n_bits=64),
                                         return_kv=True).kv, 8, n_bits=64, seed=7)
    torch.testing.assert_close(other[:, -C:], ref, rtol=1e-5, atol=1e-5)


def test_select_backward_trains_learned_hash_and_checkpointing_agrees():
    m = random_model("tiny", seed=1, num_layers=2)
    m.set_memory_hash(16, hidden=16)
    m.train()
    x, t, a, p = _inputs(f=12)
    sel = dict(window_frames=4, top_k=8)
    m(x, t, a, p, causal_frames=4, temporal_select=sel).sample.square().mean().backward()
    grads = {n: q.grad.clone() for n, q in m.named_parameters() if q.grad is not None}
    hash_grads = [g for n, g in grads.items() if "memory_hash" in n]
    assert hash_grads and any(g.abs().sum() > 0 for g in hash_grads), "the straight-through term reaches the hash"
    assert len(grads) == sum(1 for _ in m.parameters())
    m.zero_grad()
    m.enable_gradient_checkpointing()
    m(x, t, a, p, causal_frames=4, temporal_select=sel).sample.square().mean().backward()
    for n, q in m.named_parameters():
        torch.testing.assert_close(q.grad, grads[n], rtol=1e-4, atol=1e-6)
    # hash_grad=False: the hash gets no gradient from the loss
    m.zero_grad()
    m(x, t, a, p, causal_frames=4, temporal_select=dict(sel, hash_grad=False)).sample.square().mean().backward()
    assert all(q.grad is None or q.grad.abs().sum() == 0 for n, q in m.named_parameters() if "memory_hash" in n)


def test_learned_hash_saved_with_the_model(learned_model, tmp_path):
    learned_model.save_pretrained(tmp_path)
    loaded = VidHashTransformer3DModel.from_pretrained(tmp_path)
    assert loaded.config.memory_hash_bits == 32 and loaded.config.memory_hash_hidden == 32
    for a, b in zip(learned_model.memory_hashers(), loaded.memory_hashers()):
        assert isinstance(b, LearnedHash)
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb)
    x, t, a, p = _inputs(f=4)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, a, p).sample, learned_model(x, t, a, p).sample)
    # casting the model keeps the hashes in float32 (signs of low-precision projections flip)
    half = VidHashTransformer3DModel.from_pretrained(tmp_path).to(torch.bfloat16)
    assert half.patch_embed.weight.dtype == torch.bfloat16
    assert all(q.dtype == torch.float32 for h in half.memory_hashers() for q in h.parameters())
    # and a model without hashes has none (old checkpoints load unchanged)
    assert random_model("tiny").memory_hashers() is None
    learned_model_copy = _learned()
    learned_model_copy.set_memory_hash(0)
    assert learned_model_copy.memory_hashers() is None and learned_model_copy.config.memory_hash_bits == 0


def test_record_temporal_qk(simhash_model):
    x, t, a, p = _inputs(f=4)
    with torch.no_grad(), simhash_model.record_temporal_qk() as rec:
        simhash_model(x, t, a, p)
    assert len(rec) == 3 and all(len(r) == 1 for r in rec)
    q, k = rec[0][0]
    assert q.shape == k.shape == (1, 4, 4 * 64, 32)
    assert all(b.temporal._recorder is None for b in simhash_model.blocks)


@pytest.mark.parametrize("kwargs,match", [
    (dict(causal_frames=None, temporal_select=dict(window_frames=4, top_k=8)), "needs causal_frames"),
    (dict(causal_frames=4, temporal_select=dict(window_frames=4)), r"temporal_select\['top_k'\]"),
    (dict(causal_frames=4, temporal_select=dict(window_frames=4, top_k=8, topk=3)), "unknown keys"),
    (dict(causal_frames=4, temporal_select=dict(window_frames=-1, top_k=8)), "window_frames"),
    (dict(causal_frames=4, temporal_select=[4, 8]), "must be a dict"),
], ids=["no-causal-frames", "missing-top-k", "unknown-key", "negative-window", "not-a-dict"])
def test_bad_select(simhash_model, kwargs, match):
    x, t, a, p = _inputs(f=4)
    with pytest.raises(ValueError, match=match):
        simhash_model(x, t, a, p, **kwargs)


def test_select_bits_must_match_learned_hash(learned_model):
    x, t, a, p = _inputs(f=4)
    with pytest.raises(ValueError, match="learned hash has 32 bits"):
        learned_model(x, t, a, p, causal_frames=4, temporal_select=dict(window_frames=4, top_k=8, n_bits=64))


@pytest.mark.parametrize("which", ["simhash", "learned"])
def test_fused_select_equals_reference_with_gradients(which):
    """The CUDA form (one masked SDPA per chunk) == the reference (exact part ⊕ selected part by
    log-sum-exp), values and gradients (to q, k, v and the learned hash), here on CPU."""
    from vidhash.hashing import SimHash
    from vidhash.models.selection import chunk_select

    torch.manual_seed(0)
    hasher = SimHash(16, 32, heads=2, seed=1) if which == "simhash" else LearnedHash(16, 32, heads=2, hidden=8)
    q, k, v = (torch.randn(2, 2, 5 * 12, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    outs, grads = [], []
    for fused in (False, True):
        out, lse = chunk_select(q, k, v, 12, 24, 7, hasher, 0.25, fused=fused)
        assert (lse is None) == fused
        g = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                [q, k, v, *hasher.parameters()], allow_unused=True)
        outs.append(out)
        grads.append(g)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
    for a, b in zip(*grads):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10)
    if which == "learned":
        assert any(g is not None and g.abs().sum() > 0 for g in grads[1][3:])


@pytest.mark.gpu
@pytest.mark.parametrize("learned", [False, True], ids=["simhash", "learned"])
def test_select_on_cuda_matches_cpu_and_fits_48_frames(learned):
    """CUDA takes the fused path; it matches the CPU reference. Then one training step at 48 frames ×
    64 tokens (3,072 tokens, bf16 autocast) with its peak memory printed."""
    model = _learned() if learned else random_model("tiny", seed=0)
    x, t, a, p = _inputs(f=12)
    sel = dict(window_frames=4, top_k=16)
    with torch.no_grad():
        ref = model(x, t, a, p, causal_frames=4, temporal_select=sel).sample
        model.cuda()
        got = model(x.cuda(), t.cuda(), a.cuda(), p.cuda(), causal_frames=4, temporal_select=sel).sample.cpu()
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-3)
    model.train()
    x, t, a, p = (z.cuda() for z in _inputs(b=4, f=48))
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x, t, a, p, causal_frames=4, temporal_select=dict(window_frames=8, top_k=256)).sample.square().mean()
    loss.backward()
    print(f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (tiny, batch 4, 48 frames)")
    assert torch.isfinite(loss)
