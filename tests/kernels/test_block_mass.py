"""The block-mass kernel (``kernels/block_mass``; the interpreter on a CPU) against the torch
reference ``vidhash.selection.oracle.block_mass``: same mass to rounding, same counts, strided
queries, ragged last blocks, several heads and batches, and the inputs it refuses."""
import pytest
import torch

from vidhash.kernels.block_mass.ops import block_mass_triton, covers
from vidhash.selection.oracle import block_mass

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the kernel on the GPU, else the interpreter


def _qk(b, h, nq, nk, d, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(b, h, nq, d, generator=g) * spread, torch.randn(b, h, nk, d, generator=g) * spread
    return q.to(DEV), k.to(DEV)


@pytest.mark.parametrize("b,h,nq,nk,d,bk,bq,stride", [
    (1, 2, 128, 128, 64, 32, 32, 1),
    (2, 1, 200, 77, 64, 16, 64, 4),     # ragged last query and key blocks, strided queries
    (1, 3, 96, 160, 128, 64, 16, 2),
    (1, 1, 64, 64, 64, 16, 64, 64),     # one query per block
])
def test_kernel_matches_the_reference(b, h, nq, nk, d, bk, bq, stride):
    q, k = _qk(b, h, nq, nk, d, seed=nq + nk, spread=2.0)  # peaked softmax: masses far from uniform
    want, want_counts = block_mass(q, k, block_size=bk, query_block_size=bq, query_stride=stride)
    got, counts = block_mass_triton(q, k, block_size=bk, query_block_size=bq, query_stride=stride)
    assert got.shape == want.shape and torch.equal(counts, want_counts)
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-4)
    assert torch.allclose(got.sum(-1), counts.float(), atol=1e-3)  # each query's mass sums to 1


def test_scale_is_used():
    q, k = _qk(1, 1, 64, 64, 64, seed=3)
    want, _ = block_mass(q, k, block_size=16, query_block_size=16, scale=0.5)
    got, _ = block_mass_triton(q, k, block_size=16, query_block_size=16, scale=0.5)
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(got, block_mass_triton(q, k, block_size=16, query_block_size=16)[0], atol=1e-3)


@pytest.mark.parametrize("kw", [dict(block_size=24, query_block_size=32), dict(block_size=8, query_block_size=32),
                                dict(block_size=32, query_block_size=48), dict(block_size=32, query_block_size=32,
                                                                               query_stride=3)])
def test_refuses_what_it_does_not_take(kw):
    q, k = _qk(1, 1, 96, 96, 64)
    assert not covers(q, **kw)
    with pytest.raises(ValueError, match="block_mass_triton takes"):
        block_mass_triton(q, k, **kw)


def test_reuse_path_on_the_triton_backend_matches_the_reference():
    """What the drop-in's reuse_mass runs on a GPU, here under the interpreter: the mass → the
    selection → hash_attention(selection=..., remainder="mean") on the Triton backend, against the
    same selection on the references."""
    from vidhash.attention import hash_attention
    from vidhash.selection import select_from_mass

    q, k = _qk(1, 2, 128, 128, 64, seed=9)
    v = torch.randn(1, 2, 128, 64, generator=torch.Generator().manual_seed(10)).to(DEV)
    mass, _ = block_mass_triton(q, k, block_size=32, query_block_size=32, query_stride=2)
    sel = select_from_mass(mass, 128, 128, density=0.25, block_size=32, query_block_size=32)
    ref_sel = select_from_mass(block_mass(q, k, block_size=32, query_block_size=32, query_stride=2)[0], 128, 128,
                               density=0.25, block_size=32, query_block_size=32)
    assert torch.equal(sel.indices, ref_sel.indices)
    out = hash_attention(q, k, v, selection=sel, remainder="mean", backend="triton")
    ref = hash_attention(q, k, v, selection=sel, remainder="mean", backend="reference")
    assert torch.allclose(out, ref, atol=2e-5)


@pytest.mark.parametrize("b,h,nq,nk,d,bk,bq,stride,causal", [
    (1, 2, 128, 128, 64, 16, 32, 8, False),     # 4 queries a block: rows padded to 16
    (2, 1, 200, 150, 64, 32, 64, 4, True),      # ragged query and key blocks, causal (nk < nq)
    (1, 3, 96, 160, 128, 64, 32, 1, False),     # every query
    (1, 1, 77, 300, 64, 16, 16, 2, True),       # causal with more keys than queries
])
def test_candidate_mass_kernel_matches_the_reference(b, h, nq, nk, d, bk, bq, stride, causal):
    """rescore's mass (``candidate_mass_triton``) against ``scorers.candidate_mass``: candidates in any
    order with ``-1`` padding, a subset of query blocks, rows with no key (causal)."""
    from vidhash.kernels.block_mass.ops import candidate_mass_triton
    from vidhash.selection.scorers import candidate_mass

    q, k = _qk(b, h, nq, nk, d, seed=nq * 3 + nk, spread=2.0)
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    g = torch.Generator().manual_seed(5)
    take = min(nkb, 5)
    cand = torch.stack([torch.randperm(nkb, generator=g)[:take] for _ in range(b * h * nqb)]).reshape(b, h, nqb, take)
    cand[..., -1] = -1  # a padding entry in every row
    blocks = torch.arange(nqb)
    if nqb > 2:
        blocks, cand = blocks[1:], cand[:, :, 1:]  # a subset of query blocks
    kw = dict(block_size=bk, query_block_size=bq, stride=stride, causal=causal)
    want = candidate_mass(q, k, blocks.to(DEV), cand.to(DEV), **kw)
    got = candidate_mass_triton(q, k, cand.to(DEV), query_blocks=blocks, **kw)
    assert got.shape == want.shape == (b, h, blocks.numel(), take)
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-4), (got - want).abs().max()
    assert (got[..., -1] == 0).all() and (got > 0).any()
