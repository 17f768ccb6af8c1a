"""Block-selection kernel (``ops.py``) == its reference ``naive.select_blocks`` (indices equal, exactly).

On CPU the kernel runs under ``TRITON_INTERPRET=1`` (see conftest.py) with tiny shapes.
"""
import pytest
import torch

from vidhash.kernels.block_select.naive import forced_and_allowed, max_forced_blocks_loop, select_blocks
from vidhash.hashing import LearnedHash, SimHash
from vidhash.kernels.block_select.ops import max_forced_blocks, select_blocks_triton
from vidhash.kernels.ops import select_blocks_triton as exported

DEV = "cuda" if torch.cuda.is_available() else "cpu"

# (b, h, nq, nk, d, block_size, query_block_size, local, sink, causal, density)
CASES = [
    pytest.param(2, 3, 77, 77, 64, 16, 32, 1, 1, False, 0.25, id="B2-H3-N77-D64-bk16-bq32"),
    pytest.param(1, 2, 77, 77, 64, 16, 32, 1, 1, True, 0.25, id="B1-H2-N77-D64-bk16-bq32-causal"),
    pytest.param(1, 2, 1, 200, 64, 16, 64, 1, 1, True, 0.1, id="B1-H2-Nq1-Nk200-bk16-causal"),
    pytest.param(1, 1, 200, 1, 64, 16, 64, 1, 1, False, 0.5, id="B1-H1-Nq200-Nk1-bk16"),
    pytest.param(1, 2, 300, 130, 64, 7, 64, 2, 2, True, 0.3, id="B1-H2-Nq300-Nk130-bk7-causal-L2-S2"),
    pytest.param(1, 2, 190, 190, 128, 1, 16, 0, 0, False, 0.05, id="B1-H2-N190-D128-bk1-L0-S0"),
    pytest.param(2, 1, 256, 256, 64, 32, 64, 0, 3, False, 0.2, id="B2-H1-N256-bk32-L0-S3"),
    pytest.param(1, 1, 100, 100, 64, 16, 64, 1, 1, False, 1.0, id="B1-H1-N100-bk16-dense"),
    pytest.param(1, 3, 130, 300, 64, 128, 128, 1, 1, True, 0.5, id="B1-H3-Nq130-Nk300-bk128-causal"),
]


@pytest.mark.parametrize("b,h,nq,nk,d,bk,bq,local,sink,causal,density", CASES)
def test_select_blocks_matches_reference(b, h, nq, nk, d, bk, bq, local, sink, causal, density):
    q, k = torch.randn(b, h, nq, d, device=DEV), torch.randn(b, h, nk, d, device=DEV)
    kw = dict(density=density, block_size=bk, query_block_size=bq, local_blocks=local, sink_blocks=sink, causal=causal)
    ref = select_blocks(q, k, **kw)
    out = select_blocks_triton(q, k, **kw)
    assert out.indices.dtype == torch.int32 and out.indices.shape == ref.indices.shape
    assert torch.equal(out.indices, ref.indices)
    assert (out.block_size, out.query_block_size, out.num_queries, out.num_keys, out.causal) == (
        ref.block_size, ref.query_block_size, ref.num_queries, ref.num_keys, ref.causal)


def test_select_blocks_ties_and_wide_signatures():
    """64-bit signatures (two words), many equal scores: ties must go to the lower index."""
    q = torch.randn(1, 2, 96, 64, device=DEV)
    k = torch.randn(1, 2, 160, 64, device=DEV).round()  # coarse keys: many equal block signatures
    k[:, :, 80:] = k[:, :, :80]
    hasher = SimHash(64, 64, seed=3)
    kw = dict(density=0.3, block_size=16, query_block_size=32, local_blocks=0, sink_blocks=0, hasher=hasher)
    assert torch.equal(select_blocks_triton(q, k, **kw).indices, select_blocks(q, k, **kw).indices)


def test_select_blocks_learned_hash_per_head():
    hasher = LearnedHash(64, n_bits=20, heads=2, hidden=16, seed=1).eval().to(DEV)
    q, k = torch.randn(1, 2, 128, 64, device=DEV), torch.randn(1, 2, 128, 64, device=DEV)
    kw = dict(density=0.25, block_size=16, query_block_size=32, causal=True, hasher=hasher)
    assert torch.equal(exported(q, k, **kw).indices, select_blocks(q, k, **kw).indices)


def test_max_forced_blocks_closed_form():
    """The loop over every query block against the forced masks; the few-block form against the loop."""
    import itertools
    import random

    for nq, nk in ((1, 77), (77, 77), (200, 90), (90, 200)):
        for bq, bk in ((16, 16), (64, 7), (32, 128)):
            for local, sink in ((0, 0), (1, 1), (3, 2)):
                for causal in (False, True):
                    nqb = -(-nq // bq)
                    forced, _ = forced_and_allowed(torch.arange(nqb), nq, nk, bq, bk, local, sink, causal)
                    assert max_forced_blocks_loop(nq, nk, bq, bk, local, sink, causal) == int(forced.sum(-1).max())
    for args in itertools.product([1, 5, 33, 97, 200], [1, 7, 40, 129, 300], [1, 3, 16, 24], [1, 3, 7, 16, 48],
                                  [0, 1, 3], [0, 1, 5], [False, True]):
        assert max_forced_blocks(*args) == max_forced_blocks_loop(*args), args
    rng = random.Random(0)
    for _ in range(500):  # long inputs, any sizes: the runs' boundaries far from both ends
        args = (rng.randint(1, 5000), rng.randint(1, 5000), rng.randint(1, 128), rng.randint(1, 128),
                rng.randint(0, 6), rng.randint(0, 6), rng.random() < 0.5)
        assert max_forced_blocks(*args) == max_forced_blocks_loop(*args), args


@pytest.mark.parametrize("bad", [dict(density=0.0), dict(block_size=0), dict(block_size=129), dict(local_blocks=-1)])
def test_select_blocks_bad_arguments(bad):
    q = torch.randn(1, 1, 32, 64, device=DEV)
    with pytest.raises(ValueError):
        select_blocks_triton(q, q, **bad)


@pytest.mark.gpu
@pytest.mark.parametrize("nq,nk,bk,bq,causal", [
    pytest.param(4096, 4096, 64, 128, False, id="N4096-bk64-bq128"),
    pytest.param(4000, 5000, 16, 64, True, id="Nq4000-Nk5000-bk16-bq64-causal"),
    pytest.param(8192, 8192, 16, 128, False, id="N8192-bk16-bq128"),
])
def test_select_blocks_gpu_large(nq, nk, bk, bq, causal):
    q, k = torch.randn(2, 4, nq, 64, device="cuda"), torch.randn(2, 4, nk, 64, device="cuda")
    kw = dict(density=1 / 32, block_size=bk, query_block_size=bq, causal=causal)
    ref = select_blocks(q, k, **kw).indices
    assert torch.equal(select_blocks_triton(q, k, exact_signatures=True, **kw).indices, ref)
    # default signatures (signature kernel when installed): bits may differ only at rounding of 0
    fast = select_blocks_triton(q, k, **kw).indices
    nkb = -(-nk // bk)
    as_mask = lambda i: torch.zeros(*i.shape[:-1], nkb + 1, dtype=torch.bool, device=i.device).scatter_(-1, torch.where(i < 0, nkb, i).long(), True)
    shared = (as_mask(fast) & as_mask(ref))[..., :nkb].sum() / (ref >= 0).sum()
    assert shared > 0.99
