"""Triton kernel: per query block, keep the top key blocks by Hamming similarity.

Letters: b batch, h heads, c query blocks, j key blocks, w packed signature words.

One program per ``(query block, batch·head)``. Scores are small integers — a key block's
score is ``n_bits + 1`` when it is forced (sink or local), else the Hamming similarity
``n_bits - popcount(q ^ k)`` in ``[0, n_bits]``; blocks the causal mask forbids are left out —
so top-k needs no sort:

1. pass over the key blocks: histogram of the scores (``n_bits + 2`` bins);
2. the cut score ``T``: the largest score with at least ``kept`` blocks scoring ``>= T``;
3. pass over the key blocks in ascending order: keep every block scoring ``> T`` and the
   first ``kept - #(> T)`` blocks scoring ``== T`` (ties go to the lower index), writing the
   kept indices in order through a running prefix sum; pad the row with ``-1``.

Nothing of size ``query blocks × key blocks`` is ever stored. Matches
:func:`naive.select_blocks` exactly.
"""
import triton
import triton.language as tl


@triton.jit
def _popcount32(x):
    """Set bits of each int32 word (SWAR on the unsigned bit pattern)."""
    v = x.to(tl.uint32, bitcast=True)
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    v = (v * 0x01010101) >> 24
    return v.to(tl.int32)


@triton.jit
def _block_scores(
    QSIG, KSIG, qsig_off, ksig_base, stride_kj, kb, kb_valid,
    q_lo, q_hi, NK, BK, LOCAL, SINK,
    N_BITS: tl.constexpr, W: tl.constexpr, CAUSAL: tl.constexpr, USE_SIG: tl.constexpr,
):
    """Score and allowed mask of key blocks ``kb`` for one query block (see module doc)."""
    k_lo = kb * BK
    k_hi = tl.minimum(k_lo + BK, NK) - 1
    if USE_SIG:
        diff = tl.zeros(kb.shape, dtype=tl.int32)
        for wi in tl.static_range(W):
            qw = tl.load(QSIG + qsig_off + wi)
            kw = tl.load(KSIG + ksig_base + kb * stride_kj + wi, mask=kb_valid, other=0)
            diff += _popcount32(qw ^ kw)
        score = N_BITS - diff
    else:
        score = tl.zeros(kb.shape, dtype=tl.int32)
    if CAUSAL:
        allowed = kb_valid & (k_lo <= q_hi)
    else:
        allowed = kb_valid
    lo = q_lo - (LOCAL - 1) * BK
    if CAUSAL:
        hi = q_hi
    else:
        hi = q_hi + (LOCAL - 1) * BK
    forced = (kb < SINK) | ((LOCAL > 0) & (k_hi >= lo) & (k_lo <= hi))
    score = tl.where(forced, N_BITS + 1, score)
    return score, allowed


@triton.jit
def block_select_kernel(
    QSIG, KSIG, OUT,
    stride_qb, stride_qh, stride_qc,
    stride_kb, stride_kh, stride_kj,
    stride_ob, stride_oh, stride_oc,
    H, NQ, NK, NKB, KEPT, BQ, BK, LOCAL, SINK,
    N_BITS: tl.constexpr, W: tl.constexpr, NBINS: tl.constexpr,
    CAUSAL: tl.constexpr, USE_SIG: tl.constexpr, BLOCK_K: tl.constexpr,
):
    qb = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    off = NK - NQ
    q_lo = qb * BQ + off
    q_hi = tl.minimum(qb * BQ + BQ, NQ) - 1 + off
    qsig_off = b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + qb.to(tl.int64) * stride_qc
    ksig_base = b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    out_row = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + qb.to(tl.int64) * stride_oc
    lanes = tl.arange(0, BLOCK_K)

    # 1. histogram of the scores of allowed key blocks
    hist = tl.zeros([NBINS], dtype=tl.int32)
    for j0 in range(0, NKB, BLOCK_K):
        kb = j0 + lanes
        score, allowed = _block_scores(
            QSIG, KSIG, qsig_off, ksig_base, stride_kj, kb, kb < NKB, q_lo, q_hi, NK, BK, LOCAL, SINK,
            N_BITS, W, CAUSAL, USE_SIG,
        )
        hist += tl.histogram(score, NBINS, mask=allowed)

    # 2. cut score T: largest s with #(score >= s) >= KEPT (none: keep every allowed block)
    bins = tl.arange(0, NBINS)
    count_ge = tl.cumsum(hist, 0, reverse=True)
    cut = tl.max(tl.where(count_ge >= KEPT, bins, -1), 0)
    count_gt = tl.sum(tl.where(bins > cut, hist, 0), 0)
    need_ties = tl.where(cut >= 0, KEPT - count_gt, KEPT)
    cut = tl.maximum(cut, 0)

    # 3. ascending pass: emit blocks above the cut and the first `need_ties` at it
    emitted = 0
    ties = 0
    for j0 in range(0, NKB, BLOCK_K):
        kb = j0 + lanes
        score, allowed = _block_scores(
            QSIG, KSIG, qsig_off, ksig_base, stride_kj, kb, kb < NKB, q_lo, q_hi, NK, BK, LOCAL, SINK,
            N_BITS, W, CAUSAL, USE_SIG,
        )
        at_cut = (allowed & (score == cut)).to(tl.int32)
        tie_rank = ties + tl.cumsum(at_cut, 0) - at_cut
        keep = allowed & ((score > cut) | ((at_cut > 0) & (tie_rank < need_ties)))
        keep_i = keep.to(tl.int32)
        pos = emitted + tl.cumsum(keep_i, 0) - keep_i
        tl.store(out_row + pos, kb, mask=keep)
        emitted += tl.sum(keep_i, 0)
        ties += tl.sum(at_cut, 0)

    # 4. pad with -1 (causal rows with fewer allowed blocks than KEPT)
    for p0 in range(0, KEPT, BLOCK_K):
        pos = p0 + lanes
        tl.store(out_row + pos, tl.full([BLOCK_K], -1, tl.int32), mask=(pos >= emitted) & (pos < KEPT))
