"""Block-pair scorers and the learned block scorer against brute-force references."""
import math

import pytest
import torch

from vidhash.attention import select_blocks
from vidhash.kernels.block_select.naive import forced_and_allowed
from vidhash.selection import LearnedBlockScorer, oracle_recall, score_blocks, select_blocks_scored, selection_mass
from vidhash.selection.oracle import block_mass

SHAPES = [
    pytest.param(2, 3, 77, 77, 16, 16, 32, False, id="B2-H3-N77-D16-bk16-bq32"),
    pytest.param(1, 2, 77, 77, 16, 16, 32, True, id="B1-H2-N77-causal"),
    pytest.param(1, 2, 50, 130, 8, 8, 16, True, id="B1-H2-Nq50-Nk130-bk8-causal"),
    pytest.param(1, 2, 9, 12, 8, 16, 16, False, id="B1-H2-N9-one-block"),
]


def _qk(b, h, nq, nk, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, nq, d, generator=g), torch.randn(b, h, nk, d, generator=g)


def _brute_select(score, nq, nk, bk, bq, kept, local, sink, causal):
    """Forced blocks, then the highest score, ties to the lower index; ascending, -1-padded (loops)."""
    forced, allowed = forced_and_allowed(torch.arange(score.shape[2]), nq, nk, bq, bk, local, sink, causal)
    out = torch.full((*score.shape[:3], kept), -1, dtype=torch.int32)
    for bb in range(score.shape[0]):
        for hh in range(score.shape[1]):
            for i in range(score.shape[2]):
                cand = [j for j in range(score.shape[3]) if allowed[i, j]]
                cand.sort(key=lambda j: (not bool(forced[i, j]), -float(score[bb, hh, i, j]), j))
                pick = sorted(cand[:kept])
                out[bb, hh, i, : len(pick)] = torch.tensor(pick, dtype=torch.int32)
    return out


@pytest.mark.parametrize("b,h,nq,nk,d,bk,bq,causal", SHAPES)
def test_simhash_scorer_is_select_blocks(b, h, nq, nk, d, bk, bq, causal):
    q, k = _qk(b, h, nq, nk, d, nq)
    kw = dict(density=0.3, block_size=bk, query_block_size=bq, causal=causal)
    assert torch.equal(select_blocks_scored(q, k, scorer="simhash", **kw).indices, select_blocks(q, k, scorer="simhash", **kw).indices)


@pytest.mark.parametrize("b,h,nq,nk,d,bk,bq,causal", SHAPES)
def test_pooled_matches_brute_force(b, h, nq, nk, d, bk, bq, causal):
    q, k = _qk(b, h, nq, nk, d, nk)
    s = 0.3
    qm = torch.stack([q[:, :, i : i + bq].mean(-2) for i in range(0, nq, bq)], 2)
    km = torch.stack([k[:, :, j : j + bk].mean(-2) for j in range(0, nk, bk)], 2)
    want = qm @ km.transpose(-1, -2) * s
    torch.testing.assert_close(score_blocks(q, k, "pooled", block_size=bk, query_block_size=bq, scale=s), want)
    sel = select_blocks_scored(q, k, scorer="pooled", density=0.3, block_size=bk, query_block_size=bq, causal=causal, scale=s)
    assert torch.equal(sel.indices, _brute_select(want, nq, nk, bk, bq, sel.kept, 1, 1, causal))


def test_ties_and_subgrid_reduces_to_pooled():
    q, k = _qk(1, 2, 96, 40, 8, 1)
    k = k.round().repeat(1, 1, 4, 1)  # 160 keys: every key block four times
    kw = dict(density=0.3, block_size=8, query_block_size=32, local_blocks=0, sink_blocks=0)
    pooled = select_blocks_scored(q, k, scorer="pooled", **kw)
    score = score_blocks(q, k, "pooled", block_size=8, query_block_size=32)
    assert torch.equal(pooled.indices, _brute_select(score, 96, 160, 8, 32, pooled.kept, 0, 0, False))
    grid = select_blocks_scored(q, k, scorer="subgrid", m=1, sub=8, **kw)  # one cell per pair
    assert torch.equal(grid.indices, pooled.indices)


@pytest.mark.parametrize("reduce", ["max", "lse"])
def test_subgrid_matches_brute_force(reduce):
    nq, nk, d, bk, bq, m, sub, s = 40, 50, 8, 8, 16, 4, 4, 0.5
    q, k = _qk(1, 2, nq, nk, d, 7)
    got = score_blocks(q, k, "subgrid", block_size=bk, query_block_size=bq, scale=s, m=m, sub=sub, reduce=reduce, causal=True)
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    _, allowed = forced_and_allowed(torch.arange(nqb), nq, nk, bq, bk, 0, 0, True)
    for bb, hh, i in ((0, 0, 0), (0, 1, 2)):
        runs = [q[bb, hh, p : p + bq // m] for p in range(i * bq, min(nq, (i + 1) * bq), bq // m)]
        cells = [k[bb, hh, p : p + sub] for p in range(0, nk, sub)]
        ok = [bool(allowed[i, p // bk]) for p in range(0, nk, sub)]
        for j in range(nkb):
            if not allowed[i, j]:
                continue
            vals = []
            for run in runs:
                logit = torch.stack([s * run.mean(0) @ c.mean(0) for c in cells])
                logit = logit.masked_fill(~torch.tensor(ok), float("-inf"))
                if reduce == "max":
                    norm = logit - logit.max()
                    vals += [norm[c] for c in range(len(cells)) if c * sub // bk == j]
                else:
                    logp = torch.log_softmax(logit + torch.tensor([math.log(len(c)) for c in cells]), 0)
                    vals += [logp[c] + math.log(len(run)) for c in range(len(cells)) if c * sub // bk == j]
            want = max(vals) if reduce == "max" else torch.logsumexp(torch.stack(vals), 0)
            assert math.isclose(float(got[bb, hh, i, j]), float(want), rel_tol=1e-4, abs_tol=1e-5)


def test_oracle_scorer_reaches_the_oracle_and_prefilter_keeps_candidates():
    q, k = _qk(1, 2, 150, 150, 16, 3)
    q = q * 3
    kw = dict(density=0.2, block_size=8, query_block_size=32, local_blocks=0, sink_blocks=0)
    sel = select_blocks_scored(q, k, scorer="oracle", **kw)
    want = oracle_recall(q, k, sel.kept, block_size=8, query_block_size=32)
    assert math.isclose(selection_mass(q, k, sel), want, rel_tol=1e-6)
    for scorer in ("simhash", "pooled", "moments", "prefilter"):
        assert selection_mass(q, k, select_blocks_scored(q, k, scorer=scorer, **kw)) <= want + 1e-6
    # factor 1: the prefilter keeps exactly SimHash's blocks, only reordered
    pre = select_blocks_scored(q, k, scorer="prefilter", factor=1, **kw)
    assert torch.equal(pre.indices, select_blocks_scored(q, k, scorer="simhash", **kw).indices)


def test_query_blocks_subset_and_errors():
    q, k = _qk(1, 1, 100, 100, 8)
    full = select_blocks_scored(q, k, scorer="pooled", density=0.3, block_size=8, query_block_size=16)
    rows = torch.tensor([6, 0, 3])
    assert torch.equal(select_blocks_scored(q, k, scorer="pooled", density=0.3, block_size=8, query_block_size=16,
                                            query_blocks=rows), full.indices[:, :, rows])
    with pytest.raises(ValueError, match="scorer"):
        select_blocks_scored(q, k, scorer="nope")
    with pytest.raises(ValueError, match="m=3"):
        score_blocks(q, k, "subgrid", block_size=8, query_block_size=16, m=3)


# ------------------------------------------------------------------------------------ learned


def test_learned_starts_as_pooled_and_fit_finds_what_pooling_misses():
    """Key blocks differ in the spread of channel 0 (which the mass follows, by convexity of exp)
    and their mean of channel 1 tracks it; queries carry a constant channel 2. Mean q · mean k
    sees nothing; a learned map can pair query channel 2 with key channel 1."""
    g = torch.Generator().manual_seed(0)
    nq, nk, bk, bq = 256, 512, 16, 32
    spread = torch.rand(1, 2, nk // bk, 1, generator=g).repeat_interleave(bk, 2) * 2
    k = torch.zeros(1, 2, nk, 4)
    k[..., 0:1] = spread * torch.randn(1, 2, nk, 1, generator=g)
    k[..., 1:2] = spread
    q = torch.zeros(1, 2, nq, 4)
    q[..., 0] = 4 * torch.randn(1, 2, nq, generator=g)
    q[..., 2] = 1.0
    scorer = LearnedBlockScorer(4, heads=2)
    blocks = torch.arange(nq // bq)
    init = scorer.block_scores(q, k, blocks, block_size=bk, query_block_size=bq)
    torch.testing.assert_close(init, score_blocks(q, k, "pooled", block_size=bk, query_block_size=bq))
    report = scorer.fit(q, k, block_size=bk, query_block_size=bq, kept=4, steps=40, lr=5e-2)
    assert report["kept_share_after"] > report["kept_share_before"] + 0.1
    assert report["held_out_after"] >= report["held_out_before"] and 0 < report["step"] <= 40  # early stopping keeps the best
    scorer.eval()
    sel = select_blocks_scored(q, k, scorer=scorer, density=4 / 32, block_size=bk, query_block_size=bq, local_blocks=0, sink_blocks=0)
    pooled = select_blocks_scored(q, k, scorer="pooled", density=4 / 32, block_size=bk, query_block_size=bq, local_blocks=0, sink_blocks=0)
    assert selection_mass(q, k, sel) > selection_mass(q, k, pooled) + 0.05


def test_learned_bits_score_is_hamming_and_mlp_codes_are_block_means():
    q, k = _qk(1, 2, 70, 90, 8, 2)
    bits = LearnedBlockScorer(8, heads=2, rank=20, codes="bits").eval()
    s = bits.block_scores(q, k, torch.arange(3), block_size=16, query_block_size=32)
    assert s.shape == (1, 2, 3, 6) and float(s.min()) >= 0 and float(s.max()) <= 20 and torch.equal(s, s.round())
    sig = bits.signatures(k, 16, "key")
    assert sig.shape == (1, 2, 6, 1) and sig.dtype == torch.int32
    mlp = LearnedBlockScorer(8, heads=2, features="mlp")
    codes = mlp.block_codes(k, 16, "key")
    torch.testing.assert_close(codes[:, :, -1], mlp.token_codes(k, "key")[:, :, 80:].mean(-2))  # partial last block
    with pytest.raises(ValueError, match="features"):
        LearnedBlockScorer(8, heads=2, features="conv")
    with pytest.raises(ValueError, match="heads"):
        bits.block_codes(torch.randn(1, 3, 8, 8), 4, "key")


def test_learned_grid_starts_as_subgrid_and_runs_through_the_kernel_form():
    from vidhash.kernels.block_score.ops import select_blocks_codes

    q, k = _qk(1, 2, 300, 290, 16, 9)
    q = q * 2
    scorer = LearnedBlockScorer(16, heads=2, m=4, sub=8).eval()
    blocks = torch.arange(10)
    got = scorer.block_scores(q, k, blocks, block_size=32, query_block_size=32)
    want = score_blocks(q, k, "subgrid", block_size=32, query_block_size=32, m=4, sub=8, reduce="max", scale=0.25)
    torch.testing.assert_close(got, want)
    kw = dict(density=0.2, block_size=32, query_block_size=32, m=4, sub=8, backend="reference")
    assert torch.equal(select_blocks_codes(q, k, scorer=scorer, **kw).indices, select_blocks_codes(q, k, **kw).indices)
    report = scorer.fit(q, k, block_size=32, query_block_size=32, kept=3, steps=15, local_blocks=1, sink_blocks=1)
    assert report["kept_share_after"] > report["kept_share_before"]
    with pytest.raises(ValueError, match="grid"):
        LearnedBlockScorer(16, heads=2, m=4, codes="bits")


def test_held_out_rows_are_whole_clips_or_spread_blocks():
    from vidhash.selection.learned import _held_out_rows

    rows = _held_out_rows(torch.zeros(6, 2, 3, 5), 1 / 3)
    assert rows.shape == (6, 1, 3) and rows[4:].all() and not rows[:4].any()
    rows = _held_out_rows(torch.zeros(1, 2, 8, 5), 0.25)
    assert rows[0, 0].tolist() == [False, False, False, True] * 2
    assert not _held_out_rows(torch.zeros(3, 1, 4, 2), 0).any()
    with pytest.raises(ValueError, match="held_out"):
        _held_out_rows(torch.zeros(3, 1, 4, 2), 1.0)


def test_learned_diag_starts_as_pooled_and_weighs_channels():
    q, k = _qk(1, 2, 130, 140, 8, 4)
    scorer = LearnedBlockScorer(8, heads=2, features="diag")
    blocks = torch.arange(5)
    torch.testing.assert_close(scorer.block_scores(q, k, blocks, block_size=16, query_block_size=32),
                               score_blocks(q, k, "pooled", block_size=16, query_block_size=32, query_blocks=blocks))
    with torch.no_grad():
        scorer.wq[:, 3:] = 0  # channels 3.. ignored
    want = score_blocks(q[..., :3], k[..., :3], "pooled", block_size=16, query_block_size=32, scale=8**-0.5)
    torch.testing.assert_close(scorer.block_scores(q, k, blocks, block_size=16, query_block_size=32), want[:, :, :5])
    assert sum(p.numel() for p in scorer.parameters() if p.ndim == 2) == 2 * 2 * 8


@pytest.mark.parametrize("causal", [False, True])
def test_rank_top_is_a_stable_sort_without_sorting(causal):
    """rank_top's one topk of order_keys keeps what a stable descending sort keeps: heavy ties (integer
    scores), -0.0 beside 0.0, ±inf scores, forced and disallowed blocks, rows short of allowed blocks."""
    from vidhash.selection.scorers import order_keys, rank_top

    g = torch.Generator().manual_seed(5)
    nq, nk, bq, bk = 70, 130, 10, 10
    nqb, nkb = 7, 13
    score = torch.randint(-3, 4, (2, 3, nqb, nkb), generator=g).float()
    score[0, 0, 0, :4] = torch.tensor([-0.0, 0.0, float("inf"), float("-inf")])
    forced, allowed = forced_and_allowed(torch.arange(nqb), nq, nk, bq, bk, 1, 1, causal)
    for kept in (1, 4, nkb):
        rank = torch.where(forced, float("inf"), score).where(allowed, float("-inf"))
        order = torch.sort(rank, dim=-1, descending=True, stable=True).indices[..., :kept]
        ok = allowed.expand_as(rank).gather(-1, order)
        want = torch.where(ok, order, nkb).sort(dim=-1).values
        want = torch.where(want == nkb, -1, want).to(torch.int32)
        assert torch.equal(rank_top(score, forced, allowed, kept), want)
    keys = order_keys(torch.tensor([float("-inf"), -2.0, -0.0, 0.0, 1.5, float("inf")]))
    assert keys.argsort(descending=True).tolist() == [5, 4, 2, 3, 1, 0]  # ±0 tie: the lower index first
