"""The compact CPU read (kernels/memory/cpu.py) against the reference read (kernels/memory/naive.py):
the same selection, ties included, and the same outputs to float rounding, at several fills."""
import pytest
import torch

from vidhash import HashedMemory
from vidhash import memory as memory_module
from vidhash.hashing import hamming_similarity
from vidhash.kernels.memory import cpu, naive
from vidhash.memory import COMPACT_READ_MIN_CAPACITY

TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-6}


def filled_memory(policy, num_buckets, slots, tokens, n_bits=32, dtype=torch.float64, rounded=False, seed=0):
    """A memory of batch 2 × 3 heads (head_dim 24) after ``tokens`` written in frames of 13;
    ``rounded`` keys repeat, so many entries share a signature (ties)."""
    g = torch.Generator().manual_seed(seed)
    mem = HashedMemory(num_buckets, slots, heads=3, head_dim=24, batch_size=2, policy=policy, n_bits=n_bits,
                       dtype=dtype)
    for f, start in enumerate(range(0, tokens, 13)):
        t = min(13, tokens - start)
        k = torch.randn(2, 3, t, 24, generator=g, dtype=torch.float64)
        k = (k * 0.6).round() if rounded else k
        mem.write(k.to(dtype), torch.randn(2, 3, t, 24, generator=g, dtype=torch.float64).to(dtype), f)
    return mem


def both_reads(mem, q, top_k, scale=None):
    kw = dict(hasher=mem.hasher, scale=scale, return_indices=True)
    return naive.memory_attend(mem.table, q, top_k, **kw), cpu.memory_attend_compact(mem.table, q, top_k, **kw)


def assert_same_read(ref, fast, dtype):
    (o1, l1, i1), (o2, l2, i2) = ref, fast
    assert torch.equal(i1, i2), "selections differ"
    assert torch.equal(torch.isneginf(l1), torch.isneginf(l2))
    fin = torch.isfinite(l1)
    assert l1.dtype == l2.dtype and o1.dtype == o2.dtype == dtype
    assert torch.allclose(l1[fin], l2[fin], rtol=0, atol=TOL[dtype] * 10)
    assert torch.allclose(o1.double(), o2.double(), rtol=0, atol=TOL[dtype] * 10)


@pytest.mark.parametrize("policy", ["fifo", "merge"])
@pytest.mark.parametrize("tokens", [0, 5, 16, 40, 130, 200], ids=lambda t: f"T{t}")
def test_compact_read_equals_reference_at_every_fill(policy, tokens):
    """Empty, fewer filled entries than top_k (every one read), exactly top_k, more, and full."""
    mem = filled_memory(policy, num_buckets=8, slots=8, tokens=tokens)  # 64 entries, top_k 16
    q = torch.randn(2, 3, 9, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_same_read(*both_reads(mem, q, 16, scale=0.3), torch.float64)


@pytest.mark.parametrize("n_bits", [8, 32])
@pytest.mark.parametrize("top_k", [1, 7, 40])
def test_compact_read_breaks_ties_as_the_reference(n_bits, top_k):
    """Repeated keys (equal signatures) and 8-bit signatures: many entries tie at the top_k-th
    similarity; both reads keep the lower entries."""
    mem = filled_memory("merge", num_buckets=4, slots=16, tokens=104, n_bits=n_bits, rounded=True)
    q = torch.randn(2, 3, 11, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).round()
    ref, fast = both_reads(mem, q, top_k)
    # the case is real: some query has an unselected entry as similar as its last selected one
    sim = hamming_similarity(mem.hasher(q), mem.signatures.view(2, 3, -1, mem.signatures.shape[-1]), n_bits)
    valid = (mem.counts.view(2, 3, 1, -1) > 0).expand_as(sim)
    last = sim.gather(-1, ref[2][..., -1:].clamp(min=0))
    chosen = torch.zeros_like(valid).scatter_(-1, ref[2].clamp(min=0), True)
    assert (valid & ~chosen & (sim == last)).any()
    assert_same_read(ref, fast, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compact_read_in_float32_and_bfloat16(dtype):
    mem = filled_memory("merge", num_buckets=16, slots=4, tokens=90, dtype=dtype)
    q = torch.randn(2, 3, 6, 24, generator=torch.Generator().manual_seed(3)).to(dtype)
    ref, fast = both_reads(mem, q, 10)
    assert torch.equal(ref[2], fast[2])
    assert torch.allclose(ref[1], fast[1], rtol=0, atol=1e-5)
    assert torch.allclose(ref[0].float(), fast[0].float(), rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-2)


def test_compact_read_with_unset_indices_and_a_wide_rank():
    """Without return_indices (topk's own order) the outputs are the same; a memory whose ranks
    outgrow float32 integers (more than 2^24 / 65 filled entries) ranks in int32 (an int8 matmul),
    or in float64 where torch._int_mm is missing."""
    mem = filled_memory("fifo", num_buckets=8, slots=8, tokens=200)
    q = torch.randn(2, 3, 5, 24, dtype=torch.float64)
    o1, l1 = naive.memory_attend(mem.table, q, 9, hasher=mem.hasher)
    o2, l2 = cpu.memory_attend_compact(mem.table, q, 9, hasher=mem.hasher)
    assert torch.allclose(o1, o2, rtol=0, atol=1e-12) and torch.allclose(l1, l2, rtol=0, atol=1e-12)
    q_signs, k_signs = torch.ones(2, 32), torch.randn(300_000, 32).sign()
    sel = cpu._select(q_signs, k_signs, 4, 32, True)
    sim = k_signs.sum(-1).long()  # agreement with an all-ones query
    best = torch.argsort(-sim * 300_000 + torch.arange(300_000))[:4].tolist()  # by similarity, then lower entry
    assert sel[0].tolist() == best and sel[1].tolist() == best


def test_auto_reads_big_cpu_memories_compactly_and_small_ones_by_the_reference(monkeypatch):
    calls = []
    real = cpu.memory_attend_compact
    monkeypatch.setattr(memory_module.cpu, "memory_attend_compact", lambda *a, **k: calls.append(1) or real(*a, **k))
    small = HashedMemory(COMPACT_READ_MIN_CAPACITY // 8 - 1, 8, heads=2, head_dim=16)
    big = HashedMemory(COMPACT_READ_MIN_CAPACITY // 8, 8, heads=2, head_dim=16)
    k, v = torch.randn(1, 2, 300, 16), torch.randn(1, 2, 300, 16)
    for mem in (small, big):
        mem.write(k, v, 0)
    q = torch.randn(1, 2, 5, 16)
    small.attend(q, top_k=8)
    assert calls == []
    out, lse = big.attend(q, top_k=8, mass_cap=100)
    assert calls == [1]
    ref_out, ref_lse = big.attend(q, top_k=8, mass_cap=100, backend="reference")
    assert len(calls) == 1
    assert torch.allclose(out, ref_out, rtol=0, atol=1e-5) and torch.allclose(lse, ref_lse, rtol=0, atol=1e-5)
    # gradients to q: the reference (the compact read is inference only)
    qg = q.clone().requires_grad_(True)
    big.attend(qg, top_k=8)[0].sum().backward()
    assert len(calls) == 1 and qg.grad is not None and torch.isfinite(qg.grad).all()
