"""Oracle, selection mass and output error against brute force (the tiny N×N softmax, in the test only)."""
import math

import pytest
import torch

from vidhash.attention import block_sparse_attention, select_blocks, selection_recall
from vidhash.kernels.block_select.naive import forced_and_allowed
from vidhash.selection.oracle import attention_error, block_mass, dense_rows, oracle_recall, selection_mass

# (b, h, nq, nk, d, block_size, query_block_size, causal)
SHAPES = [
    pytest.param(2, 3, 77, 77, 16, 16, 32, False, id="B2-H3-N77-D16-bk16-bq32"),
    pytest.param(1, 2, 77, 77, 16, 16, 32, True, id="B1-H2-N77-causal"),
    pytest.param(1, 2, 50, 130, 8, 7, 16, True, id="B1-H2-Nq50-Nk130-bk7-causal"),
    pytest.param(1, 1, 130, 50, 8, 16, 32, True, id="B1-H1-Nq130-Nk50-causal-blind-queries"),
    pytest.param(1, 2, 9, 12, 8, 16, 16, False, id="B1-H2-N9-one-block"),
]


def brute_mass(q, k, bk, bq, causal, scale):
    """(b, h, nqb, nkb) masses and (b, h, nqb) counts of queries that see a key, from the full softmax."""
    nq, nk = q.shape[-2], k.shape[-2]
    s = q.double() @ k.double().transpose(-1, -2) * scale
    if causal:
        s = s.masked_fill(torch.arange(nk) > (torch.arange(nq) + nk - nq).unsqueeze(-1), float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # queries that see nothing: 0
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    mass = torch.zeros(*q.shape[:2], nqb, nkb, dtype=torch.float64)
    for i in range(nq):
        for j in range(nkb):
            mass[:, :, i // bq, j] += p[:, :, i, j * bk : (j + 1) * bk].sum(-1)
    seen = torch.isfinite(s).any(-1).double()
    counts = torch.stack([seen[..., i * bq : (i + 1) * bq].sum(-1) for i in range(nqb)], -1)
    return mass, counts


@pytest.mark.parametrize("b,h,nq,nk,d,bk,bq,causal", SHAPES)
def test_block_mass_matches_brute_force(b, h, nq, nk, d, bk, bq, causal):
    g = torch.Generator().manual_seed(nq + 3 * nk)
    q, k = torch.randn(b, h, nq, d, generator=g) * 2, torch.randn(b, h, nk, d, generator=g)
    mass, counts = block_mass(q, k, block_size=bk, query_block_size=bq, causal=causal)
    want, want_counts = brute_mass(q, k, bk, bq, causal, d**-0.5)
    torch.testing.assert_close(mass.double(), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(counts.double(), want_counts)
    torch.testing.assert_close(mass.double().sum(-1), want_counts, rtol=1e-5, atol=1e-5)  # each query sums to 1
    blocks = torch.tensor([mass.shape[2] - 1, 0])
    sub, _ = block_mass(q, k, block_size=bk, query_block_size=bq, causal=causal, query_blocks=blocks)
    torch.testing.assert_close(sub, mass[:, :, blocks])


@pytest.mark.parametrize("b,h,nq,nk,d,bk,bq,causal", SHAPES)
def test_oracle_and_selection_mass(b, h, nq, nk, d, bk, bq, causal):
    g = torch.Generator().manual_seed(nq + nk)
    q, k = torch.randn(b, h, nq, d, generator=g) * 2, torch.randn(b, h, nk, d, generator=g)
    want, counts = brute_mass(q, k, bk, bq, causal, d**-0.5)
    total = counts.sum()
    sel = select_blocks(q, k, density=0.3, block_size=bk, query_block_size=bq, causal=causal)
    kept = sel.kept
    got = selection_mass(q, k, sel)
    idx = sel.indices.long()
    brute = (want.gather(-1, idx.clamp(min=0)) * (idx >= 0)).sum() / total
    assert math.isclose(got, float(brute), rel_tol=1e-5)
    assert math.isclose(got, selection_recall(q, k, sel), rel_tol=1e-5)  # the same number, the same footing
    oracle = oracle_recall(q, k, kept, block_size=bk, query_block_size=bq, causal=causal)
    assert math.isclose(oracle, float(want.topk(kept, dim=-1).values.sum() / total), rel_tol=1e-5)
    assert oracle >= got - 1e-6
    # forced blocks first (sink + local), then the heaviest
    forced, _ = forced_and_allowed(torch.arange(want.shape[2]), nq, nk, bq, bk, 1, 1, causal)
    ranked = torch.where(forced, want + 1e3, want)  # a block mass is at most query_block_size
    best_forced = want.gather(-1, ranked.topk(kept, dim=-1).indices).sum() / total
    got_forced = oracle_recall(q, k, kept, block_size=bk, query_block_size=bq, causal=causal, local_blocks=1, sink_blocks=1)
    assert math.isclose(got_forced, float(best_forced), rel_tol=1e-5)
    assert got_forced >= got - 1e-6  # select_blocks keeps the same forced blocks


def test_selection_mass_on_a_subset_equals_selection_recall():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 300, 16, generator=g), torch.randn(1, 2, 300, 16, generator=g)
    sel = select_blocks(q, k, density=0.2, block_size=16, query_block_size=32)
    for subset in (1, 3, 5):
        assert math.isclose(selection_mass(q, k, sel, max_query_blocks=subset),
                            selection_recall(q, k, sel, max_query_blocks=subset), rel_tol=1e-5)


def test_attention_error():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 70, 8, generator=g) for _ in range(3))
    sel = select_blocks(q, k, density=0.3, block_size=8, query_block_size=16, causal=True)
    out = block_sparse_attention(q, k, v, sel)
    s = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(torch.arange(70) > torch.arange(70).unsqueeze(-1), float("-inf"))
    dense = torch.softmax(s, -1) @ v
    want = float((out - dense).norm() / dense.norm())
    assert math.isclose(attention_error(q, k, v, out, query_block_size=16, causal=True), want, rel_tol=1e-4)
    assert attention_error(q, k, v, dense, query_block_size=16, causal=True) < 1e-6
    rows = torch.tensor([1, 4])
    pos = torch.cat([torch.arange(16, 32), torch.arange(64, 70)])
    want_rows = float((out[:, :, pos] - dense[:, :, pos]).norm() / dense[:, :, pos].norm())
    assert math.isclose(attention_error(q, k, v, out, query_block_size=16, causal=True, query_blocks=rows), want_rows, rel_tol=1e-4)
    # the dense rows computed once: the same error, and they are dense attention's rows of those queries
    ref = dense_rows(q, k, v, query_block_size=16, causal=True, query_blocks=rows)
    torch.testing.assert_close(ref, dense[:, :, pos], rtol=1e-5, atol=1e-6)
    assert attention_error(q, k, v, out, query_block_size=16, causal=True, query_blocks=rows, dense=ref) == \
        attention_error(q, k, v, out, query_block_size=16, causal=True, query_blocks=rows)
    with pytest.raises(ValueError, match="dense must be dense_rows"):
        attention_error(q, k, v, out, query_block_size=16, causal=True, dense=ref)  # all queries: 70 rows, not 22


def test_errors():
    q = torch.randn(1, 1, 8, 4)
    with pytest.raises(ValueError, match="kept"):
        oracle_recall(q, q, 0, block_size=4, query_block_size=4)
    with pytest.raises(ValueError, match="query_blocks"):
        block_mass(q, q, block_size=4, query_block_size=4, query_blocks=torch.tensor([2]))
    with pytest.raises(ValueError, match="block_size"):
        block_mass(q, q, block_size=0, query_block_size=4)
