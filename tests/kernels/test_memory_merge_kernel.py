"""The merge-policy write kernel (``ops.memory_write_merge``) against its reference ``naive.memory_write_merge``.

Every buffer is compared bit for bit (keys, values, signatures, frames, counts, bucket_writes)
after several writes that overflow the buckets many times over (several tokens per bucket per
write, so tokens of one bucket merge one after the other within a write). The kernel keeps the
reference's float operations and their order — ``(old·cnt + x) / (cnt + 1)``, one rounding
each, no FMA contraction, IEEE division, round-to-nearest-even casts — so keys and values are
equal, not close. Signatures are equal except where a projection lies within float rounding of
0 (the kernel sums the ``d`` products in another order than torch's matmul); the CPU tests'
data do not hit that (they are deterministic), and the GPU tests at full size use SimHash planes
with one nonzero per bit ("axis" planes: every projection is exact in any order) for the
bit-for-bit check, plus the memory's random planes with a bound on the entries that differ.
"""
import pytest
import torch

import vidhash.memory as vm
from vidhash.hashing import LearnedHash
from vidhash.kernels.memory.ops import memory_write_merge
from vidhash.memory import HashedMemory

import memory_helpers as helpers  # tests/kernels/memory_helpers.py
from memory_helpers import DEV, away_from_zero, routing, twin

BUFFERS = ("keys", "values", "signatures", "frames", "counts", "bucket_writes")


def make(*args, **kwargs) -> HashedMemory:
    return helpers.make(*args, policy="merge", **kwargs)


def assert_same(ker: HashedMemory, ref: HashedMemory, where: str = "") -> None:
    for name in BUFFERS:
        a, b = getattr(ker, name), getattr(ref, name)
        if not torch.equal(a, b):
            bad = (a != b).reshape(a.shape[0], a.shape[1], a.shape[2], -1).any(-1).nonzero()
            raise AssertionError(f"{where}{name} differs at {bad.shape[0]} (b, h, bucket[, slot]) places, first {bad[:4].tolist()}")


def write_both(ref, ker, k, v, frames, backend="triton"):
    ref.write(k, v, frames, backend="reference")
    if backend == "kernel":
        f = frames if torch.is_tensor(frames) else torch.full((k.shape[2],), frames, dtype=torch.int64, device=k.device)
        memory_write_merge(ker.table, k, v, f, **routing(ker))
    else:
        ker.write(k, v, frames, backend=backend)


# --------------------------------------------------------------------------------------------
# tiny odd shapes, several tokens per bucket and write (on CUDA, else the interpreter on CPU; the
# inputs are drawn on the CPU: the same numbers on both)
# --------------------------------------------------------------------------------------------
CASES = [  # b, h, t, d, buckets, slots, n_bits: t tokens per write into buckets × slots entries per row
    pytest.param(2, 3, 11, 12, 3, 2, 32, id="B2-H3-T11-D12-U3-S2-bits32"),
    pytest.param(2, 3, 7, 20, 2, 3, 45, id="B2-H3-T7-D20-U2-S3-bits45"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("b,h,t,d,u,s,n_bits", CASES)
def test_merge_write_equals_reference(b, h, t, d, u, s, n_bits, dtype):
    ref = make(u, s, h, d, n_bits, b, dtype)
    ker = twin(ref)
    for f in range(3):  # the first write fills and overflows, the next ones merge only
        k = away_from_zero(torch.randn(b, h, t, d).to(DEV), ref.hasher).to(dtype)
        v = torch.randn(b, h, t, d).to(DEV, dtype)
        write_both(ref, ker, k, v, f)
        assert_same(ker, ref, f"write {f}: ")
    assert int(ref.counts.max()) >= 3  # entries merged several times
    assert int((ref.bucket_writes >= 2 * s).sum()) > 0


def test_merge_write_bf16_into_float32_memory():
    """bf16 keys into a float32 memory: the mean is float32, the merged key's signature is that of
    its bf16 rounding (as the reference hashes ``new_k.to(k.dtype)``)."""
    ref = make(3, 2, 3, 12, 32, 2, torch.float32)
    ker = twin(ref)
    for f in range(3):
        k = away_from_zero(torch.randn(2, 3, 9, 12).to(DEV), ref.hasher).bfloat16()
        write_both(ref, ker, k, torch.randn(2, 3, 9, 12).to(DEV).bfloat16(), f)
        assert_same(ker, ref, f"write {f}: ")


def test_merge_write_float64_memory():
    """float64 memories accumulate in float64, as the reference does."""
    ref = make(3, 2, 3, 12, 32, 2, torch.float64)
    ker = twin(ref)
    for f in range(3):
        k = away_from_zero(torch.randn(2, 3, 9, 12, dtype=torch.float64).to(DEV), ref.hasher)
        write_both(ref, ker, k, torch.randn(2, 3, 9, 12, dtype=torch.float64).to(DEV), f)
        assert_same(ker, ref, f"write {f}: ")
    assert ref.keys.dtype == torch.float64 and int(ref.counts.max()) >= 3


def test_merge_write_per_token_frames_and_strided_inputs():
    """Per-token frame indices (not monotone: the entry keeps the largest), k and v as strided
    views, and tokens written directly with the kernel function."""
    ref = make(2, 2, 3, 12, 32, 2)
    ker = twin(ref)
    for f in range(3):
        big = torch.zeros(2, 3, 10, 24, device=DEV)
        big[..., :12] = away_from_zero(torch.randn(2, 3, 10, 12).to(DEV), ref.hasher)
        k = big[..., :12]  # token stride 24
        v = torch.randn(2, 10, 3, 12).to(DEV).transpose(1, 2)  # (b, h, t, d) with head/token strides swapped
        frames = (torch.randperm(10) * (f + 1) - 3).to(DEV)
        write_both(ref, ker, k, v, frames, backend="kernel")
        assert_same(ker, ref, f"write {f}: ")


def test_merge_write_single_bucket_single_slot():
    """Every token of a row into one bucket of one slot: one long sequential chain per row."""
    ref = make(1, 1, 3, 12, 32, 2)
    ker = twin(ref)
    for f in range(2):
        k = away_from_zero(torch.randn(2, 3, 8, 12).to(DEV), ref.hasher)
        write_both(ref, ker, k, torch.randn(2, 3, 8, 12).to(DEV), f)
        assert_same(ker, ref, f"write {f}: ")
    assert ref.counts.flatten().tolist() == [16] * 6


def test_merge_write_empty_and_few_tokens():
    ref = make(5, 2, 3, 12, 32, 2)
    ker = twin(ref)
    empty = torch.randn(2, 3, 0, 12).to(DEV)
    memory_write_merge(ker.table, empty, empty, torch.zeros(0, dtype=torch.int64, device=DEV), **routing(ker))
    ker.write(empty, empty, 0, backend="triton")
    assert_same(ker, ref)
    k = away_from_zero(torch.randn(2, 3, 2, 12).to(DEV), ref.hasher)  # fewer tokens than buckets: most programs idle
    write_both(ref, ker, k, torch.randn(2, 3, 2, 12).to(DEV), 4)
    assert_same(ker, ref)


def test_merge_kernel_refuses_what_it_does_not_cover():
    """On the kernels' device: off the interpreter, a CPU tensor is refused first (by the device check)."""
    lh = LearnedHash(12, n_bits=32, heads=3).to(DEV)
    mem = HashedMemory(3, 2, 3, 12, n_bits=32, batch_size=2, policy="merge", hasher=lh, device=DEV)
    k = torch.randn(2, 3, 5, 12).to(DEV)
    zeros = torch.zeros(5, dtype=torch.int64, device=DEV)
    with pytest.raises(ValueError, match="SimHash only"):
        memory_write_merge(mem.table, k, k, zeros, **routing(mem))
    with pytest.raises(ValueError, match="backend='triton' is unavailable.*SimHash only"):
        mem.write(k, k, 0, backend="triton")
    simhash = make(3, 2, 3, 12)
    with pytest.raises(ValueError, match="MemoryTable"):  # the memory's tensors, not the memory
        memory_write_merge(simhash, k, k, zeros, **routing(simhash))
    with pytest.raises(ValueError, match="head_dim"):
        memory_write_merge(simhash.table, torch.randn(2, 3, 5, 8).to(DEV), torch.randn(2, 3, 5, 8).to(DEV), zeros,
                           **routing(simhash))


def test_auto_backend_routes_merge_writes(monkeypatch):
    """``auto`` on CUDA tensors: merge + SimHash → the kernel (float64 included); merge + LearnedHash
    → the reference, quietly; FIFO float64 → the reference. (resolve_backend is made to answer as
    on a GPU; no kernel runs here: CPU tensors on every machine.)"""
    monkeypatch.setattr(vm, "resolve_backend", lambda backend, *t: "triton" if backend in ("auto", "triton") else backend)
    k = torch.randn(2, 3, 5, 12)
    cpu = dict(device="cpu")
    assert make(3, 2, 3, 12, **cpu)._backend("auto", "write", k, k) == "triton"
    assert make(3, 2, 3, 12, dtype=torch.bfloat16, **cpu)._backend("auto", "write", k.bfloat16(), k.bfloat16()) == "triton"
    assert make(3, 2, 3, 12, dtype=torch.float64, **cpu)._backend("auto", "write", k.double(), k.double()) == "triton"
    lh = LearnedHash(12, n_bits=32, heads=3)
    learned = HashedMemory(3, 2, 3, 12, n_bits=32, batch_size=2, policy="merge", hasher=lh)
    assert learned._backend("auto", "write", k, k) == "reference"
    with pytest.raises(ValueError, match="SimHash only"):
        learned._backend("triton", "write", k, k)
    fifo64 = HashedMemory(3, 2, 3, 12, batch_size=2, policy="fifo", dtype=torch.float64)
    assert fifo64._backend("auto", "write", k.double(), k.double()) == "reference"
    assert make(3, 2, 3, 12, dtype=torch.float64, **cpu)._backend("auto", "attend", k.double()) == "reference"


# --------------------------------------------------------------------------------------------
# GPU tests: the world model's shape and a larger one
# --------------------------------------------------------------------------------------------
def axis_planes(mem: HashedMemory, seed: int = 0) -> None:
    """SimHash planes with one ±1 per bit (bit m reads coordinate m mod d): every projection is
    one exact product, so kernel and reference signatures agree whatever the summation order."""
    g = torch.Generator().manual_seed(seed)
    hh, d, m = mem.hasher.planes.shape
    p = torch.zeros(hh, d, m)
    for head in range(hh):
        coords = torch.randperm(d, generator=g)[:m] if m <= d else torch.arange(m) % d
        signs = torch.randint(0, 2, (m,), generator=g).float() * 2 - 1
        p[head, coords, torch.arange(m)] = signs
    mem.hasher.planes.copy_(p.to(mem.hasher.planes.device))


def clustered(b, h, t, d, centres, g, noise=0.3):
    """Tokens around a few centres per head (keys of one world place share a bucket): many
    tokens per bucket per write, as in generation."""
    pick = torch.randint(0, centres.shape[1], (b, h, t), generator=g, device=centres.device)
    x = centres.unsqueeze(0).expand(b, -1, -1, -1).gather(2, pick.unsqueeze(-1).expand(-1, -1, -1, d))
    return x + noise * torch.randn(b, h, t, d, generator=g, device=centres.device)


GPU_SHAPES = [  # b, h, d, buckets, slots, writes, tokens per write, centres per head
    pytest.param(1, 3, 64, 128, 16, 12, 256, 24, id="world-B1-H3-D64-U128x16-12x256"),
    pytest.param(2, 12, 64, 1024, 16, 8, 1560, 200, id="large-B2-H12-D64-U1024x16-8x1560"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("b,h,d,u,s,writes,t,centres", GPU_SHAPES)
def test_gpu_merge_write_bit_exact(b, h, d, u, s, writes, t, centres, dtype):
    """Axis planes: every buffer equal after every write."""
    ref = make(u, s, h, d, 32, b, dtype, device="cuda")
    axis_planes(ref)
    ker = twin(ref)
    g = torch.Generator(device="cuda").manual_seed(0)
    cen = torch.randn(h, centres, d, generator=g, device="cuda")
    for f in range(writes):
        k = clustered(b, h, t, d, cen, g).to(dtype)
        v = torch.randn(b, h, t, d, generator=g, device="cuda").to(dtype)
        write_both(ref, ker, k, v, f)  # ker: HashedMemory.write(backend="triton") → the kernel
        assert_same(ker, ref, f"write {f}: ")
    assert int(ref.counts.max()) > 4 and int(ref.bucket_writes.max()) > 2 * s  # heavy overflow happened


@pytest.mark.gpu
@pytest.mark.parametrize("b,h,d,u,s,writes,t,centres", GPU_SHAPES)
def test_gpu_merge_write_random_planes(b, h, d, u, s, writes, t, centres):
    """The memory's own random planes: a projection within rounding of 0 may flip a bit (of a
    token: its bucket; of a merged key: that bucket's later choices), so ≥ 99% of the entries and
    write counters equal in every buffer, and every kernel signature equal to the hasher's
    signature of the kernel's own stored key except next to a hyperplane."""
    ref = make(u, s, h, d, 32, b, torch.float32, device="cuda")
    ker = twin(ref)
    g = torch.Generator(device="cuda").manual_seed(1)
    cen = torch.randn(h, centres, d, generator=g, device="cuda")
    for f in range(writes):
        k = clustered(b, h, t, d, cen, g)
        write_both(ref, ker, k, torch.randn(b, h, t, d, generator=g, device="cuda"), f)
    assert float((ker.bucket_writes == ref.bucket_writes).float().mean()) >= 0.99
    same = (ker.keys == ref.keys).all(-1) & (ker.values == ref.values).all(-1) & (ker.signatures == ref.signatures).all(-1)
    same &= (ker.counts == ref.counts) & (ker.frames == ref.frames)
    assert float(same.float().mean()) >= 0.99, float(same.float().mean())
    # self-consistency: the stored signature is SimHash of the stored key, up to near-zero projections
    z = torch.einsum("bhusd,hdm->bhusm", ker.keys.double(), ker.hasher.planes.double())
    bits = ker.hasher(ker.keys.view(b, h, u * s, d), role="key").view(b, h, u, s, -1)
    differ = bits != ker.signatures
    if differ.any():
        near = (z.abs() < 1e-4).any(-1, keepdim=True)
        assert bool((~differ.any(-1, keepdim=True) | near).all()), "a signature differs far from the hyperplanes"
