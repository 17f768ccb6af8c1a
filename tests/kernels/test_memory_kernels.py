"""HashedMemory kernels (FIFO write, top-k selection, attention fwd/bwd) vs the reference.

Writes compare every buffer bit for bit. Keys are drawn with no SimHash projection within
``TOL`` of 0, so the kernel's signatures (another summation order) equal the reference's;
reads take the query signatures from the reference hasher where the test is about selection.
"""
import pytest
import torch

from vidhash.hashing import LearnedHash
from vidhash.kernels.memory.ops import memory_attend, memory_select, memory_write_fifo
from vidhash.memory import HashedMemory

from memory_helpers import DEV, away_from_zero, make, routing, twin  # tests/kernels/memory_helpers.py

RTOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def fill(mem: HashedMemory, writes: int, tokens: int, dtype=torch.float32):
    cfg, dev = mem.config, mem.keys.device
    for f in range(writes):
        shape = (cfg.batch_size, cfg.heads, tokens, cfg.head_dim)
        k = away_from_zero(torch.randn(shape).to(dev), mem.hasher).to(dtype)
        mem.write(k, torch.randn(shape).to(dev, dtype), f, backend="reference")


def sorted_ref_indices(ref_idx: torch.Tensor) -> torch.Tensor:
    """Reference indices (rank order) → entry order with the -1s last."""
    big = torch.iinfo(torch.int64).max
    s = torch.sort(torch.where(ref_idx >= 0, ref_idx, big), -1).values
    return torch.where(s == big, -1, s)


# --------------------------------------------------------------------------------------------
# write
# --------------------------------------------------------------------------------------------
WRITE_CASES = [
    pytest.param(2, 3, 29, 40, 7, 3, 32, id="B2-H3-T29-D40-U7-S3-bits32"),
    pytest.param(1, 2, 77, 24, 5, 4, 45, id="B1-H2-T77-D24-U5-S4-bits45"),
    pytest.param(1, 1, 13, 16, 37, 2, 70, id="B1-H1-T13-D16-U37-S2-bits70"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("b,h,t,d,u,s,n_bits", WRITE_CASES)
def test_fifo_write_equals_reference(b, h, t, d, u, s, n_bits, dtype):
    ref = make(u, s, h, d, n_bits, b, dtype)
    ker = twin(ref)
    for f in range(3):  # evictions within one write and across writes
        k = away_from_zero(torch.randn(b, h, t, d).to(DEV), ref.hasher).to(dtype)
        v = torch.randn(b, h, t, d).to(DEV, dtype)
        frames = torch.arange(t, device=DEV) + 100 * f if f % 2 else f
        ref.write(k, v, frames, backend="reference")
        ker.write(k, v, frames, backend="triton")
        for (name, a), (_, bb) in zip(ref.named_buffers(), ker.named_buffers()):
            assert torch.equal(a, bb), f"buffer {name} differs after write {f}"


def test_fifo_write_non_contiguous_input_and_float_memory_from_bf16():
    ref = make(dtype=torch.float32)
    ker = twin(ref)
    k = away_from_zero(torch.randn(2, 3, 21, 40).to(DEV), ref.hasher).to(torch.bfloat16)
    v = torch.randn(2, 21, 3, 40).to(DEV, torch.bfloat16).transpose(1, 2)  # non-contiguous
    ref.write(k, v, 4, backend="reference")
    memory_write_fifo(ker.table, k, v, torch.full((21,), 4, device=DEV), **routing(ker))
    for (name, a), (_, bb) in zip(ref.named_buffers(), ker.named_buffers()):
        assert torch.equal(a, bb), name


# --------------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("top_k,n_bits", [
    pytest.param(1, 32, id="B1-H2-N9-C21-k1-bits32"),
    pytest.param(5, 70, id="B1-H2-N9-C21-k5-bits70"),
    pytest.param(16, 32, id="B1-H2-N9-C21-k16-bits32"),
    pytest.param(40, 70, id="B1-H2-N9-C21-k40-bits70-all"),
])
def test_selection_equals_reference(top_k, n_bits):
    mem = make(n_bits=n_bits, heads=2, batch_size=1)
    fill(mem, 2, 9)  # some buckets partly empty
    q = torch.randn(1, 2, 9, 40).to(DEV)
    q_sig = mem.hasher(q, role="query")
    _, _, ref_idx = mem.attend(q, top_k, return_indices=True, backend="reference")
    want = sorted_ref_indices(ref_idx)
    # cap=3: most queries take the full scan; probe_top2: the probe's tighter bound (on for k ≥ BC/4)
    for cap, stride, top2 in [(None, 2, True), (None, 2, False), (None, 1, True), (3, 2, True)]:
        got = memory_select(mem.table, q, top_k, hasher=mem.hasher, q_sig=q_sig, cap=cap, probe_stride=stride, probe_top2=top2)
        assert torch.equal(got.long(), want), (cap, stride, top2)


def test_candidates_only_returns_the_first_stage():
    # the benchmark times the candidates kernel alone: ids of candidate chunks per query row,
    # and per row their count; full selection must still contain only entries of those chunks
    mem = make(n_bits=32, heads=2, batch_size=1)
    fill(mem, 2, 9)
    q = torch.randn(1, 2, 9, 40).to(DEV)
    q_sig = mem.hasher(q, role="query")
    cand, ncand = memory_select(mem.table, q, 4, hasher=mem.hasher, q_sig=q_sig, _candidates_only=True)
    assert cand.dtype == ncand.dtype == torch.int32
    assert ncand.shape == (2 * 9,) and cand.shape[0] == 2 * 9
    assert int(ncand.min()) >= 1  # a top-4 of a non-empty memory needs at least one chunk


@pytest.mark.parametrize("top_k", [4, 8, 16])
def test_selection_with_many_chunks_equals_reference(top_k):
    """A memory of many probe chunks (C=192 against 16-wide tiles): the probe's bound decides
    which groups are candidates; both bounds must keep exactly the reference's entries."""
    mem = make(num_buckets=24, slots=8, heads=1, batch_size=1)
    fill(mem, 6, 40)
    q = torch.randn(1, 1, 5, 40).to(DEV)
    q_sig = mem.hasher(q, role="query")
    _, _, ref_idx = mem.attend(q, top_k, return_indices=True, backend="reference")
    want = sorted_ref_indices(ref_idx)
    for top2 in (True, False):
        got = memory_select(mem.table, q, top_k, hasher=mem.hasher, q_sig=q_sig, probe_top2=top2)
        assert torch.equal(got.long(), want), top2


def test_selection_ties_go_to_the_lower_entry():
    """Many entries with one signature: the k kept are the lowest entries among equals."""
    mem = make(num_buckets=5, slots=8, heads=2, batch_size=1)
    one = away_from_zero(torch.randn(1, 2, 1, 40).to(DEV), mem.hasher)
    for f in range(3):
        k = one.expand(1, 2, 6, 40) * (1 + torch.rand(1, 1, 6, 1).to(DEV))  # same direction: same signature
        mem.write(torch.cat([k, away_from_zero(torch.randn(1, 2, 5, 40).to(DEV), mem.hasher)], 2),
                  torch.randn(1, 2, 11, 40).to(DEV), f, backend="reference")
    q = torch.randn(1, 2, 6, 40).to(DEV)
    q[:, :, :3] = one  # these queries tie with all the copies
    _, _, ref_idx = mem.attend(q, 4, return_indices=True, backend="reference")
    got = memory_select(mem.table, q, 4, hasher=mem.hasher, q_sig=mem.hasher(q, role="query"))
    assert torch.equal(got.long(), sorted_ref_indices(ref_idx))


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------
ATTEND_CASES = [
    pytest.param(2, 3, 11, 40, 7, 3, 5, id="B2-H3-N11-D40-U7-S3-k5"),
    pytest.param(1, 2, 13, 24, 5, 4, 20, id="B1-H2-N13-D24-U5-S4-k20-all"),
    pytest.param(1, 1, 5, 64, 9, 2, 7, id="B1-H1-N5-D64-U9-S2-k7"),
]


@pytest.mark.parametrize("q_dtype,mem_dtype", [
    (torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16),
], ids=["q-fp32-mem-fp32", "q-bf16-mem-fp32", "q-bf16-mem-bf16"])
@pytest.mark.parametrize("b,h,n,d,u,s,top_k", ATTEND_CASES)
def test_attend_forward_and_grad_equal_reference(b, h, n, d, u, s, top_k, q_dtype, mem_dtype):
    mem = make(u, s, h, d, 32, b, mem_dtype)
    fill(mem, 2, 6, mem_dtype)
    q0 = torch.randn(b, h, n, d).to(DEV, q_dtype)
    outs, grads = [], []
    go, gl = torch.randn(b, h, n, d).to(DEV), torch.randn(b, h, n).to(DEV)
    for backend in ("reference", "triton"):
        q = q0.clone().requires_grad_(True)
        out, lse, idx = mem.attend(q, top_k, return_indices=True, backend=backend)
        ((out.float() * go).sum() + (lse * gl).sum()).backward()
        outs.append((out, lse, idx))
        grads.append(q.grad)
    (ro, rl, ri), (ko, kl, ki) = outs
    assert ko.dtype == ro.dtype and kl.dtype == rl.dtype == torch.float32
    assert torch.equal(ki, ri), "indices (reference order) differ"
    tol = RTOL[q_dtype] if q_dtype != torch.float32 or mem_dtype != torch.float32 else RTOL[torch.float32]
    assert rel_err(ko, ro) < tol and rel_err(kl, rl) < RTOL[torch.float32]
    assert rel_err(grads[1], grads[0]) < max(tol, 1e-4)


def test_attend_with_merged_counts_uses_log_count_bias():
    torch.manual_seed(5)
    mem = HashedMemory(num_buckets=3, slots=2, heads=2, head_dim=16, policy="merge", seed=1, device=DEV)
    for f in range(3):
        mem.write(torch.randn(1, 2, 7, 16).to(DEV), torch.randn(1, 2, 7, 16).to(DEV), f)
    assert (mem.counts > 1).any()
    q = torch.randn(1, 2, 5, 16).to(DEV).requires_grad_(True)
    ref_out, ref_lse = mem.attend(q, 4, backend="reference")
    out, lse = memory_attend(mem.table, q, 4, hasher=mem.hasher)
    assert rel_err(out, ref_out) < 2e-5 and rel_err(lse, ref_lse) < 2e-5
    (g1,) = torch.autograd.grad(ref_out.sum() + ref_lse.sum(), q)
    (g2,) = torch.autograd.grad(out.sum() + lse.sum(), q)
    assert rel_err(g2, g1) < 1e-4


def test_empty_memory_reads_nothing():
    mem = make()
    q = torch.randn(2, 3, 5, 40).to(DEV).requires_grad_(True)
    out, lse = mem.attend(q, 4, backend="triton")
    assert (out == 0).all() and torch.isneginf(lse).all()
    out.sum().backward()
    assert (q.grad == 0).all()


# --------------------------------------------------------------------------------------------
# backend switch
# --------------------------------------------------------------------------------------------
def test_backend_switch():
    """The backend choice on CPU tensors (no kernel runs: each forced case is refused first)."""
    mem = make(device="cpu")
    q = torch.randn(2, 3, 4, 40)
    assert mem._backend("auto", "attend", q) == "reference"  # CPU tensors: the reference, quietly
    assert mem._backend("triton", "attend", q) == "triton"
    # merge writes have a kernel for SimHash memories (tests/kernels/test_memory_merge_kernel.py);
    # a learned hasher's MLP cannot run in it: forcing the kernel is an error naming that
    merge = HashedMemory(num_buckets=7, slots=3, heads=3, head_dim=40, batch_size=2, policy="merge",
                         hasher=LearnedHash(40, 32, heads=3))
    with pytest.raises(ValueError, match="SimHash"):
        merge.write(q, q, 0, backend="triton")
    with pytest.raises(ValueError, match="float32, bfloat16 and float16"):
        make(dtype=torch.float64, device="cpu").attend(q.double(), 3, backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        mem.attend(q, 3, backend="cuda")


# --------------------------------------------------------------------------------------------
# GPU: benchmark-sized shapes
# --------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("top_k", [64, 256])
def test_gpu_read_matches_reference_at_scale(top_k):
    torch.manual_seed(0)
    mem = HashedMemory(num_buckets=4096, slots=16, heads=4, head_dim=64, dtype=torch.bfloat16, device="cuda")
    for f in range(48):  # 48 frames × 1560 tokens ≈ 75K tokens into 65,536 entries
        k = torch.randn(1, 4, 1560, 64, device="cuda", dtype=torch.bfloat16)
        mem.write(k, torch.randn_like(k), f, backend="triton")
    q = torch.randn(1, 4, 300, 64, device="cuda", dtype=torch.bfloat16)
    q_sig = mem.hasher(q, role="query")
    _, _, ref_idx = mem.attend(q, top_k, return_indices=True, backend="reference")
    got = memory_select(mem.table, q, top_k, hasher=mem.hasher, q_sig=q_sig)
    assert torch.equal(got.long(), sorted_ref_indices(ref_idx))
    qq = q.clone().requires_grad_(True)
    out, lse = memory_attend(mem.table, qq, top_k, hasher=mem.hasher, q_sig=q_sig)
    ro, rl = mem.attend(q.clone().requires_grad_(True), top_k, backend="reference")
    assert rel_err(out, ro) < 2e-2 and rel_err(lse, rl) < 1e-4


@pytest.mark.gpu
def test_gpu_write_matches_reference_at_scale():
    torch.manual_seed(1)
    ref = HashedMemory(num_buckets=512, slots=8, heads=12, head_dim=64, device="cuda")
    ker = HashedMemory(num_buckets=512, slots=8, heads=12, head_dim=64, device="cuda")
    for f in range(4):
        k = away_from_zero(torch.randn(1, 12, 1560, 64, device="cuda"), ref.hasher)
        v = torch.randn_like(k)
        ref.write(k, v, f, backend="reference")
        ker.write(k, v, f, backend="triton")
    for (name, a), (_, b) in zip(ref.named_buffers(), ker.named_buffers()):
        assert torch.equal(a, b), name


@pytest.mark.gpu
def test_gpu_attend_grad_matches_reference():
    torch.manual_seed(2)
    mem = HashedMemory(num_buckets=256, slots=16, heads=4, head_dim=64, device="cuda")
    for f in range(6):
        k = torch.randn(1, 4, 900, 64, device="cuda")
        mem.write(k, torch.randn_like(k), f, backend="triton")
    q0 = torch.randn(1, 4, 200, 64, device="cuda")
    res = []
    for backend in ("reference", "triton"):
        q = q0.clone().requires_grad_(True)
        out, lse = mem.attend(q, 64, backend=backend)
        (out.square().sum() + lse.sum()).backward()
        res.append((out, lse, q.grad))
    for a, b in zip(res[1], res[0]):
        assert rel_err(a, b) < 1e-4
