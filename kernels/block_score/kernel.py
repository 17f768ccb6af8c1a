"""Triton kernel: per query block, keep the top key blocks by an exact integer block-code score.

Letters: b batch, h heads, c query blocks, m sub-centroids of a query block (``M``), j key
blocks, p key sub-blocks of a key block (``P``), r code width.

Codes are int8 (``naive.py`` makes them): ``M`` per query block (the means of its ``M`` runs of
consecutive queries — ``pooled`` is ``M = 1``) and ``P`` per key block (means of its ``P`` runs of
keys), so a block pair has ``M × P`` *cells* with exact int32 scores ``S = Σ_r q[r] · k[r]``.
Each sub-centroid's scores are normalised by its best score over the free key blocks (allowed,
not forced) and a block pair scores its best cell::

    N[c, j] = max_{m, p} (S[(c, m), (j, p)] − max_{free j', p'} S[(c, m), (j', p')])   (≤ 0 for free j)
    level   = max(0, 255 + (N >> SHIFT))                                              (in [0, 255])

(``SHIFT`` per head, chosen by the launcher so that a level is at most a fixed fraction of a
nat.) Forced blocks (sink, local) get level 256; blocks the causal mask forbids take no part.
The kept blocks are those of the highest levels, ties to the lower block index — integer
arithmetic only, so the torch reference (``naive.py``) gives the same indices exactly. One
program per ``BLOCK_M`` query blocks of one (batch, head), four passes over the key blocks
(scores recomputed by ``tl.dot`` each pass; nothing of size query blocks × key blocks is stored):

1. each sub-centroid's best free score;
2. per-row counts of the coarse level (``level >> 4``; forced 16) → the coarse cut;
3. per-row counts of the fine level (``level & 15``) inside the coarse cut → the cut level
   and how many of its ties to keep;
4. ascending pass: keep every block above the cut and the first ``need`` at it, writing kept
   indices in order through per-row prefix sums; pad the row with ``-1``.

``STORE`` (a launcher choice, :data:`.ops.STORE_LEVELS`): pass 2 also writes each pair's level (int16,
``-1`` where not allowed) to a scratch ``(b·h, query blocks, key blocks)`` and passes 3 and 4 read
them back instead of scoring every tile again — the same levels, so the same indices; it trades
``2 + 2 · 2`` bytes a block pair of traffic for the recomputed scores, which grow with ``M``.

Counting: passes 2 and 3 count, per row, the blocks at or above each of 16 thresholds, three
thresholds to an int32 word (:func:`_counts_at_least`: a multiply-add and an AND per block and
word — SWAR), and pass 4 takes both running counts (above the cut, at it) from one prefix sum of
a packed int32. It replaced 32- and 16-bin histograms by compare-and-sum over a
``(BLOCK_M, BLOCK_N, bins)`` tile, which spilled on sm_90 (255 registers + 656 B of stack; 153 and
none now) and ran 2.1–3.7× slower on an H200 (1,064 → 284 µs at N = 131,072; 102 → 63 µs at the
Wan 1.3B shape; ``scripts/gpu/attention_parts.py --part selection``, 2026-12-05).

:func:`code_ranges_kernel` + :func:`quantize_codes_kernel` make the int8 codes from the float block
codes in two launches.
"""
import triton
import triton.language as tl

_NEG = tl.constexpr(-1073741824)  # below every normalised score (|S| < 2^23)


@triton.jit
def _block_masks(rows, kb, row_ok, NQ, NK, NKB, BQ, BK, LOCAL, SINK, CAUSAL: tl.constexpr):
    """Forced (sink / local, allowed) and allowed masks ``(BLOCK_M, BLOCK_N)`` of key blocks ``kb``."""
    off = NK - NQ
    q_lo = rows * BQ + off
    q_hi = tl.minimum(rows * BQ + BQ, NQ) - 1 + off
    k_lo = kb * BK
    k_hi = tl.minimum(k_lo + BK, NK) - 1
    allowed = row_ok[:, None] & (kb < NKB)[None, :]
    if CAUSAL:
        allowed = allowed & (k_lo[None, :] <= q_hi[:, None])
    lo = q_lo - (LOCAL - 1) * BK
    if CAUSAL:
        hi = q_hi
    else:
        hi = q_hi + (LOCAL - 1) * BK
    forced = (kb[None, :] < SINK) | ((LOCAL > 0) & (k_hi[None, :] >= lo[:, None]) & (k_lo[None, :] <= hi[:, None]))
    return forced & allowed, allowed


@triton.jit
def _cells(KC, k_base, stride_kj, q_codes, j0, NSUB, R: tl.constexpr, BLOCK_N: tl.constexpr, P: tl.constexpr):
    """Cell scores ``(BLOCK_M·M, BLOCK_N·P)`` int32 of key blocks ``j0 …`` and which cells exist."""
    cols = j0 * P + tl.arange(0, BLOCK_N * P)
    col_ok = cols < NSUB
    rr = tl.arange(0, R)
    kc = tl.load(KC + k_base + cols[:, None].to(tl.int64) * stride_kj + rr[None, :], mask=col_ok[:, None], other=0)
    return tl.dot(q_codes, tl.trans(kc), out_dtype=tl.int32), col_ok


@triton.jit
def _expand(x, BLOCK_M: tl.constexpr, M: tl.constexpr, BLOCK_N: tl.constexpr, P: tl.constexpr):
    """Block mask ``(BLOCK_M, BLOCK_N)`` → cell mask ``(BLOCK_M·M, BLOCK_N·P)``."""
    if M * P == 1:
        return x
    return tl.reshape(tl.broadcast_to(x[:, None, :, None], [BLOCK_M, M, BLOCK_N, P]), [BLOCK_M * M, BLOCK_N * P])


@triton.jit
def _pair_levels(s, cell_ok, smax, forced, shift,
                 BLOCK_M: tl.constexpr, M: tl.constexpr, BLOCK_N: tl.constexpr, P: tl.constexpr):
    """Level ``(BLOCK_M, BLOCK_N)`` in [0, 256] of each block pair (see the module docstring)."""
    n = tl.where(cell_ok, s - smax[:, None], _NEG)
    if M * P > 1:
        n = tl.reshape(n, [BLOCK_M, M, BLOCK_N, P])
        n = tl.max(tl.max(n, 3), 1)
    level = tl.maximum(255 + (n >> shift), 0)
    return tl.where(forced, 256, level)


@triton.jit
def _tile_levels(KC, k_base, stride_kj, q_codes, j0, rows, row_ok, sub_ok, smax, shift,
                 NQ, NK, NKB, NSUB, BQ, BK, LOCAL, SINK, CAUSAL: tl.constexpr,
                 R: tl.constexpr, BLOCK_M: tl.constexpr, M: tl.constexpr, BLOCK_N: tl.constexpr, P: tl.constexpr):
    """The allowed mask and the levels ``(BLOCK_M, BLOCK_N)`` of key blocks ``j0 …`` (a tile of the
    passes after the first, scores recomputed)."""
    forced, allowed = _block_masks(rows, j0 + tl.arange(0, BLOCK_N), row_ok, NQ, NK, NKB, BQ, BK, LOCAL, SINK, CAUSAL)
    s, col_ok = _cells(KC, k_base, stride_kj, q_codes, j0, NSUB, R, BLOCK_N, P)
    return allowed, _pair_levels(s, sub_ok[:, None] & col_ok[None, :], smax, forced, shift, BLOCK_M, M, BLOCK_N, P)


@triton.jit
def _level_slots(LV, lv_base, stride_lc, rows, row_ok, j0, NKB, BLOCK_N: tl.constexpr):
    """``STORE``: pointers and mask ``(BLOCK_M, BLOCK_N)`` of the stored levels of key blocks ``j0 …``."""
    kb = j0 + tl.arange(0, BLOCK_N)
    return LV + lv_base + rows[:, None].to(tl.int64) * stride_lc + kb[None, :], row_ok[:, None] & (kb < NKB)[None, :]


@triton.jit
def _stored_levels(LV, lv_base, stride_lc, rows, row_ok, j0, NKB, BLOCK_N: tl.constexpr):
    """``STORE``: the allowed mask and the levels ``(BLOCK_M, BLOCK_N)`` of key blocks ``j0 …`` as the
    coarse pass wrote them (int16, ``-1`` where not allowed), instead of scoring the tile again."""
    ptr, ok = _level_slots(LV, lv_base, stride_lc, rows, row_ok, j0, NKB, BLOCK_N)
    lv = tl.load(ptr, mask=ok, other=-1).to(tl.int32)
    return lv >= 0, lv


@triton.jit
def _counts_at_least(v, cols):
    """Per row, how many of ``v (BLOCK_M, BLOCK_N)`` (int32 in [-1, 16]; -1 counts nowhere) are
    ``≥ t`` for ``t = 1 … 16``: ``(BLOCK_M, 16)``, column ``t - 1``. Three thresholds per int32
    word (SWAR): byte ``l`` of ``v · 0x01010101 + c`` is ``v - t_l + 128`` (in [111, 143], so no
    carry crosses bytes) and its bit 7 is set iff ``v ≥ t_l``; one multiply-add and one AND per
    value and word, six words, then the row sums — exact while a row holds < 256 values."""
    x = v.to(tl.uint32, bitcast=True)
    out = tl.zeros([v.shape[0], 16], dtype=tl.int32)
    for r in tl.static_range(6):
        c = (127 - 3 * r) + ((126 - 3 * r) << 8) + ((125 - 3 * r) << 16)
        word = tl.sum((x * 0x01010101 + c) & 0x00808080, 1)  # (BLOCK_M,) uint32
        lane = cols - 3 * r
        part = (word[:, None] >> (8 * lane + 7).to(tl.uint32)) & 0xFF
        out += tl.where((lane >= 0) & (lane < 3), part.to(tl.int32), 0)
    return out


@triton.jit
def _column(x, cols, idx):
    """``x[i, idx[i]]`` for each row of ``x (BLOCK_M, 16)`` (0 where ``idx`` is outside)."""
    return tl.sum(tl.where(cols[None, :] == idx[:, None], x, 0), 1)


@triton.jit
def block_score_kernel(
    QC, KC, SHIFT, OUT, LV,
    stride_qb, stride_qh, stride_qc,
    stride_kb, stride_kh, stride_kj,
    stride_ob, stride_oh, stride_oc,
    stride_lbh, stride_lc,
    H, NQ, NK, NQB, NKB, NSUB, KEPT, BQ, BK, LOCAL, SINK,
    R: tl.constexpr, M: tl.constexpr, P: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STORE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < NQB
    # sub-centroid rows: query block rows[i // M], run i % M; alive if it holds a query
    sub = pid_m * BLOCK_M * M + tl.arange(0, BLOCK_M * M)
    sub_ok = ((sub // M) < NQB) & ((sub // M) * BQ + (sub % M) * (BQ // M) < NQ)
    rr = tl.arange(0, R)
    q_ptr = QC + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    q_codes = tl.load(q_ptr + sub[:, None].to(tl.int64) * stride_qc + rr[None, :], mask=sub_ok[:, None], other=0)
    k_base = b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    shift = tl.load(SHIFT + bh)
    lanes = tl.arange(0, BLOCK_N)
    lv_base = bh.to(tl.int64) * stride_lbh  # STORE: this (batch, head)'s levels (int16 rows of NKB)

    # 1. each sub-centroid's best score over free key blocks
    smax = tl.full([BLOCK_M * M], _NEG, tl.int32)
    for j0 in range(0, NKB, BLOCK_N):
        forced, allowed = _block_masks(rows, j0 + lanes, row_ok, NQ, NK, NKB, BQ, BK, LOCAL, SINK, CAUSAL)
        s, col_ok = _cells(KC, k_base, stride_kj, q_codes, j0, NSUB, R, BLOCK_N, P)
        ok = _expand(allowed & ~forced, BLOCK_M, M, BLOCK_N, P) & sub_ok[:, None] & col_ok[None, :]
        smax = tl.maximum(smax, tl.max(tl.where(ok, s, _NEG), 1))

    # 2. per row, how many allowed blocks have a coarse level (level >> 4; forced 16) ≥ t,
    # t = 1 … 16 (SWAR counts) → the coarse cut: the highest t with ≥ KEPT blocks at or above
    cols = tl.arange(0, 16)
    ge = tl.zeros([BLOCK_M, 16], dtype=tl.int32)
    n_allowed = tl.zeros([BLOCK_M], dtype=tl.int32)
    for j0 in range(0, NKB, BLOCK_N):
        allowed, level = _tile_levels(KC, k_base, stride_kj, q_codes, j0, rows, row_ok, sub_ok, smax, shift,
                                      NQ, NK, NKB, NSUB, BQ, BK, LOCAL, SINK, CAUSAL, R, BLOCK_M, M, BLOCK_N, P)
        ge += _counts_at_least(tl.where(allowed, level >> 4, -1), cols)
        n_allowed += tl.sum(allowed.to(tl.int32), 1)
        if STORE:  # the later passes read these instead of scoring the tile again
            ptr, ok = _level_slots(LV, lv_base, stride_lc, rows, row_ok, j0, NKB, BLOCK_N)
            tl.store(ptr, tl.where(allowed, level, -1).to(tl.int16), mask=ok)
    if STORE:
        tl.debug_barrier()  # the levels written by every thread before any thread reads them
    c_cut = tl.max(tl.where(ge >= KEPT, cols[None, :] + 1, -1), 1)
    c_cut = tl.where((c_cut < 0) & (n_allowed >= KEPT), 0, c_cut)  # -1: fewer allowed blocks than KEPT
    above_c = _column(ge, cols, c_cut)  # blocks above the coarse cut (no cut: unused)

    # 3. inside the coarse cut, how many have a fine level (level & 15) ≥ t → cut level, ties to keep
    fge = tl.zeros([BLOCK_M, 16], dtype=tl.int32)
    for j0 in range(0, NKB, BLOCK_N):
        if STORE:
            allowed, level = _stored_levels(LV, lv_base, stride_lc, rows, row_ok, j0, NKB, BLOCK_N)
        else:
            allowed, level = _tile_levels(KC, k_base, stride_kj, q_codes, j0, rows, row_ok, sub_ok, smax, shift,
                                          NQ, NK, NKB, NSUB, BQ, BK, LOCAL, SINK, CAUSAL, R, BLOCK_M, M, BLOCK_N, P)
        inside = allowed & ((level >> 4) == c_cut[:, None]) & (c_cut[:, None] < 16)
        fge += _counts_at_least(tl.where(inside, level & 15, -1), cols)
    f_cut = tl.max(tl.where(above_c[:, None] + fge >= KEPT, cols[None, :] + 1, 0), 1)  # t = 0 holds ≥ KEPT by the coarse cut
    above_f = above_c + _column(fge, cols, f_cut)
    cut = tl.where(c_cut == 16, 256, c_cut * 16 + f_cut)
    above = tl.where(c_cut == 16, 0, above_f)
    need = tl.where(c_cut >= 0, KEPT - above, KEPT)
    cut = tl.maximum(cut, 0)

    # 4. ascending pass, one scan: a kept block's place is (#above the cut before it) +
    # min(#at the cut before it, need); both counts in one int32 (16 bits each, < 2^16 per row)
    o_ptr = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + rows.to(tl.int64) * stride_oc
    n_above = tl.zeros([BLOCK_M], dtype=tl.int32)
    n_ties = tl.zeros([BLOCK_M], dtype=tl.int32)
    for j0 in range(0, NKB, BLOCK_N):
        kb = j0 + lanes
        if STORE:
            allowed, level = _stored_levels(LV, lv_base, stride_lc, rows, row_ok, j0, NKB, BLOCK_N)
        else:
            allowed, level = _tile_levels(KC, k_base, stride_kj, q_codes, j0, rows, row_ok, sub_ok, smax, shift,
                                          NQ, NK, NKB, NSUB, BQ, BK, LOCAL, SINK, CAUSAL, R, BLOCK_M, M, BLOCK_N, P)
        hi = allowed & (level > cut[:, None])
        at = allowed & (level == cut[:, None])
        x = hi.to(tl.int32) + (at.to(tl.int32) << 16)
        before = tl.cumsum(x, 1) - x
        t_before = n_ties[:, None] + (before >> 16)
        keep = hi | (at & (t_before < need[:, None]))
        pos = n_above[:, None] + (before & 0xFFFF) + tl.minimum(t_before, need[:, None])
        tl.store(o_ptr[:, None] + pos, kb[None, :] + tl.zeros([BLOCK_M, BLOCK_N], tl.int32), mask=keep)
        tot = tl.sum(x, 1)
        n_above += tot & 0xFFFF
        n_ties += tot >> 16
    emitted = n_above + tl.minimum(n_ties, need)

    # 5. pad with -1 (rows with fewer allowed blocks than KEPT)
    for p0 in range(0, KEPT, BLOCK_N):
        pos = p0 + lanes
        pad = row_ok[:, None] & (pos[None, :] >= emitted[:, None]) & (pos[None, :] < KEPT)
        tl.store(o_ptr[:, None] + pos[None, :], tl.full([BLOCK_M, BLOCK_N], -1, tl.int32), mask=pad)


_ROUND = tl.constexpr(12582912.0)  # 1.5 · 2^23: (v + it) - it rounds a float32 |v| < 2^22 half to even


@triton.jit
def _abs_max_rows(x_ptr, stride_row, n_rows, factor, cols, col_ok, split, splits, WIDTH: tl.constexpr,
                  BLOCK_ROWS: tl.constexpr):
    """Per channel, ``max |factor · x|`` over this program's every ``splits``-th tile of rows from tile
    ``split`` (0 for none)."""
    best = tl.zeros([WIDTH], dtype=tl.float32)
    for r0 in range(split * BLOCK_ROWS, n_rows, splits * BLOCK_ROWS):
        rows = r0 + tl.arange(0, BLOCK_ROWS)
        x = tl.load(x_ptr + rows[:, None] * stride_row + cols[None, :],
                    mask=(rows < n_rows)[:, None] & col_ok[None, :], other=0.0)
        best = tl.maximum(best, tl.max(tl.abs(x * factor), axis=0))
    return best


@triton.jit
def code_ranges_kernel(
    cq_ptr, ck_ptr, part_ptr,
    stride_q_bh, stride_q_row, stride_k_bh, stride_k_row,
    rows_q_in, rows_k_in, r, factor,
    WIDTH: tl.constexpr, BLOCK_ROWS: tl.constexpr,
):
    """Pass 1 of the quantisation, grid ``(b·h, splits)``: each program's per-channel ``max |factor · x|``
    over its share of the query and key rows, to ``part (b·h, splits, 2, WIDTH)`` (max is exact in any
    order: :func:`quantize_codes_kernel` takes the max over the splits)."""
    bh = tl.program_id(0)
    split, splits = tl.program_id(1), tl.num_programs(1)
    cols = tl.arange(0, WIDTH)
    col_ok = cols < r
    range_q = _abs_max_rows(cq_ptr + bh.to(tl.int64) * stride_q_bh, stride_q_row, rows_q_in, factor, cols, col_ok,
                            split, splits, WIDTH, BLOCK_ROWS)
    range_k = _abs_max_rows(ck_ptr + bh.to(tl.int64) * stride_k_bh, stride_k_row, rows_k_in, factor, cols, col_ok,
                            split, splits, WIDTH, BLOCK_ROWS)
    out = part_ptr + (bh.to(tl.int64) * splits + split) * 2 * WIDTH
    tl.store(out + cols, range_q)
    tl.store(out + WIDTH + cols, range_k)


@triton.jit
def _emit_int8(x_ptr, stride_row, n_rows, out_ptr, out_rows, factor, balance, scale, cols, col_ok, split, splits,
               QUERY: tl.constexpr, WIDTH: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """``round(factor · x · balance / scale)`` (queries; ``/ balance`` for keys), clamped to ±127, as int8
    rows ``(out_rows, WIDTH)`` — this program's every ``splits``-th tile of rows from tile ``split``; rows
    past ``n_rows`` and channels past the codes are 0."""
    for r0 in range(split * BLOCK_ROWS, out_rows, splits * BLOCK_ROWS):
        rows = r0 + tl.arange(0, BLOCK_ROWS)
        x = tl.load(x_ptr + rows[:, None] * stride_row + cols[None, :],
                    mask=(rows < n_rows)[:, None] & col_ok[None, :], other=0.0)
        x = x * factor
        if QUERY:
            x = x * balance[None, :]
        else:
            x = tl.div_rn(x, balance[None, :])
        v = tl.div_rn(x, scale)
        v = (v + _ROUND) - _ROUND
        v = tl.minimum(tl.maximum(v, -127.0), 127.0)
        tl.store(out_ptr + rows[:, None] * WIDTH + cols[None, :], v.to(tl.int8), mask=(rows < out_rows)[:, None])


@triton.jit
def quantize_codes_kernel(
    cq_ptr, ck_ptr, part_ptr, qi_ptr, ki_ptr, shift_ptr,
    stride_q_bh, stride_q_row, stride_k_bh, stride_k_row,
    rows_q_in, rows_k_in, rows_q, rows_k, r, factor, res_hi, res_mid, res_lo,
    WIDTH: tl.constexpr, BLOCK_ROWS: tl.constexpr, SPLITS: tl.constexpr,
):
    """``naive.quantize_codes`` of ``factor · cq`` and ``factor · ck``, op for op in float32 (IEEE division
    and square root, round half to even), so the int8 codes and ``shift`` equal the torch reference's.
    Grid ``(b·h, splits)`` as :func:`code_ranges_kernel`'s, whose partial ranges ``part`` it reads
    (``SPLITS`` ≥ splits, a power of two): the per-channel ranges, then the balance and the two scales
    from them alone (max |x · balance| = max|x| · balance: rounding is monotone), then this program's
    share of the codes (pass 2, the divisions). Rows ``(rows_*_in ≤ rows_*)`` past the input and
    channels past ``r`` come out 0. The float64 ``resolution`` comes as three float32 parts that sum to
    it exactly (scalar arguments are float32)."""
    bh = tl.program_id(0)
    split, splits = tl.program_id(1), tl.num_programs(1)
    cols = tl.arange(0, WIDTH)
    col_ok = cols < r
    parts = tl.arange(0, SPLITS)
    part = part_ptr + bh.to(tl.int64) * splits * 2 * WIDTH + parts[:, None] * 2 * WIDTH + cols[None, :]
    range_q = tl.max(tl.load(part, mask=(parts < splits)[:, None], other=0.0), axis=0)
    range_k = tl.max(tl.load(part + WIDTH, mask=(parts < splits)[:, None], other=0.0), axis=0)
    both = (range_q > 0) & (range_k > 0)
    balance = tl.where(both, tl.sqrt_rn(tl.div_rn(range_k, tl.maximum(range_q, 1e-30))), 1.0)
    scale_q = tl.maximum(tl.max(range_q * balance, axis=0), 1e-20) * (1.0 / 127.0)
    scale_k = tl.maximum(tl.max(tl.div_rn(range_k, balance), axis=0), 1e-20) * (1.0 / 127.0)
    _emit_int8(cq_ptr + bh.to(tl.int64) * stride_q_bh, stride_q_row, rows_q_in, qi_ptr + bh.to(tl.int64) * rows_q * WIDTH,
               rows_q, factor, balance, scale_q, cols, col_ok, split, splits, True, WIDTH, BLOCK_ROWS)
    _emit_int8(ck_ptr + bh.to(tl.int64) * stride_k_bh, stride_k_row, rows_k_in, ki_ptr + bh.to(tl.int64) * rows_k * WIDTH,
               rows_k, factor, balance, scale_k, cols, col_ok, split, splits, False, WIDTH, BLOCK_ROWS)
    if split > 0:
        return
    unit = scale_q.to(tl.float64) * scale_k.to(tl.float64)
    resolution = (tl.cast(res_hi, tl.float64) + tl.cast(res_mid, tl.float64)) + tl.cast(res_lo, tl.float64)
    level = tl.floor(tl.log2((1.0 / unit) * resolution))
    tl.store(shift_ptr + bh, tl.minimum(tl.maximum(level, 0.0), 24.0).to(tl.int32))
