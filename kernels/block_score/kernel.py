"""Triton kernel: per query block, keep the top key blocks by an exact integer block-code score.

Letters: b batch, h heads, c query blocks, j key blocks, r code width.

Scores are dot products of int8 block codes (``pooled``: the blocks' mean tokens; ``learned``:
learned codes), ``S = Σ_r q[c, r] · k[j, r]`` in int32 — exact, so the kernel and the torch
reference (``naive.py``) agree on every score and every tie. A score becomes a *level* in
``[0, 255]`` relative to its row's best free score ``Smax`` (one level = ``2^SHIFT`` score units,
``SHIFT`` per head, chosen by the launcher so that a level is a fixed fraction of a nat)::

    coarse = clamp((S >> (SHIFT + 4)) − (Smax >> (SHIFT + 4)) + 15, 0, 15)
    level  = coarse · 16 + ((S >> SHIFT) & 15)      (0 when coarse was clamped from below)

Forced blocks (sink, local) get level 256; blocks the causal mask forbids take no part. The
kept blocks are those of the highest levels, ties to the lower block index, found without a
sort — one program per ``BLOCK_M`` query blocks of one (batch, head), four passes over the key
blocks (scores recomputed by ``tl.dot`` each pass; nothing of size query blocks × key blocks is
stored):

1. ``Smax`` per row (allowed, not forced);
2. per-row histogram of the coarse level (17 bins: 16 + forced) → the coarse cut;
3. per-row histogram of the fine level inside the coarse cut → the cut level and how many of
   its ties to keep;
4. ascending pass: keep every block above the cut and the first ``need`` at it, writing kept
   indices in order through per-row prefix sums; pad the row with ``-1``.
"""
import triton
import triton.language as tl


@triton.jit
def _tile(
    QC, KC, k_base, stride_kj, q_codes, kb, q_lo, q_hi, row_ok,
    NKB, NK, BK, LOCAL, SINK, R: tl.constexpr, CAUSAL: tl.constexpr,
):
    """Scores ``(BLOCK_M, BLOCK_N)`` int32 of the key blocks ``kb`` and their forced / allowed masks."""
    rr = tl.arange(0, R)
    kb_ok = kb < NKB
    kc = tl.load(KC + k_base + kb[:, None].to(tl.int64) * stride_kj + rr[None, :], mask=kb_ok[:, None], other=0)
    s = tl.dot(q_codes, tl.trans(kc), out_dtype=tl.int32)
    k_lo = kb * BK
    k_hi = tl.minimum(k_lo + BK, NK) - 1
    allowed = row_ok[:, None] & kb_ok[None, :]
    if CAUSAL:
        allowed = allowed & (k_lo[None, :] <= q_hi[:, None])
    lo = q_lo - (LOCAL - 1) * BK
    if CAUSAL:
        hi = q_hi
    else:
        hi = q_hi + (LOCAL - 1) * BK
    forced = (kb[None, :] < SINK) | ((LOCAL > 0) & (k_hi[None, :] >= lo[:, None]) & (k_lo[None, :] <= hi[:, None]))
    return s, forced & allowed, allowed


@triton.jit
def _levels(s, forced, smax, shift):
    """Level in [0, 256] of each score (see the module docstring); forced = 256."""
    top = smax >> (shift + 4)
    coarse = (s >> (shift + 4)) - top[:, None] + 15
    fine = (s >> shift) & 15
    level = tl.where(coarse < 0, 0, tl.minimum(coarse, 15) * 16 + fine)
    return tl.where(forced, 256, level)


@triton.jit
def block_score_kernel(
    QC, KC, SHIFT, OUT,
    stride_qb, stride_qh, stride_qc,
    stride_kb, stride_kh, stride_kj,
    stride_ob, stride_oh, stride_oc,
    H, NQ, NK, NQB, NKB, KEPT, BQ, BK, LOCAL, SINK,
    R: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < NQB
    off = NK - NQ
    q_lo = rows * BQ + off
    q_hi = tl.minimum(rows * BQ + BQ, NQ) - 1 + off
    rr = tl.arange(0, R)
    q_ptr = QC + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    q_codes = tl.load(q_ptr + rows[:, None].to(tl.int64) * stride_qc + rr[None, :], mask=row_ok[:, None], other=0)
    k_base = b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    shift = tl.load(SHIFT + bh)
    lanes = tl.arange(0, BLOCK_N)
    m_idx = tl.arange(0, BLOCK_M)

    # 1. best free score per row
    smax = tl.full([BLOCK_M], -2147483647, tl.int32)
    for j0 in range(0, NKB, BLOCK_N):
        s, forced, allowed = _tile(QC, KC, k_base, stride_kj, q_codes, j0 + lanes, q_lo, q_hi, row_ok,
                                   NKB, NK, BK, LOCAL, SINK, R, CAUSAL)
        smax = tl.maximum(smax, tl.max(tl.where(allowed & ~forced, s, -2147483647), 1))

    # 2. coarse histogram (bins 0..15 free, 16 forced; 32 per row) → coarse cut per row
    hist = tl.zeros([BLOCK_M * 32], dtype=tl.int32)
    for j0 in range(0, NKB, BLOCK_N):
        s, forced, allowed = _tile(QC, KC, k_base, stride_kj, q_codes, j0 + lanes, q_lo, q_hi, row_ok,
                                   NKB, NK, BK, LOCAL, SINK, R, CAUSAL)
        coarse = _levels(s, forced, smax, shift) >> 4
        flat = tl.reshape(tl.where(allowed, m_idx[:, None] * 32 + coarse, 0), [BLOCK_M * BLOCK_N])
        hist += tl.histogram(flat, BLOCK_M * 32, mask=tl.reshape(allowed, [BLOCK_M * BLOCK_N]))
    hist2 = tl.reshape(hist, [BLOCK_M, 32])
    bins = tl.arange(0, 32)
    count_ge = tl.cumsum(hist2, 1, reverse=True)
    c_cut = tl.max(tl.where(count_ge >= KEPT, bins[None, :], -1), 1)  # -1: fewer allowed blocks than KEPT
    above_c = tl.sum(tl.where(bins[None, :] > c_cut[:, None], hist2, 0), 1)

    # 3. fine histogram inside the coarse cut → cut level and ties to keep
    fhist = tl.zeros([BLOCK_M * 16], dtype=tl.int32)
    for j0 in range(0, NKB, BLOCK_N):
        s, forced, allowed = _tile(QC, KC, k_base, stride_kj, q_codes, j0 + lanes, q_lo, q_hi, row_ok,
                                   NKB, NK, BK, LOCAL, SINK, R, CAUSAL)
        level = _levels(s, forced, smax, shift)
        inside = allowed & ((level >> 4) == c_cut[:, None]) & (c_cut[:, None] < 16)
        flat = tl.reshape(tl.where(inside, m_idx[:, None] * 16 + (level & 15), 0), [BLOCK_M * BLOCK_N])
        fhist += tl.histogram(flat, BLOCK_M * 16, mask=tl.reshape(inside, [BLOCK_M * BLOCK_N]))
    fhist2 = tl.reshape(fhist, [BLOCK_M, 16])
    fbins = tl.arange(0, 16)
    f_ge = tl.cumsum(fhist2, 1, reverse=True) + above_c[:, None]
    f_cut = tl.max(tl.where(f_ge >= KEPT, fbins[None, :], -1), 1)
    above_f = tl.sum(tl.where(fbins[None, :] > f_cut[:, None], fhist2, 0), 1) + above_c
    cut = tl.where(c_cut == 16, 256, c_cut * 16 + f_cut)
    above = tl.where(c_cut == 16, 0, above_f)
    need = tl.where(c_cut >= 0, KEPT - above, KEPT)
    cut = tl.maximum(cut, 0)

    # 4. ascending pass: blocks above the cut, then the first `need` at it
    o_ptr = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + rows.to(tl.int64) * stride_oc
    emitted = tl.zeros([BLOCK_M], dtype=tl.int32)
    ties = tl.zeros([BLOCK_M], dtype=tl.int32)
    for j0 in range(0, NKB, BLOCK_N):
        kb = j0 + lanes
        s, forced, allowed = _tile(QC, KC, k_base, stride_kj, q_codes, kb, q_lo, q_hi, row_ok,
                                   NKB, NK, BK, LOCAL, SINK, R, CAUSAL)
        level = _levels(s, forced, smax, shift)
        at_cut = (allowed & (level == cut[:, None])).to(tl.int32)
        tie_rank = ties[:, None] + tl.cumsum(at_cut, 1) - at_cut
        keep = allowed & ((level > cut[:, None]) | ((at_cut > 0) & (tie_rank < need[:, None])))
        keep_i = keep.to(tl.int32)
        pos = emitted[:, None] + tl.cumsum(keep_i, 1) - keep_i
        tl.store(o_ptr[:, None] + pos, kb[None, :] + tl.zeros([BLOCK_M, BLOCK_N], tl.int32), mask=keep)
        emitted += tl.sum(keep_i, 1)
        ties += tl.sum(at_cut, 1)

    # 5. pad with -1 (rows with fewer allowed blocks than KEPT)
    for p0 in range(0, KEPT, BLOCK_N):
        pos = p0 + lanes
        pad = row_ok[:, None] & (pos[None, :] >= emitted[:, None]) & (pos[None, :] < KEPT)
        tl.store(o_ptr[:, None] + pos[None, :], tl.full([BLOCK_M, BLOCK_N], -1, tl.int32), mask=pad)
