"""Block-score kernel == its torch reference ``kernels/block_score/naive.py`` (indices equal, exactly),
and the reference == a brute-force reading of its rules.

On CPU the kernel runs under ``TRITON_INTERPRET=1`` (see conftest.py) with tiny shapes.
"""
import pytest
import torch

from vidhash.kernels.block_select.naive import forced_and_allowed
from vidhash.kernels.block_score.naive import (
    block_score_reference,
    code_width,
    quantize_codes,
    subgrid_codes,
)
from vidhash.kernels.block_score.ops import select_blocks_codes, select_from_codes

DEV = "cuda" if torch.cuda.is_available() else "cpu"

# (b, h, nq, nk, d, block_size, query_block_size, local, sink, causal, density, m, sub)
CASES = [
    pytest.param(1, 2, 77, 77, 40, 16, 32, 1, 1, False, 0.25, 1, None, id="B1-H2-N77-D40-bk16-bq32"),
    pytest.param(2, 1, 77, 77, 40, 16, 32, 1, 1, False, 0.25, 4, 4, id="B2-H1-N77-D40-bk16-bq32-m4-sub4"),
    pytest.param(1, 2, 300, 130, 64, 8, 64, 2, 2, True, 0.3, 2, 2, id="B1-H2-Nq300-Nk130-bk8-causal-L2-S2-m2-sub2"),
    pytest.param(2, 1, 33, 500, 16, 8, 16, 0, 0, False, 0.1, 4, 8, id="B2-H1-Nq33-Nk500-D16-bk8-L0-S0-m4"),
    pytest.param(1, 1, 1, 200, 64, 16, 64, 1, 1, True, 0.1, 8, 4, id="B1-H1-Nq1-Nk200-causal-m8-sub4"),
    pytest.param(1, 2, 200, 1, 24, 16, 32, 1, 1, False, 0.5, 1, None, id="B1-H2-Nq200-Nk1-one-key"),
    pytest.param(1, 1, 10, 10, 8, 16, 16, 0, 0, True, 0.1, 1, None, id="B1-H1-N10-one-block-causal"),
    pytest.param(1, 2, 130, 300, 72, 32, 128, 1, 0, True, 0.2, 4, 8, id="B1-H2-Nq130-Nk300-D72-bk32-bq128-causal"),
    pytest.param(1, 1, 100, 100, 64, 16, 64, 1, 1, False, 1.0, 2, None, id="B1-H1-N100-dense"),
]


@pytest.mark.parametrize("b,h,nq,nk,d,bk,bq,local,sink,causal,density,m,sub", CASES)
def test_kernel_matches_reference(b, h, nq, nk, d, bk, bq, local, sink, causal, density, m, sub):
    g = torch.Generator().manual_seed(nq * 7 + nk)
    q, k = torch.randn(b, h, nq, d, generator=g).to(DEV), torch.randn(b, h, nk, d, generator=g).to(DEV)
    kw = dict(density=density, block_size=bk, query_block_size=bq, local_blocks=local, sink_blocks=sink,
              causal=causal, m=m, sub=sub)
    out = select_blocks_codes(q, k, backend="triton", **kw)
    ref = select_blocks_codes(q, k, backend="reference", **kw)
    assert out.indices.dtype == torch.int32 and out.indices.shape == ref.indices.shape
    assert torch.equal(out.indices, ref.indices)
    assert (out.block_size, out.query_block_size, out.num_queries, out.num_keys, out.causal) == (bk, bq, nq, nk, causal)


@pytest.mark.parametrize("causal", [pytest.param(False, id="B1-H2-N77-D40-moments"), pytest.param(True, id="B1-H2-Nq90-Nk150-moments-causal")])
def test_moments_codes_match_reference(causal):
    g = torch.Generator().manual_seed(3)
    nq, nk = (77, 77) if not causal else (90, 150)
    q, k = (torch.randn(1, 2, nq, 40, generator=g) * 2).to(DEV), torch.randn(1, 2, nk, 40, generator=g).to(DEV)
    kw = dict(density=0.3, block_size=8, query_block_size=32, causal=causal, scorer="moments")
    out = select_blocks_codes(q, k, backend="triton", **kw)
    assert torch.equal(out.indices, select_blocks_codes(q, k, backend="reference", **kw).indices)


def test_moments_codes_are_the_moments_scores():
    from vidhash.kernels.block_score.naive import moment_codes
    from vidhash.selection import score_blocks

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 300, 16, generator=g) * 2, torch.randn(1, 2, 290, 16, generator=g)
    cq, ck = moment_codes(q, k, 32, 64, 0.25)
    want = score_blocks(q, k, "moments", block_size=32, query_block_size=64, scale=0.25)
    torch.testing.assert_close(cq @ ck.transpose(-1, -2), want, rtol=1e-5, atol=1e-5)
    qi, ki, shift = quantize_codes(cq, ck)  # the per-channel balance leaves every dot product as it was
    assert qi.shape[-1] == 64


@pytest.mark.parametrize("bk,nk,causal", [pytest.param(16, 77, False, id="B1-H2-N77-bk16-ragged-parent"),
                                           pytest.param(8, 150, False, id="B1-H2-Nq90-Nk150-bk8")])
def test_parent_codes_match_reference(bk, nk, causal):
    g = torch.Generator().manual_seed(5)
    nq = 77 if bk == 16 else 90
    q, k = (torch.randn(1, 2, nq, 40, generator=g) * 2).to(DEV), torch.randn(1, 2, nk, 40, generator=g).to(DEV)
    kw = dict(density=0.3, block_size=bk, query_block_size=32, causal=causal, scorer="parent")
    out = select_blocks_codes(q, k, backend="triton", **kw)
    assert torch.equal(out.indices, select_blocks_codes(q, k, backend="reference", **kw).indices)


def test_parent_codes_are_the_parent_scores():
    """The codes' dot products are ``parent``'s float scores: q̄ · (0.9 k̄_parent + 0.1 k̄), with a
    ragged last parent averaged over its real tokens; at blocks of 64 the codes are pooled's."""
    from vidhash.kernels.block_score.naive import block_means, float_codes
    from vidhash.selection import score_blocks

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 300, 16, generator=g), torch.randn(1, 2, 290, 16, generator=g)  # 290: a ragged parent
    cq, ck, factor, _, _ = float_codes(q, k, block_size=16, query_block_size=64, scale=0.25, scorer="parent")
    own = block_means(k, 16)
    parent = torch.stack([k[:, :, 64 * (j // 4): min(64 * (j // 4) + 64, 290)].mean(-2) for j in range(own.shape[2])], 2)
    torch.testing.assert_close(ck, 0.9 * parent + 0.1 * own, rtol=1e-6, atol=1e-6)
    want = score_blocks(q, k, "parent", block_size=16, query_block_size=64, scale=0.25)
    torch.testing.assert_close(factor**2 * cq @ ck.transpose(-1, -2), want, rtol=1e-5, atol=1e-5)
    for scorer in ("parent", None):  # blocks of 64: no parent to lean on
        c64 = float_codes(q, k, block_size=64, query_block_size=64, scale=0.25, scorer=scorer)[1]
        torch.testing.assert_close(c64, block_means(k, 64))
    with pytest.raises(ValueError, match="parent"):
        float_codes(q, k, block_size=16, query_block_size=64, scale=0.25, scorer="parent", m=2)


@pytest.mark.parametrize("m,sub", [pytest.param(1, None, id="pooled"), pytest.param(2, 4, id="m2-sub4")])
def test_ties_go_to_the_lower_block(m, sub):
    """Repeated key blocks and a coarse resolution: many equal levels, the kernel and the reference
    must break them alike (lower index first)."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 96, 32, generator=g).to(DEV)
    k = torch.randn(1, 2, 40, 32, generator=g).round().repeat(1, 1, 4, 1).to(DEV)  # 160 keys, 4 copies
    kw = dict(density=0.3, block_size=8, query_block_size=32, local_blocks=0, sink_blocks=0, m=m, sub=sub)
    for resolution in (1 / 16, 2.0, 1e6):
        out = select_blocks_codes(q, k, backend="triton", resolution=resolution, **kw)
        ref = select_blocks_codes(q, k, backend="reference", resolution=resolution, **kw)
        assert torch.equal(out.indices, ref.indices)
    # every key equal: every free block on one level, the kept blocks are the lowest indices
    flat = torch.ones_like(k)
    for backend in ("triton", "reference"):
        sel = select_blocks_codes(q, flat, backend=backend, **kw)
        assert torch.equal(sel.indices, torch.arange(sel.kept, dtype=torch.int32, device=DEV).expand_as(sel.indices))


@pytest.mark.parametrize("causal", [pytest.param(False, id="wide"), pytest.param(True, id="wide-causal")])
def test_cut_among_the_lowest_levels(causal):
    """Scores spread over far more than 256 levels and half the blocks kept: the cut falls on the
    floor level 0 (every block ≥ 16 nats below a row's best), where most blocks tie."""
    g = torch.Generator().manual_seed(7)
    q, k = (torch.randn(1, 2, 128, 32, generator=g) * 20).to(DEV), (torch.randn(1, 2, 256, 32, generator=g) * 20).to(DEV)
    kw = dict(density=0.6, block_size=8, query_block_size=16, local_blocks=1, sink_blocks=1, causal=causal)
    out = select_blocks_codes(q, k, backend="triton", **kw)
    ref = select_blocks_codes(q, k, backend="reference", **kw)
    assert torch.equal(out.indices, ref.indices)


@pytest.mark.parametrize("tiles", [(64, 32, 4), (16, 128, 4)], ids=["64x32", "16x128"])
def test_tiles_override_keeps_the_indices(tiles, monkeypatch):
    """``ops.TILES`` (the GPU timing study's tile choices) changes nothing but speed; tiles of more than
    128 key blocks are refused (the counters hold < 256 blocks a step)."""
    from vidhash.kernels.block_score import ops

    g = torch.Generator().manual_seed(9)
    q, k = torch.randn(1, 2, 200, 32, generator=g).to(DEV), torch.randn(1, 2, 700, 32, generator=g).to(DEV)
    kw = dict(density=0.2, block_size=4, query_block_size=8, causal=True)
    ref = select_blocks_codes(q, k, backend="reference", **kw)
    monkeypatch.setattr(ops, "TILES", tiles)
    assert torch.equal(select_blocks_codes(q, k, backend="triton", **kw).indices, ref.indices)
    monkeypatch.setattr(ops, "TILES", (16, 256, 4))
    with pytest.raises(ValueError, match="block_n"):
        select_blocks_codes(q, k, backend="triton", **kw)


def _brute_levels(qi, ki, shift, nq, nk, bk, bq, local, sink, causal, m, p):
    """The kernel's rules read literally, one query block and one key block at a time (Python loops)."""
    b, h = qi.shape[:2]
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    nsub = -(-nk // (bk // p))
    forced, allowed = forced_and_allowed(torch.arange(nqb), nq, nk, bq, bk, local, sink, causal)
    lv = torch.full((b, h, nqb, nkb), -1, dtype=torch.int64)
    for bb in range(b):
        for hh in range(h):
            sh = int(shift[bb * h + hh])
            for i in range(nqb):
                free = [j for j in range(nkb) if allowed[i, j] and not forced[i, j]]
                runs = [r for r in range(m) if i * bq + r * (bq // m) < nq]
                cell = lambda r, j, c: int((qi[bb, hh, i * m + r].long() * ki[bb, hh, j * p + c].long()).sum())
                best = {r: max([cell(r, j, c) for j in free for c in range(p) if j * p + c < nsub], default=None) for r in runs}
                for j in range(nkb):
                    if not allowed[i, j]:
                        continue
                    if forced[i, j]:
                        lv[bb, hh, i, j] = 256
                        continue
                    n = max(cell(r, j, c) - best[r] for r in runs for c in range(p) if j * p + c < nsub)
                    lv[bb, hh, i, j] = max(0, 255 + (n >> sh))
    return lv


@pytest.mark.parametrize("causal,m,sub", [pytest.param(False, 1, None, id="pooled"), pytest.param(True, 2, 4, id="causal-m2-sub4")])
def test_reference_matches_brute_force(causal, m, sub):
    g = torch.Generator().manual_seed(5)
    nq, nk, bk, bq = 45, 70, 8, 16
    q, k = torch.randn(1, 2, nq, 16, generator=g), torch.randn(1, 2, nk, 16, generator=g)
    cq, ck = subgrid_codes(q, k, bk, bq, 0.25, m, sub)
    qi, ki, shift = quantize_codes(cq, ck, resolution=0.5)
    kw = dict(num_queries=nq, num_keys=nk, block_size=bk, query_block_size=bq, local_blocks=1, sink_blocks=1, causal=causal)
    kept = 4
    idx = block_score_reference(qi, ki, shift, kept=kept, m=m, sub=sub, **kw)
    lv = _brute_levels(qi, ki, shift, nq, nk, bk, bq, 1, 1, causal, m, bk // (sub or bk))
    nkb = lv.shape[-1]
    for bb, hh, i in ((0, 0, 0), (0, 1, 2), (0, 0, 1), (0, 1, 1)):
        order = sorted((j for j in range(nkb) if lv[bb, hh, i, j] >= 0), key=lambda j: (-int(lv[bb, hh, i, j]), j))[:kept]
        want = sorted(order) + [-1] * (kept - len(order))
        assert idx[bb, hh, i].tolist() == want


def test_quantize_codes_scale_and_shift():
    g = torch.Generator().manual_seed(2)
    cq, ck = torch.randn(2, 3, 5, 40, generator=g), torch.randn(2, 3, 9, 40, generator=g) * 7
    ck[..., 3] *= 100  # one wide key channel: balanced against its query channel
    qi, ki, shift, unit = quantize_codes(cq, ck, resolution=0.1, return_unit=True)
    assert qi.dtype == ki.dtype == torch.int8 and qi.shape[-1] == ki.shape[-1] == code_width(40) == 64
    assert int(qi[..., 40:].abs().max()) == 0 and int(qi.abs().amax(dim=(-2, -1)).min()) == 127
    level = unit * torch.pow(2.0, shift.double())
    assert bool(((level <= 0.1 + 1e-12) | (shift == 0)).all()) and bool((level * 2 > 0.1).all())  # shift 0: int8 is coarser
    # integer scores × unit are the float scores up to int8 rounding
    approx = (qi.double() @ ki.double().transpose(-1, -2)) * unit.reshape(2, 3, 1, 1)
    exact = cq.double() @ ck.double().transpose(-1, -2)
    assert float((approx - exact).abs().max()) < 0.03 * float(exact.abs().max())


def test_errors_name_the_argument():
    qi = torch.zeros(1, 1, 2, 32, dtype=torch.int8)
    kw = dict(kept=1, num_queries=4, num_keys=4, block_size=2, query_block_size=2, local_blocks=0, sink_blocks=0, causal=False)
    with pytest.raises(ValueError, match="int8"):
        select_from_codes(qi.float(), qi, torch.zeros(1, dtype=torch.int32), **kw)
    with pytest.raises(ValueError, match="shift"):
        select_from_codes(qi, qi, torch.zeros(3, dtype=torch.int32), **kw)
    with pytest.raises(ValueError, match="m must"):
        select_blocks_codes(torch.randn(1, 1, 8, 4), torch.randn(1, 1, 8, 4), block_size=4, query_block_size=4, m=3)
    with pytest.raises(ValueError, match="powers of two"):
        select_blocks_codes(torch.randn(1, 1, 12, 4), torch.randn(1, 1, 12, 4), block_size=6, query_block_size=6, m=3,
                            backend="triton")
    with pytest.raises(ValueError, match="backend"):
        select_blocks_codes(torch.randn(1, 1, 8, 4), torch.randn(1, 1, 8, 4), backend="cuda")


@pytest.mark.parametrize("scorer", ["pooled", "parent", "moments", "subgrid", "learned"])
def test_select_blocks_scorer_on_the_kernel(scorer):
    """``vidhash.attention.select_blocks(scorer=..., backend="triton")`` runs the block-score kernel
    and gives the reference's indices; ``hash_attention`` then attends on the kernels."""
    from vidhash.attention import hash_attention, select_blocks
    from vidhash.selection import LearnedBlockScorer

    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 2, 80, 64, generator=g).to(DEV) for _ in range(3))
    if scorer == "learned":
        scorer = LearnedBlockScorer(64, 2).to(DEV)
        with torch.no_grad():
            scorer.wq.add_(0.1 * torch.randn(scorer.wq.shape, generator=g).to(DEV))
    kw = dict(density=0.3, block_size=16, query_block_size=16, causal=scorer != "parent")  # parent: non-causal
    out = select_blocks(q, k, scorer=scorer, backend="triton", **kw)
    ref = select_blocks(q, k, scorer=scorer, backend="reference", **kw)
    assert torch.equal(out.indices, ref.indices)
    if scorer == "pooled":
        got = hash_attention(q, k, v, scorer=scorer, backend="triton", **kw)
        want = hash_attention(q, k, v, scorer=scorer, backend="reference", **kw)
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("r,rows,extra,factor,resolution", [
    pytest.param(20, (13, 40), (3, 0), 0.5 ** 0.5, 1 / 16, id="r20-padded-rows-sqrt-half"),
    pytest.param(64, (70, 33), (0, 2), 1.0, 0.1, id="r64-res0.1"),
    pytest.param(120, (5, 300), (0, 0), 0.125, 0.5, id="r120-moments-width"),
])
def test_quantize_kernel_equals_the_torch_codes(r, rows, extra, factor, resolution):
    """The one-launch quantisation (``ops.quantize_codes_triton``) gives ``naive.quantize_codes``' int8
    codes and shift exactly: scaled inputs, zero rows appended, a dead channel, an all-zero head."""
    from vidhash.kernels.block_score.naive import _pad_rows
    from vidhash.kernels.block_score.ops import quantize_codes_triton

    g = torch.Generator().manual_seed(r)
    cq = torch.randn(2, 3, rows[0], r, generator=g) * torch.rand(1, 3, 1, r, generator=g) * 5
    ck = torch.randn(2, 3, rows[1], r, generator=g) * 0.3
    cq[..., 1] = 0  # a channel only the keys use: balance 1
    cq[1, 2], ck[1, 2] = 0, 0  # a head with nothing in it: scale clamped, codes 0
    if factor == 1.0:  # head (0, 1): one channel, ranges 127 on both sides → balance 1, scale 1: exact ties
        cq[0, 1], ck[0, 1] = 0, 0
        cq[0, 1, :5, 2] = torch.tensor([127.0, -2.5, 3.5, -0.5, 0.5])
        ck[0, 1, :2, 2] = torch.tensor([-127.0, 1.5])
    rq, rk = rows[0] + extra[0], rows[1] + extra[1]
    want = quantize_codes(_pad_rows(cq * factor, rq), _pad_rows(ck * factor, rk), resolution)
    got = quantize_codes_triton(cq.to(DEV), ck.to(DEV), factor, rq, rk, resolution)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.cpu(), b), (a.cpu().float() - b.float()).abs().max()
    assert got[0].abs().amax() == 127 and (got[0][1, 2] == 0).all()
    if factor == 1.0:  # round half to even, as torch.round
        assert got[0][0, 1, :5, 2].tolist() == [127, -2, 4, 0, 0] and got[1][0, 1, :2, 2].tolist() == [-127, 2]


def test_quantize_reference_rounds_its_square_root():
    """The balance √(max|k| / max|q|) correctly rounded in the reference too (torch's float32 sqrt on a
    CPU is not on ~18 % of inputs): here it moved a code across a rounding boundary (11 vs 12)."""
    from vidhash.kernels.block_score.ops import quantize_codes_triton

    cq = torch.ones(1, 1, 1, 8)
    ck = torch.tensor([[0.5884774327278137] * 8, [0.053287323564291] * 8])[None, None]
    want = quantize_codes(cq, ck)
    got = quantize_codes_triton(cq.to(DEV), ck.to(DEV), 1.0, 1, 2)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(got, want)) and want[1][0, 0, 1, 0] == 12


@pytest.mark.parametrize("resolution", [1e-32, 1e25, 0.0, float("nan")])
def test_both_quantisations_refuse_the_same_resolutions(resolution):
    from vidhash.kernels.block_score.ops import quantize_codes_triton

    cq, ck = torch.randn(1, 1, 3, 8), torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="resolution must be in"):
        quantize_codes(cq, ck, resolution)
    with pytest.raises(ValueError, match="resolution must be in"):
        quantize_codes_triton(cq.to(DEV), ck.to(DEV), 1.0, 3, 4, resolution)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_no_queries_give_an_empty_selection(backend):
    """No query blocks: ``(b, h, 0, kept)`` indices, as the float path gives (the codes need a row)."""
    from vidhash.attention import select_blocks

    q, k = torch.randn(1, 2, 0, 16).to(DEV), torch.randn(1, 2, 50, 16).to(DEV)
    kw = dict(density=0.3, block_size=8, query_block_size=16)
    want = select_blocks(q, k, scorer="pooled", backend="auto" if DEV == "cpu" else "reference", **kw)
    for scorer in ("pooled", "moments", "subgrid"):
        sel = select_blocks(q, k, scorer=scorer, backend=backend, **kw)
        assert sel.indices.shape == want.indices.shape == (1, 2, 0, want.kept) and sel.num_queries == 0
    with pytest.raises(ValueError, match="m must"):
        select_blocks_codes(q, k, m=3, backend=backend, **kw)


class _Spy:
    """Wraps the kernel: records each launch's ``STORE`` (so a test knows which form ran)."""

    def __init__(self, kernel):
        self.kernel, self.stores = kernel, []

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.stores.append(kwargs["STORE"])
            return launch(*args, **kwargs)

        return run


STORED = [CASES[i] for i in (0, 1, 2, 4, 6, 7)]  # pooled, m4, causal m2, one query, one block, bq128 causal


@pytest.mark.parametrize("b,h,nq,nk,d,bk,bq,local,sink,causal,density,m,sub", STORED)
def test_stored_levels_keep_the_indices(b, h, nq, nk, d, bk, bq, local, sink, causal, density, m, sub, monkeypatch):
    """``ops.STORE_LEVELS``: the coarse pass writes the levels, the later passes read them — the same
    indices as the reference; above ``STORE_LEVELS_MAX_BYTES`` of scratch the kernel scores again."""
    from vidhash.kernels.block_score import ops

    g = torch.Generator().manual_seed(nq * 7 + nk)
    q, k = torch.randn(b, h, nq, d, generator=g).to(DEV), torch.randn(b, h, nk, d, generator=g).to(DEV)
    kw = dict(density=density, block_size=bk, query_block_size=bq, local_blocks=local, sink_blocks=sink,
              causal=causal, m=m, sub=sub)
    ref = select_blocks_codes(q, k, backend="reference", **kw)
    spy = _Spy(ops.block_score_kernel)
    monkeypatch.setattr(ops, "block_score_kernel", spy)
    monkeypatch.setattr(ops, "STORE_LEVELS", True)
    assert torch.equal(select_blocks_codes(q, k, backend="triton", **kw).indices, ref.indices)
    monkeypatch.setattr(ops, "STORE_LEVELS_MAX_BYTES", 1)  # no room: scored again in every pass
    assert torch.equal(select_blocks_codes(q, k, backend="triton", **kw).indices, ref.indices)
    assert spy.stores == [True, False]


@pytest.mark.parametrize("m,sub", [pytest.param(1, None, id="pooled"), pytest.param(2, 4, id="m2-sub4")])
def test_stored_levels_break_ties_and_cut_on_the_floor(m, sub, monkeypatch):
    """The stored form on the tie and floor-level cases above (many equal levels; a cut on level 0)."""
    from vidhash.kernels.block_score import ops

    monkeypatch.setattr(ops, "STORE_LEVELS", True)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 96, 32, generator=g).to(DEV)
    k = torch.randn(1, 2, 40, 32, generator=g).round().repeat(1, 1, 4, 1).to(DEV)
    kw = dict(density=0.3, block_size=8, query_block_size=32, local_blocks=0, sink_blocks=0, m=m, sub=sub)
    for resolution in (1 / 16, 1e6):
        out = select_blocks_codes(q, k, backend="triton", resolution=resolution, **kw)
        assert torch.equal(out.indices, select_blocks_codes(q, k, backend="reference", resolution=resolution, **kw).indices)
    q, k = (torch.randn(1, 2, 128, 32, generator=g) * 20).to(DEV), (torch.randn(1, 2, 256, 32, generator=g) * 20).to(DEV)
    kw = dict(density=0.6, block_size=8, query_block_size=16, local_blocks=1, sink_blocks=1, causal=True, m=m, sub=sub)
    out = select_blocks_codes(q, k, backend="triton", **kw)
    assert torch.equal(out.indices, select_blocks_codes(q, k, backend="reference", **kw).indices)
