import hashlib

import pytest
import torch

from vidhash.hashing import (
    LearnedHash,
    SimHash,
    bucket_index,
    hamming_similarity,
    num_words,
    pack_bits,
    popcount,
    token_bucket,
    unpack_bits,
)


@pytest.mark.parametrize("n_bits", [1, 7, 31, 32, 33, 64, 100, 256], ids=lambda m: f"bits{m}")
def test_pack_unpack_roundtrip(n_bits):
    bits = torch.rand(3, 5, n_bits) > 0.5
    words = pack_bits(bits)
    assert words.dtype == torch.int32 and words.shape == (3, 5, num_words(n_bits))
    assert torch.equal(unpack_bits(words, n_bits), bits)


def test_pack_layout_little_endian_and_sign_bit():
    bits = torch.zeros(64, dtype=torch.bool)
    bits[0] = True  # word 0, bit 0
    bits[31] = True  # word 0, bit 31 -> negative
    bits[33] = True  # word 1, bit 1
    w = pack_bits(bits)
    assert w.tolist() == [1 - 2**31, 2]


def test_popcount_matches_python():
    x = torch.randint(-(2**31), 2**31 - 1, (1000,), dtype=torch.int64).to(torch.int32)
    expected = [bin(v & 0xFFFFFFFF).count("1") for v in x.tolist()]
    assert popcount(x).tolist() == expected


def test_hamming_similarity_counts_equal_bits():
    a_bits, b_bits = torch.rand(4, 50) > 0.5, torch.rand(6, 50) > 0.5
    sim = hamming_similarity(pack_bits(a_bits), pack_bits(b_bits), 50)
    expected = (a_bits.unsqueeze(1) == b_bits.unsqueeze(0)).sum(-1)
    assert torch.equal(sim, expected.to(torch.int32))


def test_simhash_deterministic_and_seeded():
    x = torch.randn(2, 3, 17, 40)
    a, b, c = SimHash(40, 32, seed=1), SimHash(40, 32, seed=1), SimHash(40, 32, seed=2)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), c(x))


def test_simhash_similar_vectors_similar_bits():
    h = SimHash(64, 64, seed=0)
    x = torch.randn(200, 64)
    near = hamming_similarity(h(x).unsqueeze(1), h(x + 0.05 * torch.randn_like(x)).unsqueeze(1), 64).float().mean()
    far = hamming_similarity(h(x).unsqueeze(1), h(torch.randn_like(x)).unsqueeze(1), 64).float().mean()
    assert near > 60 and 24 < far < 40


def test_simhash_per_head_planes_need_head_axis():
    h = SimHash(16, 32, heads=3)
    assert h(torch.randn(2, 3, 5, 16)).shape == (2, 3, 5, 1)
    with pytest.raises(ValueError, match="heads=3"):
        h(torch.randn(2, 4, 5, 16))


def test_bucket_index_range_uniform_and_keyed():
    words = pack_bits(torch.rand(20000, 32) > 0.5)
    b = bucket_index(words, 64, key=3)
    assert b.min() >= 0 and b.max() < 64
    counts = torch.bincount(b, minlength=64).float()
    assert counts.std() / counts.mean() < 0.15  # roughly uniform
    assert torch.equal(b, bucket_index(words, 64, key=3))
    assert (b != bucket_index(words, 64, key=4)).float().mean() > 0.9
    # equal signatures share a bucket
    assert torch.equal(bucket_index(words[:5].repeat(3, 1), 64), bucket_index(words[:5], 64).repeat(3))


def test_token_bucket_is_keyed_blake2():
    ids = torch.tensor([5, 7, 5, 123456789])
    b = token_bucket(ids, 1000, key=b"secret")
    expected = [
        int.from_bytes(hashlib.blake2b(int(t).to_bytes(8, "little", signed=True), digest_size=8, key=b"secret").digest(), "little") % 1000
        for t in ids.tolist()
    ]
    assert b.tolist() == expected
    assert b[0] == b[2]


def test_learned_hash_fit_improves_recall():
    torch.manual_seed(0)
    # Structured data: keys in clusters, queries near some cluster centres.
    centres = torch.randn(8, 32)
    k = (centres[torch.randint(0, 8, (2, 256))] + 0.3 * torch.randn(2, 256, 32)).unsqueeze(0)
    q = (centres[torch.randint(0, 8, (2, 64))] + 0.3 * torch.randn(2, 64, 32)).unsqueeze(0)
    lh = LearnedHash(32, n_bits=16, heads=2, hidden=32, seed=0)
    report = lh.fit(q, k, top_k=16, steps=150, lr=1e-2)
    assert 0.0 <= report["recall_before"] <= 1.0
    assert report["recall_after"] > report["recall_before"] + 0.05
    assert lh(q, role="query").shape == (1, 2, 64, 1)


def test_learned_hash_straight_through_gradient():
    lh = LearnedHash(8, n_bits=4, heads=1, hidden=8).eval()
    x = torch.randn(1, 1, 5, 8, requires_grad=True)
    codes = lh.codes(x, "query")
    assert set(codes.detach().unique().tolist()) <= {-1.0, 1.0}
    codes.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("n_bits", [0, -1, 257, 3.5], ids=str)
def test_bad_bit_counts(n_bits):
    with pytest.raises(ValueError, match="n_bits"):
        SimHash(8, n_bits)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="bool"):
        pack_bits(torch.ones(3, 4))
    with pytest.raises(ValueError, match="head_dim=8"):
        SimHash(8)(torch.randn(3, 9))
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_bits(torch.zeros(2, 1, dtype=torch.int32), 40)
    with pytest.raises(ValueError, match="num_buckets"):
        bucket_index(torch.zeros(2, 1, dtype=torch.int32), 0)
    with pytest.raises(ValueError, match="role"):
        LearnedHash(8, 4)(torch.randn(1, 1, 2, 8), role="value")


@pytest.mark.parametrize("n_bits", [1, 31, 32, 33, 100, 256])
def test_hamming_similarity_matches_xor_popcount(n_bits):
    """The matrix-product form equals the definition (n_bits − popcount of the XOR), bit 31
    included, broadcast over batch dims, and under autocast."""
    g = torch.Generator().manual_seed(n_bits)
    a = pack_bits(torch.rand(2, 1, 7, n_bits, generator=g) > 0.5)
    b = pack_bits(torch.rand(1, 3, 9, n_bits, generator=g) > 0.5)
    want = n_bits - popcount(torch.bitwise_xor(a.unsqueeze(-2), b.unsqueeze(-3))).sum(-1)
    got = hamming_similarity(a, b, n_bits)
    assert got.dtype == torch.int32 and torch.equal(got, want)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(hamming_similarity(a, b, n_bits), want)


def test_default_hasher_is_cached_per_device_with_the_same_planes():
    from vidhash.hashing import default_hasher

    h = default_hasher(16)
    assert h is default_hasher(16, device="cpu") and h.planes.device.type == "cpu"
    assert torch.equal(h.planes, SimHash(16, 32, seed=0).planes)
    assert default_hasher(16, 64) is not h


@pytest.mark.gpu
def test_hash_attention_on_cuda_copies_nothing_from_the_host():
    """The default hasher lives on the tensors' device: a call copies no planes host → device (a
    pageable copy per call synchronised the stream once per attention call, 2026-12-03)."""
    from torch.profiler import ProfilerActivity, profile

    from vidhash import hash_attention
    from vidhash.hashing import default_hasher

    assert torch.equal(default_hasher(64, device="cuda").planes.cpu(), default_hasher(64).planes)
    q = torch.randn(1, 2, 512, 64, device="cuda", dtype=torch.bfloat16)
    hash_attention(q, q, q, density=0.25, block_size=64)  # compile, autotune, cache
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        hash_attention(q, q, q, density=0.25, block_size=64)
        torch.cuda.synchronize()
    copies = [e.name for e in prof.events() if "HtoD" in e.name]
    assert not copies, copies
