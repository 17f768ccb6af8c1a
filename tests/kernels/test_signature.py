"""Signature kernel vs ``hasher(x, role)`` and ``vidhash.attention.block_signatures``.

A bit is the sign of a float sum, and the kernel sums in another order than the reference
(pooled blocks even project the summed inputs instead of summing projections), so bits whose
float64 projection lies within ``TOL`` of 0 are excluded from the comparison; every other bit
must match exactly, and the excluded share is checked to be tiny.
"""
import pytest
import torch

from vidhash.hashing import LearnedHash, SimHash, unpack_bits
from vidhash.kernels.signature.naive import block_signatures
from vidhash.kernels.signature.ops import block_signatures_triton, signatures_and_buckets, signatures_triton
from vidhash.memory import HashedMemory

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the kernel on the GPU, else the interpreter
TOL = 1e-3


def projections64(x, hasher, role, block_size=1):
    """Float64 projections (pooled as the reference pools them) ``(..., g, m)``."""
    if isinstance(hasher, SimHash):
        planes = hasher.planes.double()
        if hasher.heads is None or hasher.heads == 1:
            z = x.double() @ planes[0]
        else:
            z = torch.einsum("...hnd,hdm->...hnm", x.double(), planes)
    else:
        mlp = hasher._mlp(role)
        z = x.double()
        for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases)):
            z = torch.matmul(z, w.double()) + b.double()
            if i < len(mlp.weights) - 1:
                z = torch.nn.functional.silu(z)
    if block_size > 1:
        n = z.shape[-2]
        g = -(-n // block_size)
        z = torch.nn.functional.pad(z, (0, 0, 0, g * block_size - n)).reshape(*z.shape[:-2], g, block_size, -1).sum(-2)
    return z


def assert_bits_match(got, ref, z64, n_bits):
    assert got.dtype == torch.int32 and got.shape == ref.shape
    sure = z64.abs() > TOL
    assert sure.float().mean() > 0.99, "too many near-zero projections for a meaningful check"
    bits_got, bits_ref = unpack_bits(got, n_bits), unpack_bits(ref, n_bits)
    bad = (bits_got != bits_ref) & sure
    assert not bad.any(), f"{int(bad.sum())} of {bad.numel()} bits differ away from 0"
    if sure.all():
        assert torch.equal(got, ref)


SIMHASH_CASES = [
    pytest.param(1, 3, 77, 40, 32, None, id="B1-H3-N77-D40-bits32-shared"),
    pytest.param(2, 3, 37, 40, 45, 3, id="B2-H3-N37-D40-bits45-perhead"),
    pytest.param(1, 2, 29, 24, 70, None, id="B1-H2-N29-D24-bits70-shared"),
    pytest.param(1, 1, 50, 64, 256, 1, id="B1-H1-N50-D64-bits256-onehead"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("b,h,n,d,n_bits,heads", SIMHASH_CASES)
def test_simhash_signatures(b, h, n, d, n_bits, heads, dtype):
    hasher = SimHash(d, n_bits, heads=heads, seed=7).to(DEV)
    x = torch.randn(b, h, n, d).to(DEV, dtype)
    got = signatures_triton(x, hasher)
    assert_bits_match(got, hasher(x), projections64(x, hasher, "key"), n_bits)


def test_simhash_shared_planes_any_leading_shape():
    hasher = SimHash(40, 45, seed=1).to(DEV)
    x = torch.randn(33, 40).to(DEV)
    got = signatures_triton(x, hasher)
    assert got.shape == (33, 2)
    assert_bits_match(got, hasher(x), projections64(x, hasher, "key"), 45)


@pytest.mark.parametrize("role", ["query", "key"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_learned_hash_signatures(role, dtype):
    hasher = LearnedHash(40, n_bits=45, heads=3, hidden=24, seed=2).to(DEV)
    x = torch.randn(2, 3, 33, 40).to(DEV, dtype)
    got = signatures_triton(x, hasher, role)
    assert_bits_match(got, hasher(x, role), projections64(x, hasher, role), 45)


BLOCK_CASES = [
    pytest.param(1, 3, 77, 40, 32, None, 1, id="B1-H3-N77-D40-bs1"),
    pytest.param(2, 3, 77, 40, 45, 3, 5, id="B2-H3-N77-D40-bs5-perhead"),
    pytest.param(1, 2, 50, 24, 70, None, 16, id="B1-H2-N50-D24-bs16"),
    pytest.param(1, 2, 13, 24, 32, None, 64, id="B1-H2-N13-D24-bs64-oneblock"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("b,h,n,d,n_bits,heads,block_size", BLOCK_CASES)
def test_block_signatures_simhash(b, h, n, d, n_bits, heads, block_size, dtype):
    hasher = SimHash(d, n_bits, heads=heads, seed=3).to(DEV)
    x = torch.randn(b, h, n, d).to(DEV, dtype)
    got = block_signatures_triton(x, block_size, hasher, "key")
    ref = block_signatures(x, block_size, hasher, "key")
    assert_bits_match(got, ref, projections64(x, hasher, "key", block_size), n_bits)


@pytest.mark.parametrize("block_size", [1, 4, 7])
def test_block_signatures_learned_hash(block_size):
    hasher = LearnedHash(40, n_bits=33, heads=3, hidden=24, seed=4).to(DEV)
    x = torch.randn(1, 3, 31, 40).to(DEV)
    for role in ("query", "key"):
        got = block_signatures_triton(x, block_size, hasher, role)
        ref = block_signatures(x, block_size, hasher, role)
        assert_bits_match(got, ref, projections64(x, hasher, role, block_size), 33)


@pytest.mark.parametrize("num_buckets,n_bits,route_bits,seed", [
    pytest.param(37, 45, None, 5, id="U37-bits45"),
    pytest.param(3000, 64, 40, 2**33 + 7, id="U3000-bits64-route40-bigseed"),
    pytest.param(1, 32, 32, 0, id="U1-bits32-route32"),
])
def test_signatures_and_buckets_match_route(num_buckets, n_bits, route_bits, seed):
    mem = HashedMemory(num_buckets=num_buckets, slots=2, heads=3, head_dim=40, n_bits=n_bits,
                       route_bits=route_bits, seed=seed, batch_size=2, device=DEV)
    k = torch.randn(2, 3, 41, 40).to(DEV)
    sig, bucket = signatures_and_buckets(k, mem.hasher, mem._route_bits, num_buckets, seed)
    ref = mem.hasher(k)
    assert_bits_match(sig, ref, projections64(k, mem.hasher, "key"), n_bits)
    # routing of the kernel's own signatures is exact integer arithmetic
    assert torch.equal(bucket.long(), mem.route(sig))


def test_errors_name_the_problem():
    # on the kernel's device: off the interpreter a CPU tensor is refused first (the device check)
    with pytest.raises(ValueError, match="SimHash and LearnedHash"):
        signatures_triton(torch.randn(1, 2, 5, 8).to(DEV), torch.nn.Linear(8, 8))
    with pytest.raises(ValueError, match="head_dim"):
        signatures_triton(torch.randn(1, 2, 5, 9).to(DEV), SimHash(8, 32))
    with pytest.raises(ValueError, match="heads=3"):
        signatures_triton(torch.randn(1, 2, 5, 8).to(DEV), SimHash(8, 32, heads=3))
    with pytest.raises(ValueError, match="block_size"):
        block_signatures_triton(torch.randn(1, 2, 5, 8).to(DEV), 0, SimHash(8, 32), "key")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_signatures_gpu_large(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 12, 4099, 64, device="cuda", dtype=dtype)
    for hasher in (SimHash(64, 32, heads=12, seed=1).cuda(), LearnedHash(64, 32, heads=12).cuda()):
        for role in ("query", "key"):
            assert_bits_match(signatures_triton(x, hasher, role), hasher(x, role), projections64(x, hasher, role), 32)
            got = block_signatures_triton(x, 64, hasher, role)
            ref = block_signatures(x, 64, hasher, role)
            assert_bits_match(got, ref, projections64(x, hasher, role, 64), 32)
