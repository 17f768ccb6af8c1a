"""``select_blocks(..., scorer=...)`` and ``hash_attention(..., scorer=...)`` against brute-force
readings of the selection rules (Python loops over blocks), on the torch references (CPU).

The code scorers (``pooled``, ``moments``, learned linear/diag) rank int8 block codes: against
exact float scores they may swap two blocks whose scores differ by less than the codes'
rounding, so the random-input tests allow that bound (computed from the float codes) and the
separated-input tests ask for the brute force's indices exactly.
"""
import math

import pytest
import torch

from vidhash.attention import SCORERS, block_sparse_attention, dense_attention, hash_attention, select_blocks, selection_recall
from vidhash.hashing import default_hasher, hamming_similarity
from vidhash.kernels.block_score.naive import RESOLUTION, select_blocks_codes_reference
from vidhash.kernels.block_select.naive import forced_and_allowed
from vidhash.kernels.block_select.naive import select_blocks as select_blocks_naive
from vidhash.kernels.signature.naive import block_signatures
from vidhash.selection import LearnedBlockScorer
from vidhash.selection.scorers import select_blocks_scored

# (b, h, nq, nk, d, block_size, query_block_size, causal, density)
SHAPES = [
    pytest.param(1, 2, 77, 77, 16, 8, 16, False, 0.3, id="B1-H2-N77-D16-bk8-bq16"),
    pytest.param(2, 1, 77, 77, 12, 8, 32, True, 0.3, id="B2-H1-N77-D12-bk8-bq32-causal"),
    pytest.param(1, 2, 50, 131, 8, 8, 16, True, 0.25, id="B1-H2-Nq50-Nk131-D8-causal"),
    pytest.param(1, 1, 9, 12, 8, 16, 16, False, 0.1, id="B1-H1-N9-one-block"),
]


def _qk(b, h, nq, nk, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, nq, d, generator=g), torch.randn(b, h, nk, d, generator=g)


def _blocks(x, size):
    """The token blocks of ``x (b, h, n, d)``: a list of ``(b, h, t, d)`` slices (the last one partial)."""
    return [x[:, :, i : i + size] for i in range(0, x.shape[-2], size)]


def _brute_codes(q, k, bk, bq, s, scorer):
    """Float block codes ``(b, h, nqb, r)``, ``(b, h, nkb, r)`` whose dot products are the scores."""
    if scorer == "moments":
        def stats(x, size):
            mean = torch.stack([blk.mean(-2) for blk in _blocks(x, size)], 2)
            sq = torch.stack([blk.square().mean(-2) for blk in _blocks(x, size)], 2)
            return mean, sq, (sq - mean.square()).clamp(min=0)
        mq, q2, vq = stats(q, bq)
        mk, _, vk = stats(k, bk)
        half = s / math.sqrt(2.0)
        return (torch.cat([mq * math.sqrt(s), q2 * half, vq * half], -1),
                torch.cat([mk * math.sqrt(s), vk * half, mk.square() * half], -1))
    cq = torch.stack([blk.mean(-2) for blk in _blocks(q, bq)], 2)
    ck = torch.stack([blk.mean(-2) for blk in _blocks(k, bk)], 2)
    if scorer == "parent" and bk < 64 and 64 % bk == 0:  # each key block's mean: 0.9 × its 64-token parent's + 0.1 × its own
        parents = [blk.mean(-2) for blk in _blocks(k, 64)]
        ck = torch.stack([0.9 * parents[j * bk // 64] + 0.1 * ck[:, :, j] for j in range(ck.shape[2])], 2)
    if isinstance(scorer, LearnedBlockScorer):
        wq, wk = scorer.weight("query").detach(), scorer.weight("key").detach()
        return torch.einsum("bhjd,hdr->bhjr", cq, wq), torch.einsum("bhjd,hdr->bhjr", ck, wk)
    return cq * math.sqrt(s), ck * math.sqrt(s)


def _rounding_bound(cq, ck):
    """Largest error the int8 codes (each channel balanced, then one scale per side) and the
    levels can add to the difference of two scores of one (batch, head): ``(b, h)``."""
    rq, rk = cq.abs().amax(-2), ck.abs().amax(-2)  # (b, h, r)
    top = (rq * rk).amax(-1)  # largest balanced range, squared
    return 2 * cq.shape[-1] * top / 127 + 2 * RESOLUTION


def _check_rules(idx, score, nq, nk, bk, bq, local, sink, causal, tol):
    """Every row: ascending, -1-padded, all forced blocks, nothing forbidden, and no kept free
    block scoring more than ``tol`` below a free block left out."""
    forced, allowed = forced_and_allowed(torch.arange(score.shape[2]), nq, nk, bq, bk, local, sink, causal)
    for bb in range(score.shape[0]):
        for hh in range(score.shape[1]):
            for i in range(score.shape[2]):
                row = [j for j in idx[bb, hh, i].tolist() if j >= 0]
                assert row == sorted(set(row)) and idx[bb, hh, i, len(row):].eq(-1).all()
                assert all(allowed[i, j] for j in row)
                want = [j for j in range(score.shape[3]) if allowed[i, j]]
                assert len(row) == min(len(want), idx.shape[-1])
                assert all(j in row for j in want if forced[i, j])
                kept = [float(score[bb, hh, i, j]) for j in row if not forced[i, j]]
                out = [float(score[bb, hh, i, j]) for j in want if j not in row]
                if kept and out:
                    assert min(kept) >= max(out) - float(tol[bb, hh]), (bb, hh, i)


def _pooled_scores(q, k, bq, bk):
    """Brute-force pooled scores ``(b, h, nqb, nkb)``: mean query token · mean key token per block pair."""
    return torch.stack([blk.mean(-2) for blk in _blocks(q, bq)], 2) @ torch.stack([blk.mean(-2) for blk in _blocks(k, bk)], 2).transpose(-1, -2)


def _best_first(blocks, forced_row, score_row):
    """``blocks`` in selection order: forced first, then the highest score, ties to the lower index."""
    return sorted(blocks, key=lambda j: (not bool(forced_row[j]), -float(score_row[j]), j))


def _rows(score_shape, allowed):
    """Every ``(b, h, query block)`` row with its allowed key blocks, ascending."""
    b, h, c, nkb = score_shape
    for bb in range(b):
        for hh in range(h):
            for i in range(c):
                yield bb, hh, i, [j for j in range(nkb) if allowed[i, j]]


def _brute_select(score, nq, nk, bk, bq, kept, local, sink, causal):
    """Forced blocks, then the highest score, ties to the lower index; ascending, -1-padded."""
    forced, allowed = forced_and_allowed(torch.arange(score.shape[2]), nq, nk, bq, bk, local, sink, causal)
    out = torch.full((*score.shape[:3], kept), -1, dtype=torch.int32)
    for bb in range(score.shape[0]):
        for hh in range(score.shape[1]):
            for i in range(score.shape[2]):
                cand = _best_first([j for j in range(score.shape[3]) if allowed[i, j]], forced[i], score[bb, hh, i])
                pick = sorted(cand[:kept])
                out[bb, hh, i, : len(pick)] = torch.tensor(pick, dtype=torch.int32)
    return out


def _learned(heads, d, features="linear", seed=0):
    scorer = LearnedBlockScorer(d, heads, features=features)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in (scorer.wq, scorer.wk):
            w.add_(0.3 * torch.randn(w.shape, generator=g))
    return scorer


# --------------------------------------------------------------------------------------------
# the default: pooled, or SimHash when a hasher is given (one rule: default_scorer)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("b,h,nq,nk,d,bk,bq,causal,density", SHAPES)
def test_default_scorer_is_pooled_or_simhash_with_a_hasher(b, h, nq, nk, d, bk, bq, causal, density):
    q, k = _qk(b, h, nq, nk, d, nk)
    v = torch.randn_like(k)
    kw = dict(density=density, block_size=bk, query_block_size=bq, causal=causal)
    pooled = select_blocks_codes_reference(q, k, scorer=None, **kw).indices
    assert torch.equal(select_blocks(q, k, **kw).indices, pooled)
    assert torch.equal(select_blocks(q, k, scorer="pooled", **kw).indices, pooled)
    assert torch.equal(hash_attention(q, k, v, **kw), hash_attention(q, k, v, scorer="pooled", **kw))
    hasher = default_hasher(d)
    want = select_blocks_naive(q, k, hasher=hasher, **kw).indices
    assert torch.equal(select_blocks(q, k, hasher=hasher, **kw).indices, want)
    assert torch.equal(select_blocks(q, k, scorer="simhash", **kw).indices, want)
    assert torch.equal(hash_attention(q, k, v, hasher=hasher, **kw), hash_attention(q, k, v, scorer="simhash", **kw))


def test_default_scorer_rule():
    from vidhash.attention import default_scorer, resolve_scorer

    assert default_scorer(False) == "pooled" and default_scorer(True) == "simhash"
    hasher = default_hasher(8)
    assert resolve_scorer(None, None) == "pooled" and resolve_scorer(None, hasher) == "simhash"
    assert resolve_scorer("moments", None) == "moments"


# --------------------------------------------------------------------------------------------
# code scorers: pooled, moments, learned linear / diag
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pooled", "parent", "moments", "learned-linear", "learned-diag"])
@pytest.mark.parametrize("b,h,nq,nk,d,bk,bq,causal,density", SHAPES)
def test_code_scorers_keep_the_best_blocks(name, b, h, nq, nk, d, bk, bq, causal, density):
    q, k = _qk(b, h, nq, nk, d, nq + nk)
    q = q + 0.5 * torch.randn(1, 1, 1, d, generator=torch.Generator().manual_seed(1))  # scores with a spread
    scorer = _learned(h, d, name.split("-")[1]) if name.startswith("learned") else name
    s = 0.4
    kw = dict(density=density, block_size=bk, query_block_size=bq, causal=causal, scale=s)
    if scorer == "parent" and causal:
        with pytest.raises(ValueError, match="non-causal"):
            select_blocks(q, k, scorer=scorer, **kw)
        return
    sel = select_blocks(q, k, scorer=scorer, **kw)
    cq, ck = _brute_codes(q, k, bk, bq, s, scorer)
    score = cq @ ck.transpose(-1, -2)
    assert (sel.block_size, sel.query_block_size, sel.num_queries, sel.num_keys) == (bk, bq, nq, nk)
    assert sel.kept == select_blocks_naive(q, k, density=density, block_size=bk, query_block_size=bq, causal=causal).kept
    _check_rules(sel.indices, score, nq, nk, bk, bq, 1, 1, causal, _rounding_bound(cq, ck))


@pytest.mark.parametrize("scorer", ["pooled", "moments"])
@pytest.mark.parametrize("causal", [pytest.param(False, id="N100-bk8-bq16"), pytest.param(True, id="N100-bk8-bq16-causal")])
def test_code_scorers_exact_on_separated_scores_with_ties(scorer, causal):
    """Constant key blocks ``c_j · u`` and queries ``u``: scores ``s · c_j`` one nat apart, some
    equal (ties to the lower index); moments equals pooled there (no variance)."""
    nq = nk = 100
    bk, bq, d = 8, 16, 8
    u = torch.nn.functional.normalize(torch.ones(d), dim=0)
    levels = torch.tensor([3, 7, 1, 7, 5, 0, 9, 2, 7, 4, 6, 9, 8])  # 13 key blocks, 7 and 9 repeated
    c = levels.repeat_interleave(bk)[:nk].float()
    k = (c.unsqueeze(-1) * u).expand(1, 2, nk, d).contiguous()
    q = u.expand(1, 2, nq, d).contiguous()
    kw = dict(density=0.3, block_size=bk, query_block_size=bq, causal=causal, local_blocks=0, sink_blocks=0, scale=1.0)
    sel = select_blocks(q, k, scorer=scorer, **kw)
    score = levels.float().expand(1, 2, -(-nq // bq), -1)
    assert torch.equal(sel.indices, _brute_select(score, nq, nk, bk, bq, sel.kept, 0, 0, causal))


def test_learned_codes_run_the_block_score_path():
    q, k = _qk(1, 2, 70, 90, 16, 3)
    scorer = _learned(2, 16)
    kw = dict(density=0.3, block_size=8, query_block_size=16, causal=True)
    want = select_blocks_codes_reference(q, k, scorer=scorer, **kw).indices
    assert torch.equal(select_blocks(q, k, scorer=scorer, **kw).indices, want)


# --------------------------------------------------------------------------------------------
# torch scorers: prefilter, learned minmax
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("b,h,nq,nk,d,bk,bq,causal,density", SHAPES)
def test_prefilter_matches_brute_force(b, h, nq, nk, d, bk, bq, causal, density):
    q, k = _qk(b, h, nq, nk, d, 2 * nq + nk)
    kw = dict(density=density, block_size=bk, query_block_size=bq, causal=causal)
    sel = select_blocks(q, k, scorer="prefilter", **kw)
    kept = sel.kept
    hasher = default_hasher(d)
    sim = hamming_similarity(block_signatures(q, bq, hasher, "query"), block_signatures(k, bk, hasher, "key"), hasher.n_bits)
    pooled = _pooled_scores(q, k, bq, bk)
    forced, allowed = forced_and_allowed(torch.arange(sim.shape[2]), nq, nk, bq, bk, 1, 1, causal)
    for bb, hh, i, ok in _rows(sim.shape, allowed):
        # 1. candidates: forced, then the 4 · kept most similar signatures
        cand = _best_first(ok, forced[i], sim[bb, hh, i])[: 4 * kept]
        # 2. kept: forced, then the best pooled score among the candidates
        pick = sorted(_best_first(cand, forced[i], pooled[bb, hh, i])[:kept])
        assert sel.indices[bb, hh, i].tolist() == pick + [-1] * (kept - len(pick))


@pytest.mark.parametrize("b,h,nq,nk,d,bk,bq,causal,density", SHAPES)
@pytest.mark.parametrize("stride", [1, 4])
def test_rescore_matches_brute_force(b, h, nq, nk, d, bk, bq, causal, density, stride):
    """rescore: pooled keeps forced + the 4·kept best blocks; every ``stride``-th query of a block then
    attends to the candidates' keys only (softmax over them, causal mask kept), and the summed
    probabilities per block pick the kept ones (forced first) — one query, one block at a time here."""
    q, k = _qk(b, h, nq, nk, d, 3 * nq + nk + stride)
    q = q * 2  # peaked attention: masses far apart
    kw = dict(density=density, block_size=bk, query_block_size=bq, causal=causal)
    sel = select_blocks_scored(q, k, scorer="rescore", stride=stride, **kw)
    kept, scale = sel.kept, d ** -0.5
    pooled = _pooled_scores(q, k, bq, bk)
    forced, allowed = forced_and_allowed(torch.arange(pooled.shape[2]), nq, nk, bq, bk, 1, 1, causal)
    for bb, hh, i, ok in _rows(pooled.shape, allowed):
        cand = _best_first(ok, forced[i], pooled[bb, hh, i])[: 4 * kept]
        mass = dict.fromkeys(cand, 0.0)
        for t in range(i * bq, min(nq, i * bq + bq), stride):
            keys = [kk for j in cand for kk in range(j * bk, min(nk, j * bk + bk))
                    if not causal or kk <= t + nk - nq]
            if not keys:
                continue
            p = torch.softmax(torch.stack([q[bb, hh, t] @ k[bb, hh, kk] for kk in keys]) * scale, 0)
            for kk, pk in zip(keys, p.tolist()):
                mass[kk // bk] += pk
        pick = sorted(_best_first(cand, forced[i], mass)[:kept])
        got = [j for j in sel.indices[bb, hh, i].tolist() if j >= 0]
        assert got == pick, (i, got, pick)


def test_rescore_keeps_more_mass_than_pooled_on_video_like_inputs():
    """The reason it exists: on the Wan-like grid (query blocks spanning rows of a frame) rescoring the
    pooled candidates keeps more of the exact mass (the Wan 1.3B shape: 0.853 against 0.733, oracle 0.891)."""
    from vidhash.bench.attention import video_like_qkv
    from vidhash.selection import oracle_recall

    q, k, _ = video_like_qkv((3, 30, 52), 2, 64, torch.float32, "cpu", 0)
    kw = dict(density=1 / 16, block_size=64, query_block_size=128)
    pooled = selection_recall(q, k, select_blocks(q, k, scorer="pooled", **kw))
    rescore = select_blocks(q, k, scorer="rescore", **kw)
    oracle = oracle_recall(q, k, rescore.kept, block_size=64, query_block_size=128)
    assert pooled < selection_recall(q, k, rescore) <= oracle + 1e-6


def test_learned_torch_scorer_matches_brute_force():
    q, k = _qk(1, 2, 77, 77, 12, 9)
    scorer = LearnedBlockScorer(12, 2, features="minmax")
    kw = dict(density=0.3, block_size=8, query_block_size=16, causal=True)
    sel = select_blocks(q, k, scorer=scorer, **kw)
    score = scorer.block_scores(q, k, torch.arange(5), block_size=8, query_block_size=16)
    assert torch.equal(sel.indices, _brute_select(score, 77, 77, 8, 16, sel.kept, 1, 1, True))


# --------------------------------------------------------------------------------------------
# hash_attention(scorer=...) and the arguments
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scorer", [*SCORERS[1:], "learned"])
def test_hash_attention_runs_the_chosen_selection(scorer):
    q, k = _qk(1, 2, 70, 70, 16, 4)
    v = torch.randn_like(k)
    causal = scorer != "parent"  # parent is non-causal
    scorer = _learned(2, 16) if scorer == "learned" else scorer
    kw = dict(density=0.3, block_size=8, query_block_size=16, causal=causal)
    out = hash_attention(q, k, v, scorer=scorer, backend="reference", **kw)
    want = block_sparse_attention(q, k, v, select_blocks(q, k, scorer=scorer, **kw))
    assert torch.equal(out, want)
    dense = hash_attention(q, k, v, scorer=scorer, density=1.0, block_size=8, causal=causal)
    torch.testing.assert_close(dense, dense_attention(q, k, v, causal=causal), rtol=1e-5, atol=1e-5)


def test_scorer_arguments_are_checked():
    q, k = _qk(1, 2, 40, 40, 16, 5)
    with pytest.raises(ValueError, match="scorer must be one of"):
        select_blocks(q, k, scorer="exact")
    with pytest.raises(ValueError, match="scorer must be one of"):
        select_blocks(q, k, scorer=3)
    with pytest.raises(ValueError, match="hasher"):
        select_blocks(q, k, scorer="pooled", hasher=default_hasher(16))
    with pytest.raises(ValueError, match="heads"):
        select_blocks(q, k, scorer=LearnedBlockScorer(16, 3))
    with pytest.raises(ValueError, match="scorer must be one of"):
        hash_attention(q, k, k, scorer="oracle")


def test_rescore_takes_query_blocks_that_8_does_not_divide():
    """The default stride is every 8th query or the largest divisor of the query block below it (a
    stride the caller cannot set must not make a valid block size fail)."""
    q, k = _qk(1, 2, 100, 100, 16, 4)
    for bk, bq in ((16, 12), (4, 4), (8, 20)):
        sel = select_blocks(q, k, scorer="rescore", density=0.3, block_size=bk, query_block_size=bq)
        assert sel.indices.shape[-1] == sel.kept
    assert hash_attention(q, k, k, scorer="rescore", density=0.3, block_size=4).shape == q.shape


def test_score_blocks_needs_kept_for_candidate_scorers():
    from vidhash.selection import score_blocks

    q, k = _qk(1, 1, 64, 64, 8, 2)
    for scorer in ("prefilter", "rescore"):
        with pytest.raises(ValueError, match="kept="):
            score_blocks(q, k, scorer, block_size=8)
        scores = score_blocks(q, k, scorer, block_size=8, kept=2)
        assert int((scores > -1e29).sum(-1).min()) == min(8, 4 * 2)  # factor 4 × kept candidates scored


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_parent_is_pooled_at_blocks_of_64_and_ranks_by_parents_below(backend):
    """``parent`` at key blocks of 64 selects as ``pooled``; at 16 its float path (auto on a CPU) and
    its int8 codes (reference) keep the blocks of the brute-force parent scores, and key blocks of
    one strong 64-token parent outrank a lone strong 16-token block elsewhere."""
    q, k = _qk(1, 2, 256, 256, 16, 3)
    kw = dict(density=0.25, block_size=64, query_block_size=64, scale=0.3, backend=backend)
    assert torch.equal(select_blocks(q, k, scorer="parent", **kw).indices, select_blocks(q, k, scorer="pooled", **kw).indices)
    u = torch.nn.functional.normalize(torch.ones(16), dim=0)
    k = torch.zeros(1, 1, 256, 16)
    k[:, :, 128:192] = 2.0 * u  # one whole 64-token parent (blocks 8-11) at 2
    k[:, :, 64:80] = 3.0 * u  # block 4 alone at 3: its parent (blocks 4-7) averages 0.75
    q = u.expand(1, 1, 64, 16).contiguous()
    kw = dict(density=4 / 16, block_size=16, query_block_size=64, local_blocks=0, sink_blocks=0, scale=1.0, backend=backend)
    assert select_blocks(q, k, scorer="pooled", **kw).indices[0, 0, 0].tolist() == [4, 8, 9, 10]
    assert select_blocks(q, k, scorer="parent", **kw).indices[0, 0, 0].tolist() == [8, 9, 10, 11]


def test_parent_takes_one_path_and_refuses_causal():
    """``hash_attention(scorer="parent")`` off CUDA selects as ``select_blocks`` does (the float top-k on
    ``backend="auto"``, as pooled), and every entry point refuses ``causal=True``: a 64-token parent may
    hold keys after a causal query block's last position."""
    q, k = _qk(1, 2, 512, 512, 16, 9)
    v = torch.randn_like(k)
    kw = dict(density=0.25, block_size=16, query_block_size=64)
    for scorer in ("pooled", "parent"):
        sel = select_blocks(q, k, scorer=scorer, **kw)
        torch.testing.assert_close(hash_attention(q, k, v, scorer=scorer, **kw), block_sparse_attention(q, k, v, sel),
                                   rtol=0, atol=1e-6)
    for backend in ("auto", "reference"):
        with pytest.raises(ValueError, match="non-causal"):
            select_blocks(q, k, scorer="parent", causal=True, backend=backend, **kw)
        with pytest.raises(ValueError, match="non-causal"):
            hash_attention(q, k, v, scorer="parent", causal=True, backend=backend, **kw)
    with pytest.raises(ValueError, match="non-causal"):
        select_blocks_scored(q, k, scorer="parent", causal=True, **kw)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_subgrid_keeps_a_block_one_part_of_the_query_block_wants(backend):
    """``subgrid``: 4 query sub-centroids, a pair ranked by its best sub-centroid's level below that
    sub-centroid's best free block. A quarter of the query block points at block 0, the rest at
    blocks 1-3 (2.0, 1.8, 1.6): pooled averages block 0 down (1.0 against 1.5 / 1.35 / 1.2) and keeps
    1, 2, 3; subgrid keeps 0 (its quarter's best) and 1, 2 (0 and −0.2 below the rest's best)."""
    d = 16
    u1, u2 = torch.eye(d)[0], torch.eye(d)[1]
    k = torch.zeros(1, 1, 128, d)
    for j, x in enumerate((4.0 * u1, 2.0 * u2, 1.8 * u2, 1.6 * u2)):
        k[:, :, 16 * j : 16 * j + 16] = x
    q = torch.cat([u1.expand(16, d), u2.expand(48, d)]).expand(1, 1, 64, d).contiguous()
    kw = dict(density=3 / 8, block_size=16, query_block_size=64, local_blocks=0, sink_blocks=0, scale=1.0, backend=backend)
    assert select_blocks(q, k, scorer="pooled", **kw).indices[0, 0, 0].tolist() == [1, 2, 3]
    assert select_blocks(q, k, scorer="subgrid", **kw).indices[0, 0, 0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("b,h,nq,nk,d,bk,bq,causal,density", SHAPES)
def test_subgrid_is_the_m4_codes_on_every_backend(b, h, nq, nk, d, bk, bq, causal, density):
    """``select_blocks(scorer="subgrid")`` and ``hash_attention`` run the block-score codes with 4 query
    sub-centroids (no float path off CUDA: the CPU's ``auto`` and ``reference`` rank alike; the kernel
    against them: tests/kernels/test_block_score.py); a query block that 4 does not divide is refused
    naming the scorer, per token included."""
    q, k = _qk(b, h, nq, nk, d, 5 * nq + nk)
    v = torch.randn_like(k)
    kw = dict(density=density, block_size=bk, query_block_size=bq, causal=causal)
    want = select_blocks_codes_reference(q, k, m=4, **kw).indices
    for backend in ("auto", "reference"):
        sel = select_blocks(q, k, scorer="subgrid", backend=backend, **kw)
        assert torch.equal(sel.indices, want)
        assert torch.equal(hash_attention(q, k, v, scorer="subgrid", backend=backend, **kw), block_sparse_attention(q, k, v, sel))
    for bk, bq in ((8, 6), (1, None), (2, None)):
        with pytest.raises(ValueError, match="scorer='subgrid' splits each query block into 4"):
            select_blocks(q, k, scorer="subgrid", density=0.5, block_size=bk, query_block_size=bq)
        with pytest.raises(ValueError, match="query_block_size must be a multiple of 4"):
            hash_attention(q, k, v, scorer="subgrid", density=0.5, block_size=bk, query_block_size=bq)
