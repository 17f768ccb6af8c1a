"""Triton kernels of :class:`vidhash.memory.HashedMemory`: FIFO and merge writes, top-k read.

Letters: r = b·h rows of the memory, t tokens written, n queries, c = u·s entries (u buckets,
s slots), d head_dim, w signature words (wp: w rounded up to a power of two), k top_k.

**Write** (policy ``"fifo"``), after the signature kernel gave each token its signature and
bucket:

* :func:`fifo_rank_kernel` — each token's rank among this write's tokens of its bucket (token
  order) and their number, by comparing bucket ids tile against tile (``t²/2`` compares per
  row, no sort); from them its slot ``(bucket_writes + rank) % s``; only the last ``s`` tokens
  of a bucket are kept, so kept tokens of one bucket never share a slot.
* :func:`fifo_scatter_kernel` — key, value, signature, frame and count of kept tokens into
  their entries; the last token of each bucket advances ``bucket_writes`` (one writer per
  bucket, after every slot was read in the previous launch: no race).

**Write** (policy ``"merge"``): :func:`merge_write_kernel`, one program per (bucket, row)
that walks the bucket's tokens of this write in token order with the bucket held in registers
(see its docstring and NOTES.md).

**Read**, per query, exactly ``HashedMemory.attend``: Hamming similarity to all ``c`` entries,
the ``k`` best (ties to the lower entry), exact softmax over them with ``log(count)``.

* :func:`candidates_kernel` — per tile of ``BQ`` queries, scores every entry on the int8 tensor
  cores: with 0/1 bits, ``2·|q∧e| − |e| = sim − n_bits + |q|`` (exact; one constant per query,
  so each query ranks entries as the similarity does). A probe pass over every
  ``PROBE_STRIDE``-th chunk keeps, per query, the best score of each of ``BC`` column
  partitions; the ``k``-th largest of those maxima, ``θ``, is a lower bound of the final
  threshold (``k`` disjoint partitions hold an entry scoring ``≥ θ``). A second pass keeps,
  per query and chunk of ``BC`` entries, a bitmask of its groups of ``G`` entries whose best
  score is ``≥ θ``; nonzero masks are appended as one item (``chunk << 16 | mask``) — one store
  per query and chunk, no scan over entries.
* :func:`select_kernel` — per query: expands its items into a list of candidate groups, then
  a histogram of the candidates' similarities (bins are the ``n_bits + 1`` similarity values:
  no sort) gives the threshold ``T`` and how many score above it; entries above ``T`` and the
  first entries at ``T`` (entry order) make the ``k`` selected, written in entry order. A query
  with more candidates than its buffers hold scans all entries instead (same code, exact).
* ``select="levels"`` (``memory_select_levels``; kernels/memory/NOTES.md) finds the same entries
  without candidate lists: :func:`compact_bits_kernel` / :func:`query_operand_kernel` pack the
  filled entries and the queries as int8 operands; :func:`level_count_kernel` passes count, per
  query, the entries at or above a few similarity levels (3 per int32 add, byte lanes) until the
  threshold level is known — probes on samples aim a 6-level window, later passes close what
  it missed; :func:`level_emit_kernel` lists the words of 16 entries that hold a selected
  entry; :func:`level_expand_kernel` scores their entries and writes the selection.
* :func:`attend_fwd_kernel` / :func:`attend_bwd_kernel` — exact attention over the selected
  entries (online softmax, fp32) with ``log(count)``; backward gives ``dq`` including the
  gradient through ``lse``.
"""
import triton
import triton.language as tl
from triton.language.extra import libdevice

NEG_BIG = tl.constexpr(-(1 << 20))  # score of an empty entry: below every real score (>= -256)


# --------------------------------------------------------------------------------------------
# write
# --------------------------------------------------------------------------------------------
@triton.jit
def fifo_rank_kernel(
    bucket_ptr, writes_ptr, rank_ptr, total_ptr, entry_ptr,
    T, U, S,
    BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr,
):
    pid_t = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = offs_t < T
    bi = tl.load(bucket_ptr + row * T + offs_t, mask=t_ok, other=-1)
    before = tl.zeros((BLOCK_T,), dtype=tl.int32)
    total = tl.zeros((BLOCK_T,), dtype=tl.int32)
    for j0 in range(0, T, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        bj = tl.load(bucket_ptr + row * T + offs_j, mask=offs_j < T, other=-2)
        eq = bi[:, None] == bj[None, :]
        total += tl.sum(eq.to(tl.int32), 1)
        before += tl.sum((eq & (offs_j[None, :] < offs_t[:, None])).to(tl.int32), 1)
    old = tl.load(writes_ptr + row * U + bi, mask=t_ok, other=0)
    slot = (old + before) % S
    entry = bi.to(tl.int64) * S + slot
    tl.store(rank_ptr + row * T + offs_t, before, mask=t_ok)
    tl.store(total_ptr + row * T + offs_t, total, mask=t_ok)
    tl.store(entry_ptr + row * T + offs_t, entry, mask=t_ok)


@triton.jit
def fifo_scatter_kernel(
    k_ptr, v_ptr, sig_ptr, bucket_ptr, rank_ptr, total_ptr, entry_ptr, frames_ptr,
    mk_ptr, mv_ptr, msig_ptr, mframes_ptr, mcounts_ptr, writes_ptr,
    H, T, U, S, D,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    NW: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_r = tl.program_id(1)
    b = pid_r // H
    h = pid_r % H
    row = pid_r.to(tl.int64)
    c = U * S
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = offs_t < T
    rank = tl.load(rank_ptr + row * T + offs_t, mask=t_ok, other=0)
    total = tl.load(total_ptr + row * T + offs_t, mask=t_ok, other=0)
    entry = tl.load(entry_ptr + row * T + offs_t, mask=t_ok, other=0)
    keep = t_ok & (rank >= total - S)  # only the last `s` tokens of a bucket survive this write
    dst = row * c + entry  # (BLOCK_T,) int64

    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    m2 = keep[:, None] & d_ok[None, :]
    kx = tl.load(k_ptr + b.to(tl.int64) * stride_kb + h * stride_kh + offs_t[:, None].to(tl.int64) * stride_kt
                 + offs_d[None, :] * stride_kd, mask=m2, other=0.0)
    tl.store(mk_ptr + dst[:, None] * D + offs_d[None, :], kx.to(mk_ptr.dtype.element_ty), mask=m2)
    vx = tl.load(v_ptr + b.to(tl.int64) * stride_vb + h * stride_vh + offs_t[:, None].to(tl.int64) * stride_vt
                 + offs_d[None, :] * stride_vd, mask=m2, other=0.0)
    tl.store(mv_ptr + dst[:, None] * D + offs_d[None, :], vx.to(mv_ptr.dtype.element_ty), mask=m2)
    for j in tl.static_range(NW):
        word = tl.load(sig_ptr + (row * T + offs_t) * NW + j, mask=keep, other=0)
        tl.store(msig_ptr + dst * NW + j, word, mask=keep)
    fr = tl.load(frames_ptr + offs_t, mask=keep, other=0)
    tl.store(mframes_ptr + dst, fr, mask=keep)
    tl.store(mcounts_ptr + dst, tl.full((BLOCK_T,), 1, tl.int32), mask=keep)

    # the last token of each bucket advances its write counter by the bucket's tokens
    last = t_ok & (rank == total - 1)
    bi = tl.load(bucket_ptr + row * T + offs_t, mask=last, other=0)
    old = tl.load(writes_ptr + row * U + bi, mask=last, other=0)
    tl.store(writes_ptr + row * U + bi, old + total, mask=last)


# --------------------------------------------------------------------------------------------
# write, policy "merge"
# --------------------------------------------------------------------------------------------
@triton.jit
def _round_bf16(x):
    """fp32 ``x`` rounded to bfloat16 (to nearest even, as torch and ``cvt.rn.bf16.f32`` do;
    NaN aside) and back to fp32, with integer ops: the interpreter's fp32→bf16 cast truncates."""
    u = x.to(tl.uint32, bitcast=True)
    u = (u + (0x7FFF + ((u >> 16) & 1))) & 0xFFFF0000
    return u.to(tl.float32, bitcast=True)


@triton.jit
def merge_write_kernel(
    k_ptr, v_ptr, sig_ptr, bucket_ptr, frames_ptr, planes_ptr,
    mk_ptr, mv_ptr, msig_ptr, mframes_ptr, mcounts_ptr, writes_ptr,
    H, T, U, S, D, n_bits, plane_head_stride,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    NW: tl.constexpr, NWP: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    ACC_F64: tl.constexpr,
):
    """One program per (bucket, row): ``naive.merge_insert`` for that bucket.

    The bucket's ``s`` entries (key and value in the accumulation dtype, holding values already
    rounded to the memory's dtype; signature, count, frame), its write counter and the head's
    SimHash planes live in registers. The program walks this write's tokens of the bucket in
    token order (found by scanning the row's bucket ids: no sort) and applies each as the
    reference does: slot = ``bucket_writes`` while the bucket has free slots, else the slot of
    highest Hamming similarity (ties to the lower slot); key and value become
    ``(old·cnt + x) / (cnt + 1)`` (one rounding per operation in that order: launched without
    FMA contraction, ``div_rn``); the signature is SimHash of the merged key cast to the keys'
    dtype (bit ``m`` = projection on plane ``m`` > 0, packed as the signature kernel packs it);
    frame = max, count and write counter + 1. The bucket is stored back once, if a token came.

    Helpers are inlined on purpose: under the interpreter every ``@triton.jit`` call per token
    costs more than the token's arithmetic."""
    u = tl.program_id(0)
    pid_r = tl.program_id(1)
    b = pid_r // H
    h = pid_r % H
    row = pid_r.to(tl.int64)
    KEY_TY: tl.constexpr = k_ptr.dtype.element_ty
    MEM_TY: tl.constexpr = mk_ptr.dtype.element_ty
    if ACC_F64:
        acc_ty = tl.float64
    else:
        acc_ty = tl.float32
    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < S
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    wi = tl.arange(0, NWP)
    w_ok = wi < NW
    ent = row * U * S + u.to(tl.int64) * S + offs_s  # (BLOCK_S,) entries of this bucket
    m_sd = s_ok[:, None] & d_ok[None, :]
    m_sw = s_ok[:, None] & w_ok[None, :]
    keys = tl.load(mk_ptr + ent[:, None] * D + offs_d[None, :], mask=m_sd, other=0.0).to(acc_ty)
    vals = tl.load(mv_ptr + ent[:, None] * D + offs_d[None, :], mask=m_sd, other=0.0).to(acc_ty)
    cnts = tl.load(mcounts_ptr + ent, mask=s_ok, other=0).to(tl.int64)  # int64 in the loop: the interpreter
    # checks every int32 add/sub/mul for overflow (costly per token), int64 not
    frs = tl.load(mframes_ptr + ent, mask=s_ok, other=-1)
    bw0 = tl.load(writes_ptr + row * U + u)
    bw = bw0
    # the head's planes (D, n_bits) as (BLOCK_D, NWP·32), 0 outside
    offs_m = tl.arange(0, NWP * 32)
    m_ok = offs_m < n_bits
    planes = tl.load(planes_ptr + h * plane_head_stride + offs_d[:, None] * n_bits + offs_m[None, :],
                     mask=d_ok[:, None] & m_ok[None, :], other=0.0)
    shift = offs_m % 32
    word_of = offs_m // 32
    mw_ok = word_of < NW
    # signatures held as 0/1 bits (BLOCK_S, NWP·32): Hamming distance = count of unequal bits (no
    # popcount), and a merged key's bits go in as computed; packed into words once, at the end
    sbits = (tl.load(msig_ptr + ent[:, None] * NW + word_of[None, :], mask=s_ok[:, None] & mw_ok[None, :], other=0)
             >> shift[None, :]) & 1
    zero64 = tl.full((), 0, tl.int64)  # (S or n_bits may arrive as constexpr 1: no .to on them)
    s_1 = zero64 + S + 1
    tie = S - offs_s.to(tl.int64)  # ties to the lower slot
    offs_s64 = offs_s.to(tl.int64)
    bits_total = zero64 + n_bits
    k_row = k_ptr + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + offs_d * stride_kd
    v_row = v_ptr + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh + offs_d * stride_vd
    tsig_row = sig_ptr + row * T * NW + word_of

    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mine = tl.load(bucket_ptr + row * T + offs_t, mask=offs_t < T, other=-1) == u
        n = tl.sum(mine.to(tl.int32), 0)
        prev = t0 - 1
        for _i in range(0, n):  # this tile's tokens of the bucket, in token order
            tok = tl.min(tl.where(mine & (offs_t > prev), offs_t, T), 0)
            prev = tok
            tok64 = tok.to(tl.int64)
            # loads that do not depend on the bucket's state first (their latency overlaps the choice)
            tbits = (tl.load(tsig_row + tok64 * NW, mask=mw_ok, other=0) >> shift) & 1  # (NWP·32,)
            x = tl.load(k_row + tok64 * stride_kt, mask=d_ok, other=0.0).to(acc_ty)
            y = tl.load(v_row + tok64 * stride_vt, mask=d_ok, other=0.0).to(acc_ty)
            fr = tl.load(frames_ptr + tok64)
            # slot: the next free one, else the most similar (ties to the lower slot)
            ham = tl.sum((sbits != tbits[None, :]).to(tl.int64), 1)  # (BLOCK_S,)
            score = tl.where(s_ok, (bits_total - ham) * s_1 + tie, -1)  # similarity, then the lower slot
            best = S - tl.max(score, 0) % s_1
            slot = tl.where(bw < S, bw, best)
            sel = offs_s64 == slot
            # running mean, exactly the reference's operations and rounding, computed for every slot
            # of the bucket and kept for the chosen one (elementwise: no reduction per token)
            c_old = cnts.to(acc_ty)[:, None]  # (BLOCK_S, 1)
            if ACC_F64:
                new_k = (keys * c_old + x[None, :]) / (c_old + 1.0)
                new_v = (vals * c_old + y[None, :]) / (c_old + 1.0)
                st_k = new_k.to(MEM_TY).to(acc_ty)
                st_v = new_v.to(MEM_TY).to(acc_ty)
                kx = new_k.to(tl.float32)  # float64 → float32 → the keys' dtype, below
            else:
                den = tl.broadcast_to(c_old + 1.0, (BLOCK_S, BLOCK_D))
                new_k = tl.div_rn(keys * c_old + x[None, :], den)
                new_v = tl.div_rn(vals * c_old + y[None, :], den)
                if MEM_TY == tl.bfloat16:
                    st_k = _round_bf16(new_k)
                    st_v = _round_bf16(new_v)
                elif MEM_TY == tl.float32:
                    st_k = new_k
                    st_v = new_v
                else:
                    st_k = new_k.to(MEM_TY).to(tl.float32)
                    st_v = new_v.to(MEM_TY).to(tl.float32)
                kx = new_k
            keys = tl.where(sel[:, None], st_k, keys)
            vals = tl.where(sel[:, None], st_v, vals)
            # signature of the merged key as the hasher sees it (cast to the keys' dtype, then fp32),
            # projected as the signature kernel projects: tl.dot in full fp32 (every slot's row; one is kept)
            if KEY_TY == tl.bfloat16:
                kx = _round_bf16(kx)
            elif KEY_TY != tl.float32:
                kx = kx.to(KEY_TY).to(tl.float32)
            z = tl.dot(kx, planes, input_precision="ieee")  # (BLOCK_S, NWP·32)
            kbits = ((z > 0) & m_ok[None, :]).to(tl.int32)
            sbits = tl.where(sel[:, None], kbits, sbits)
            frs = tl.where(sel, tl.maximum(frs, fr), frs)
            cnts = tl.where(sel, cnts + 1, cnts)
            bw += 1

    touched = bw != bw0
    tl.store(mk_ptr + ent[:, None] * D + offs_d[None, :], keys.to(MEM_TY), mask=m_sd & touched)
    tl.store(mv_ptr + ent[:, None] * D + offs_d[None, :], vals.to(MEM_TY), mask=m_sd & touched)
    # pack as the signature kernel does (bit m of word m // 32 at position m % 32); it ORs a
    # word's bits, which are disjoint: their (wrapping) int32 sum is the same word, and a sum is
    # far cheaper than tl.reduce under the interpreter
    sigs = tl.sum(tl.reshape(sbits << shift[None, :], (BLOCK_S, NWP, 32)), 2)
    tl.store(msig_ptr + ent[:, None] * NW + wi[None, :], sigs, mask=m_sw & touched)
    tl.store(mcounts_ptr + ent, cnts.to(tl.int32), mask=s_ok & touched)
    tl.store(mframes_ptr + ent, frs, mask=s_ok & touched)
    tl.store(writes_ptr + row * U + u, bw, mask=touched)


# --------------------------------------------------------------------------------------------
# read: candidates
# --------------------------------------------------------------------------------------------
@triton.jit
def _popcount(x, USE_POPC: tl.constexpr):
    if USE_POPC:
        return libdevice.popc(x)
    else:  # SWAR popcount on uint32 (the interpreter has no libdevice)
        u = x.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        return ((u * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _unpack_queries(qsig_ptr, rows, r_ok, n_bits, NW: tl.constexpr, NWP: tl.constexpr):
    """0/1 bits of the queries' signatures as int8 ``(BQ, 32·NWP)``, 0 past ``n_bits``."""
    bit = tl.arange(0, NWP * 32)
    words = tl.load(qsig_ptr + rows[:, None] * NW + (bit // 32)[None, :],
                    mask=r_ok[:, None] & (bit < NW * 32)[None, :], other=0)
    on = ((words >> (bit % 32)[None, :]) & 1) & (bit < n_bits)[None, :].to(tl.int32)
    return on.to(tl.int8)


@triton.jit
def _entry_scores(qb, sig_ptr, counts_ptr, rbase, c0, C,
                  NW: tl.constexpr, NWP: tl.constexpr, BC: tl.constexpr, USE_POPC: tl.constexpr):
    """Scores of the queries against entries ``c0 .. c0+BC``: int32 ``(BQ, BC)``
    ``2·|q∧e| − |e|`` = ``sim − n_bits + |q|`` (one constant per query, so each query ranks its
    entries as the similarity does); empty entries (and those past ``C``) get ``NEG_BIG``."""
    cols = c0 + tl.arange(0, BC)
    c_ok = cols < C
    wi = tl.arange(0, NWP)
    words = tl.load(sig_ptr + (rbase + cols)[None, :] * NW + wi[:, None],
                    mask=c_ok[None, :] & (wi < NW)[:, None], other=0)  # (NWP, BC)
    sh = tl.arange(0, 32)
    bits = ((words[:, None, :] >> sh[None, :, None]) & 1).to(tl.int8)  # (NWP, 32, BC)
    eb = tl.reshape(bits, (NWP * 32, BC))
    ones = tl.sum(_popcount(words, USE_POPC), 0)  # |e| (BC,)
    cnt = tl.load(counts_ptr + rbase + cols, mask=c_ok, other=0)
    bias = tl.where(cnt > 0, -ones, NEG_BIG)
    s = tl.dot(qb, eb, out_dtype=tl.int32)
    return 2 * s + bias[None, :], cols


@triton.jit
def candidates_kernel(
    qsig_ptr, sig_ptr, counts_ptr, cand_ptr, ncand_ptr,
    N, C, n_bits, top_k, CAP,
    NW: tl.constexpr, NWP: tl.constexpr,
    BQ: tl.constexpr, BC: tl.constexpr, GPC: tl.constexpr,
    PROBE: tl.constexpr, PROBE_STRIDE: tl.constexpr, USE_POPC: tl.constexpr, PROBE_TOP2: tl.constexpr = False,
):
    pid_q = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    rows = pid_q * BQ + tl.arange(0, BQ)
    r_ok = rows < N
    qrow = r * N + rows  # global query row
    rbase = r * C
    qb = _unpack_queries(qsig_ptr, qrow, r_ok, n_bits, NW, NWP)

    # 1. probe: per query, best score of each of BC column partitions → θ (lower bound of T)
    floor = 0 - n_bits  # below no real score (>= -n_bits), above every empty entry
    #    (PROBE_TOP2: the best two of each partition, θ = k-th of those 2·BC distinct entries: still
    #    a lower bound, and far tighter once k nears BC — with one per partition and k = BC, θ is
    #    the worst partition's best, and nearly every group became a candidate)
    if PROBE:
        best = tl.full((BQ, BC), 2 * NEG_BIG, tl.int32)
        second = tl.full((BQ, BC), 2 * NEG_BIG, tl.int32)
        for c0 in range(0, C, BC * PROBE_STRIDE):
            s, cols = _entry_scores(qb, sig_ptr, counts_ptr, rbase, c0, C, NW, NWP, BC, USE_POPC)
            if PROBE_TOP2:
                second = tl.maximum(second, tl.minimum(best, s))
            best = tl.maximum(best, s)
        if PROBE_TOP2:
            ranked = tl.sort(tl.reshape(tl.join(best, second), (BQ, 2 * BC)), dim=1, descending=True)
            col = tl.arange(0, 2 * BC)
        else:
            ranked = tl.sort(best, dim=1, descending=True)
            col = tl.arange(0, BC)
        theta = tl.sum(tl.where(col[None, :] == top_k - 1, ranked, 0), 1)
        theta = tl.maximum(theta, floor)
    else:
        theta = tl.zeros((BQ,), tl.int32) + floor

    # 2. candidates: one item per query and chunk holding an entry scoring >= θ:
    #    chunk << 16 | bitmask of its GPC groups (G entries each) that do, in entry order
    G: tl.constexpr = BC // GPC
    base = tl.zeros((BQ,), dtype=tl.int32)
    gbit = tl.arange(0, GPC)
    for c0 in range(0, C, BC):
        s, cols = _entry_scores(qb, sig_ptr, counts_ptr, rbase, c0, C, NW, NWP, BC, USE_POPC)
        gmax = tl.max(tl.reshape(s, (BQ, GPC, G)), 2)  # (BQ, GPC)
        mask = tl.sum(tl.where(gmax >= theta[:, None], 1 << gbit[None, :], 0), 1)  # (BQ,)
        item = ((c0 // BC) << 16) | mask
        tl.store(cand_ptr + qrow * CAP + base, item, mask=(mask != 0) & (base < CAP) & r_ok)
        base += (mask != 0).to(tl.int32)
    tl.store(ncand_ptr + qrow, base, mask=r_ok)


# --------------------------------------------------------------------------------------------
# read: exact top-k among the candidates
# --------------------------------------------------------------------------------------------
@triton.jit
def _lanes(qsig_ptr, sig_ptr, counts_ptr, grp_ptr, qrow, rbase, l0, L, from_buf, C, CAPG, n_bits,
           NW: tl.constexpr, G: tl.constexpr, BL: tl.constexpr, USE_POPC: tl.constexpr):
    """Entry index, similarity and validity of lanes ``l0 .. l0+BL`` of one query's candidates:
    lane ``l`` is entry ``l % G`` of candidate group ``l // G`` (entry ``l`` of the memory when
    ``from_buf`` is false)."""
    lanes = l0 + tl.arange(0, BL)
    l_ok = lanes < L
    grp = tl.load(grp_ptr + qrow * CAPG + lanes // G, mask=l_ok & from_buf, other=0)
    e = tl.where(from_buf, grp * G + lanes % G, lanes)
    l_ok = l_ok & (e < C)
    ok = l_ok & (tl.load(counts_ptr + rbase + e, mask=l_ok, other=0) > 0)
    diff = tl.zeros((BL,), dtype=tl.int32)
    for j in tl.static_range(NW):
        qw = tl.load(qsig_ptr + qrow * NW + j)
        ew = tl.load(sig_ptr + (rbase + e) * NW + j, mask=ok, other=0)
        diff += _popcount(ew ^ qw, USE_POPC)
    return e, n_bits - diff, ok


@triton.jit
def select_kernel(
    qsig_ptr, sig_ptr, counts_ptr, cand_ptr, ncand_ptr, grp_ptr, idx_ptr,
    N, C, n_bits, top_k, CAP, CAPG,
    NW: tl.constexpr, GPC: tl.constexpr, G: tl.constexpr, BI: tl.constexpr, BL: tl.constexpr,
    NBINS: tl.constexpr, USE_POPC: tl.constexpr,
):
    qrow = tl.program_id(0).to(tl.int64)
    rbase = (qrow // N) * C
    n_items = tl.load(ncand_ptr + qrow)

    # 0. expand the candidate chunks into a list of candidate groups (entry order)
    n_grp = 0
    if n_items <= CAP:
        gbit = tl.arange(0, GPC)
        for i0 in range(0, n_items, BI):
            it = i0 + tl.arange(0, BI)
            item = tl.load(cand_ptr + qrow * CAP + it, mask=it < n_items, other=0)
            on = (((item[:, None] & 0xFFFF) >> gbit[None, :]) & 1).to(tl.int32)  # (BI, GPC)
            gid = (item[:, None] >> 16) * GPC + gbit[None, :]
            flat_on = tl.reshape(on, (BI * GPC,))
            pos = n_grp + tl.cumsum(flat_on, 0) - 1
            tl.store(grp_ptr + qrow * CAPG + pos, tl.reshape(gid, (BI * GPC,)), mask=(flat_on == 1) & (pos < CAPG))
            n_grp += tl.sum(flat_on, 0)
        tl.debug_barrier()  # the group list is read back by other threads of this program
    from_buf = (n_items <= CAP) & (n_grp <= CAPG)
    L = tl.where(from_buf, n_grp * G, C)

    # 1. histogram of similarities → threshold T and how many score above it
    hist = tl.zeros((NBINS,), dtype=tl.int32)
    for l0 in range(0, L, BL):
        e, sim, ok = _lanes(qsig_ptr, sig_ptr, counts_ptr, grp_ptr, qrow, rbase, l0, L, from_buf, C, CAPG, n_bits,
                            NW, G, BL, USE_POPC)
        hist += tl.histogram(sim, NBINS, mask=ok)
    level = tl.arange(0, NBINS)
    at_least = tl.cumsum(hist, 0, reverse=True)  # entries with similarity >= level
    thr = tl.max(tl.where((at_least >= top_k) & (level <= n_bits), level, -1), 0)
    above = tl.sum(tl.where(level > thr, hist, 0), 0)
    need_eq = top_k - above  # entries at the threshold to take, lowest index first

    # 2. selected entries in entry order
    out = idx_ptr + qrow * top_k
    n_eq = 0
    n_sel = 0
    for l0 in range(0, L, BL):
        e, sim, ok = _lanes(qsig_ptr, sig_ptr, counts_ptr, grp_ptr, qrow, rbase, l0, L, from_buf, C, CAPG, n_bits,
                            NW, G, BL, USE_POPC)
        eq = (ok & (sim == thr)).to(tl.int32)
        eq_rank = n_eq + tl.cumsum(eq, 0) - 1
        sel = (ok & (sim > thr)) | ((eq == 1) & (eq_rank < need_eq))
        sel_i = sel.to(tl.int32)
        pos = n_sel + tl.cumsum(sel_i, 0) - 1
        tl.store(out + pos, e, mask=sel)
        n_eq += tl.sum(eq, 0)
        n_sel += tl.sum(sel_i, 0)
    for p0 in range(0, top_k, BL):  # fewer than k entries: pad with -1
        p = p0 + tl.arange(0, BL)
        tl.store(out + p, tl.full((BL,), -1, tl.int32), mask=(p >= n_sel) & (p < top_k))


# --------------------------------------------------------------------------------------------
# read: attention over the selected entries
# --------------------------------------------------------------------------------------------
@triton.jit
def attend_fwd_kernel(
    q_ptr, keys_ptr, values_ptr, counts_ptr, idx_ptr, out_ptr, lse_ptr,
    H, N, C, D, top_k, scale,
    stride_qb, stride_qh, stride_qn, stride_qd,
    BJ: tl.constexpr, BD: tl.constexpr,
):
    qrow = tl.program_id(0).to(tl.int64)
    r = qrow // N
    i = qrow % N
    b = r // H
    h = r % H
    offs_d = tl.arange(0, BD)
    d_ok = offs_d < D
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + i * stride_qn + offs_d * stride_qd, mask=d_ok, other=0.0).to(tl.float32)
    m = -float("inf")
    lsum = 0.0
    acc = tl.zeros((BD,), dtype=tl.float32)
    for j0 in range(0, top_k, BJ):
        offs_j = j0 + tl.arange(0, BJ)
        e = tl.load(idx_ptr + qrow * top_k + offs_j, mask=offs_j < top_k, other=-1)
        ok = e >= 0
        ent = r * C + e
        m2 = ok[:, None] & d_ok[None, :]
        kt = tl.load(keys_ptr + ent[:, None] * D + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
        cnt = tl.load(counts_ptr + ent, mask=ok, other=1)
        s = tl.sum(kt * q[None, :], 1) * scale + tl.log(tl.maximum(cnt, 1).to(tl.float32))
        s = tl.where(ok, s, -float("inf"))
        m_new = tl.maximum(m, tl.max(s, 0))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
        p = tl.exp(s - m_safe)
        alpha = tl.exp(m - m_safe)
        vt = tl.load(values_ptr + ent[:, None] * D + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
        lsum = lsum * alpha + tl.sum(p, 0)
        acc = acc * alpha + tl.sum(p[:, None] * vt, 0)
        m = m_new
    has = lsum > 0
    lse = tl.where(has, m + tl.log(tl.where(has, lsum, 1.0)), -float("inf"))
    out = tl.where(has, acc / tl.where(has, lsum, 1.0), 0.0)
    tl.store(out_ptr + qrow * D + offs_d, out.to(out_ptr.dtype.element_ty), mask=d_ok)
    tl.store(lse_ptr + qrow, lse)


@triton.jit
def attend_bwd_kernel(
    q_ptr, keys_ptr, values_ptr, counts_ptr, idx_ptr, lse_ptr, dout_ptr, dlse_ptr, dq_ptr,
    H, N, C, D, top_k, scale,
    stride_qb, stride_qh, stride_qn, stride_qd,
    BJ: tl.constexpr, BD: tl.constexpr,
):
    """``dq = scale · Σ_j p_j (dO·v_j − δ + dlse) k_j`` with ``δ = Σ_j p_j dO·v_j``."""
    qrow = tl.program_id(0).to(tl.int64)
    r = qrow // N
    i = qrow % N
    b = r // H
    h = r % H
    offs_d = tl.arange(0, BD)
    d_ok = offs_d < D
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + i * stride_qn + offs_d * stride_qd, mask=d_ok, other=0.0).to(tl.float32)
    do = tl.load(dout_ptr + qrow * D + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    lse = tl.load(lse_ptr + qrow)
    dlse = tl.load(dlse_ptr + qrow).to(tl.float32)
    lse_safe = tl.where(lse == -float("inf"), 0.0, lse)
    pdk = tl.zeros((BD,), dtype=tl.float32)  # Σ p (dO·v) k
    pk = tl.zeros((BD,), dtype=tl.float32)   # Σ p k
    delta = 0.0
    for j0 in range(0, top_k, BJ):
        offs_j = j0 + tl.arange(0, BJ)
        e = tl.load(idx_ptr + qrow * top_k + offs_j, mask=offs_j < top_k, other=-1)
        ok = e >= 0
        ent = r * C + e
        m2 = ok[:, None] & d_ok[None, :]
        kt = tl.load(keys_ptr + ent[:, None] * D + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
        vt = tl.load(values_ptr + ent[:, None] * D + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
        cnt = tl.load(counts_ptr + ent, mask=ok, other=1)
        s = tl.sum(kt * q[None, :], 1) * scale + tl.log(tl.maximum(cnt, 1).to(tl.float32))
        p = tl.where(ok, tl.exp(s - lse_safe), 0.0)
        dov = tl.sum(vt * do[None, :], 1)
        pdk += tl.sum((p * dov)[:, None] * kt, 0)
        pk += tl.sum(p[:, None] * kt, 0)
        delta += tl.sum(p * dov, 0)
    dq = scale * (pdk + (dlse - delta) * pk)
    tl.store(dq_ptr + qrow * D + offs_d, dq.to(dq_ptr.dtype.element_ty), mask=d_ok)


# --------------------------------------------------------------------------------------------
# read, one-pass select (``select="levels"``): counts per similarity level, then one emit pass
# --------------------------------------------------------------------------------------------
@triton.jit
def block_count_kernel(counts_ptr, blk_ptr, C, NB, BE: tl.constexpr):
    """Filled entries (``counts > 0``) of each block of ``BE`` entries of a row: ``blk (r, NB)``."""
    r = tl.program_id(1).to(tl.int64)
    e = tl.program_id(0) * BE + tl.arange(0, BE)
    ok = (e < C) & (tl.load(counts_ptr + r * C + e, mask=e < C, other=0) > 0)
    tl.store(blk_ptr + r * NB + tl.program_id(0), tl.sum(ok.to(tl.int32), 0))


@triton.jit
def compact_bits_kernel(sig_ptr, counts_ptr, incl_ptr, bits_ptr, emap_ptr, sigc_ptr, nv_ptr, C, NB, n_bits,
                        NW: tl.constexpr, KP: tl.constexpr, BE: tl.constexpr):
    """A block of ``BE`` entries of one row: its filled entries, in entry order, packed to the
    front of the row — after the ``incl[b] − (this block's count)`` filled entries of the blocks
    before (``incl``: inclusive running count per block) — as ``KP`` int8 0/1 bits (0 past
    ``n_bits``: the B operand of the scoring dot), their signatures ``sigc`` and entry ids
    ``emap``. The last block stores the row's number of filled entries ``nv``."""
    r = tl.program_id(1).to(tl.int64)
    b = tl.program_id(0)
    e = b * BE + tl.arange(0, BE)
    e_ok = e < C
    on_e = (e_ok & (tl.load(counts_ptr + r * C + e, mask=e_ok, other=0) > 0)).to(tl.int32)
    incl = tl.load(incl_ptr + r * NB + b)
    p = incl - tl.sum(on_e, 0) + tl.cumsum(on_e, 0) - on_e
    ok = on_e == 1
    bit = tl.arange(0, KP)
    words = tl.load(sig_ptr + (r * C + e)[:, None] * NW + (bit // 32)[None, :],
                    mask=ok[:, None] & (bit < NW * 32)[None, :], other=0)
    on = ((words >> (bit % 32)[None, :]) & 1) & (bit < n_bits)[None, :].to(tl.int32)
    dst = r * C + p
    tl.store(bits_ptr + dst[:, None] * KP + bit[None, :], on.to(tl.int8), mask=ok[:, None])
    tl.store(emap_ptr + dst, e.to(tl.int32), mask=ok)
    for w in tl.static_range(NW):
        tl.store(sigc_ptr + dst * NW + w, tl.load(sig_ptr + (r * C + e) * NW + w, mask=ok, other=0), mask=ok)
    tl.store(nv_ptr + r, incl, mask=b == NB - 1)


@triton.jit
def query_operand_kernel(qsig_ptr, qa_ptr, off_ptr, R, n_bits, NW: tl.constexpr, KP: tl.constexpr, BR: tl.constexpr):
    """Queries as the scoring dot's A operand, once per read: int8 ``2·bit − 1`` (``±1``; 0 past
    ``n_bits``) ``(R, KP)``, and ``off = n_bits − |q|``: with entry bits ``e`` as B,
    ``dot = 2·|q∧e| − |e| = sim − off``. (Loaded from memory, the operand stays in shared memory
    for the tensor cores; computed in the scoring kernel, it was reloaded into registers every
    chunk.)"""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    r_ok = rows < R
    bit = tl.arange(0, KP)
    words = tl.load(qsig_ptr + rows[:, None].to(tl.int64) * NW + (bit // 32)[None, :],
                    mask=r_ok[:, None] & (bit < NW * 32)[None, :], other=0)
    on = (words >> (bit % 32)[None, :]) & 1
    inb = (bit < n_bits)[None, :]
    tl.store(qa_ptr + rows[:, None].to(tl.int64) * KP + bit[None, :], tl.where(inb, 2 * on - 1, 0).to(tl.int8),
             mask=r_ok[:, None])
    tl.store(off_ptr + rows, n_bits - tl.sum(tl.where(inb, on, 0), 1), mask=r_ok)


@triton.jit
def _query_tile(qa_ptr, off_ptr, qrow, r_ok, KP: tl.constexpr):
    kb = tl.arange(0, KP)
    qa = tl.load(qa_ptr + qrow[:, None] * KP + kb[None, :], mask=r_ok[:, None], other=0)
    return qa, tl.load(off_ptr + qrow, mask=r_ok, other=0)


@triton.jit
def _sample_cols(j, SAMPLE: tl.constexpr):
    """Entry (compacted position) of sample index ``j``: every ``SAMPLE``-th, the offset rotating
    so that a sample sees every slot of a bucket."""
    if SAMPLE == 1:
        return j
    else:
        return j * SAMPLE + j % SAMPLE


@triton.jit
def _level_scores(qa, off, bits_ptr, rbase, j0, ns, nv,
                  KP: tl.constexpr, BC: tl.constexpr, SAMPLE: tl.constexpr, MASKED: tl.constexpr,
                  WORDS: tl.constexpr = False):
    """``sim − off`` of the queries against sample indices ``j0 .. j0+BC`` (int32 ``(BQ, BC)``;
    ``MASKED``: positions past the filled entries score as similarity −2, below every level).

    ``WORDS``: column ``c = 8i + 2m + b`` holds entry ``j0 + (BC/4)·m + 2i + b`` — in the tensor
    cores' accumulator layout a thread holds the columns of one ``m`` (``8i + 2·(lane % 4) + b``),
    so each thread holds whole runs of ``BC/4`` consecutive entries and a word's best score
    needs no exchange between threads (the result does not depend on it, only the speed)."""
    c = tl.arange(0, BC)
    if WORDS:
        c = (BC // 4) * ((c // 2) % 4) + 2 * (c // 8) + c % 2
    j = j0 + c
    cols = _sample_cols(j, SAMPLE)
    kb = tl.arange(0, KP)
    if MASKED:
        ok = (j < ns) & (cols < nv)
        eb = tl.load(bits_ptr + (rbase + cols)[:, None] * KP + kb[None, :], mask=ok[:, None], other=0)
        s = tl.dot(qa, tl.trans(eb), out_dtype=tl.int32)
        s = tl.where(ok[None, :], s, -2 - off[:, None])
    else:
        eb = tl.load(bits_ptr + (rbase + cols)[:, None] * KP + kb[None, :])
        s = tl.dot(qa, tl.trans(eb), out_dtype=tl.int32)
    return s


@triton.jit
def _lane_levels(t0, step, r: tl.constexpr, n_bits):
    """Levels of threshold register ``r`` ``(BQ, 4)``: lane ``l < 3`` counts level
    ``t0 + (3r + l)·step`` (clamped to ``[0, n_bits + 1]``); lane 3 is unused."""
    lane = tl.arange(0, 4)
    t = t0[:, None] + (3 * r + lane[None, :]) * step[:, None]
    return tl.minimum(tl.maximum(t, 0), n_bits + 1), lane[None, :] < 3


@triton.jit
def _lane_consts(off, t0, step, r: tl.constexpr, n_bits):
    """Per query, register ``r``'s 3 byte lanes: lane ``l`` holds ``128 + off − t_l``, so that in
    ``(sim − off)·0x01010101 + consts`` lane ``l`` is ``sim − t_l + 128`` — in ``[0, 255]`` for
    similarities −2 … n_bits ≤ 125, so no carry crosses lanes — and its bit 7 is set iff
    ``sim ≥ t_l``. The top byte is left 0 (it is masked off)."""
    t, used = _lane_levels(t0, step, r, n_bits)
    lane = tl.arange(0, 4)
    c = tl.where(used, off[:, None] - t + 128, 0).to(tl.uint32, bitcast=True) << (8 * lane[None, :]).to(tl.uint32)
    return tl.sum(c, 1)  # the lanes are disjoint bytes


@triton.jit
def _lane_sum(s, c):
    """Compare-and-sum of 3 levels at once, per query over the tile: one multiply-add and one AND
    per (query, entry), then the row sum — bit 7 of lane ``l`` adds ``2^(8l+7)`` per entry at or
    above level ``l``, and up to 255 of those stay below the next lane's bit 7 (BC ≤ 255)."""
    x = s.to(tl.uint32, bitcast=True) * tl.full((), 0x01010101, tl.uint32) + c[:, None]
    return tl.sum(x & tl.full((), 0x00808080, tl.uint32), 1)


@triton.jit
def _unpack_lanes(p):
    """Packed row sums ``(BQ,)`` → int32 counts ``(BQ, 4)`` (lane 3: 0)."""
    lane = tl.arange(0, 4)
    n = ((p[:, None] >> (8 * lane[None, :] + 7).to(tl.uint32)) & 0xFF).to(tl.int32)
    return tl.where(lane[None, :] < 3, n, 0)


@triton.jit
def _count_chunk(qa, off, bits_ptr, rbase, j0, ns, nv, c0, c1, c2, c3, n0, n1, n2, n3,
                 KP: tl.constexpr, BC: tl.constexpr, SAMPLE: tl.constexpr, NREG: tl.constexpr, MASKED: tl.constexpr):
    s = _level_scores(qa, off, bits_ptr, rbase, j0, ns, nv, KP, BC, SAMPLE, MASKED)
    n0 += _unpack_lanes(_lane_sum(s, c0))
    if NREG > 1:
        n1 += _unpack_lanes(_lane_sum(s, c1))
    if NREG > 2:
        n2 += _unpack_lanes(_lane_sum(s, c2))
    if NREG > 3:
        n3 += _unpack_lanes(_lane_sum(s, c3))
    return n0, n1, n2, n3


@triton.jit
def _passing(n, need, r: tl.constexpr, t0, step, n_bits):
    """For threshold register ``r``: the highest of its levels with ``count ≥ need`` (−1: none),
    the count at its lowest level below ``need`` (−1: none) and that level (``n_bits + 2``: none)."""
    t, used = _lane_levels(t0, step, r, n_bits)
    ok = used & (n >= need[:, None])
    fail = used & (n < need[:, None])
    return tl.max(tl.where(ok, t, -1), 1), tl.max(tl.where(fail, n, -1), 1), tl.min(tl.where(fail, t, n_bits + 2), 1)


@triton.jit
def _thresholds(lo, hi, est, NREG: tl.constexpr, WINDOW: tl.constexpr):
    """First level and step of a pass's ``3·NREG`` levels: spread over ``lo+1 .. hi`` (the bracket
    shrinks ``3·NREG`` times), or (``WINDOW``) consecutive around ``est``, inside the bracket."""
    NT: tl.constexpr = 3 * NREG
    if WINDOW:
        t0 = tl.minimum(tl.maximum(est - (NT - 2) // 2, lo + 1), tl.maximum(hi + 1 - NT, lo + 1))
        step = tl.zeros_like(lo) + 1
    else:
        t0 = lo + 1
        step = tl.maximum((hi - lo + NT - 1) // NT, 1)
    return t0, step


@triton.jit
def _apply_counts(n0, n1, n2, n3, lo, hi, above, est, t0, step, n_bits, top_k,
                  NREG: tl.constexpr, SAMPLE: tl.constexpr):
    """The state after a pass counted ``n_r`` (BQ, 4) at its levels: the bracket narrowed to the
    passing/failing levels (counts are exact), or for a probe (``SAMPLE > 1``: counts of every
    SAMPLE-th entry against ``top_k / SAMPLE``) only ``est``, the sample's level. Closed queries
    (``lo == hi``) keep theirs."""
    need = tl.zeros_like(lo) + top_k
    if SAMPLE > 1:
        need = (need + SAMPLE - 1) // SAMPLE
    # levels are increasing, counts non-increasing: the passing levels are a prefix
    best, fail_n, fail_t = _passing(n0, need, 0, t0, step, n_bits)
    if NREG > 1:
        b1, f1, ft1 = _passing(n1, need, 1, t0, step, n_bits)
        best, fail_n, fail_t = tl.maximum(best, b1), tl.maximum(fail_n, f1), tl.minimum(fail_t, ft1)
    if NREG > 2:
        b2, f2, ft2 = _passing(n2, need, 2, t0, step, n_bits)
        best, fail_n, fail_t = tl.maximum(best, b2), tl.maximum(fail_n, f2), tl.minimum(fail_t, ft2)
    if NREG > 3:
        b3, f3, ft3 = _passing(n3, need, 3, t0, step, n_bits)
        best, fail_n, fail_t = tl.maximum(best, b3), tl.maximum(fail_n, f3), tl.minimum(fail_t, ft3)
    open_ = lo < hi
    if SAMPLE > 1:  # the sample's level: its bracket's middle, the top passing level, or below the lowest
        mid = best + (fail_t - 1 - best) // 2
        new_est = tl.where(best < 0, tl.maximum(fail_t - 1, 0), tl.where(fail_t > n_bits + 1, best, mid))
        return lo, hi, above, tl.where(open_, new_est, est)
    else:
        shrink = open_ & (fail_t - 1 < hi)
        return (tl.where(open_, tl.maximum(lo, best), lo), tl.where(shrink, fail_t - 1, hi),
                tl.where(shrink, fail_n, above), est)


@triton.jit
def _part_counts(part_ptr, slot, qrow, r_ok, R, RMAX, RT, r: tl.constexpr):
    """Register ``r``'s counts ``(BQ, 4)`` summed over the ``R`` entry ranges of a pass
    (``part``: ``(2, RMAX, RT, 16)``, one slot per pass in turn)."""
    lane = tl.arange(0, 4)[None, :]
    n = tl.zeros((qrow.shape[0], 4), tl.int32)
    for rho in range(0, R):
        n += tl.load(part_ptr + ((slot * RMAX + rho) * RT + qrow[:, None]) * 16 + 4 * r + lane, mask=r_ok[:, None], other=0)
    return n


@triton.jit
def _state_in(st_ptr, part_ptr, p, qrow, r_ok, R, RMAX, RT, nv, n_bits, top_k,
              FIRST: tl.constexpr, PNREG: tl.constexpr, PSAMPLE: tl.constexpr, PWINDOW: tl.constexpr):
    """The per-query state ``(lo, hi, above, est)`` a pass starts from: the first pass's
    (``lo = −1``, ``hi = n_bits``, or closed at −1 with fewer than ``top_k`` filled entries), else
    the previous pass's state (``st[p − 1]``, stored by its programs of range 0) with that pass's
    counts (summed over its ``R`` entry ranges) applied — each pass settles the one before it, so
    a split pass needs no launch of its own to combine its ranges."""
    if FIRST:
        lo = tl.zeros_like(qrow).to(tl.int32) - 1
        hi = tl.where(nv < top_k, -1, tl.zeros_like(lo) + n_bits)
        above = tl.where(nv < top_k, tl.zeros_like(lo) + nv, 0)
        est = tl.zeros_like(lo)
    else:
        prev = st_ptr + (p - 1) * 4 * RT + qrow
        lo = tl.load(prev, mask=r_ok, other=0)
        hi = tl.load(prev + RT, mask=r_ok, other=0)
        above = tl.load(prev + 2 * RT, mask=r_ok, other=0)
        est = tl.load(prev + 3 * RT, mask=r_ok, other=0)
        if tl.sum((r_ok & (lo < hi)).to(tl.int32), 0) > 0:  # a tile closed before counted nothing
            t0, step = _thresholds(lo, hi, est, PNREG, PWINDOW)
            slot = (p - 1) % 2
            n0 = _part_counts(part_ptr, slot, qrow, r_ok, R, RMAX, RT, 0)
            n1 = _part_counts(part_ptr, slot, qrow, r_ok, R, RMAX, RT, 1)
            n2 = _part_counts(part_ptr, slot, qrow, r_ok, R, RMAX, RT, 2)
            n3 = _part_counts(part_ptr, slot, qrow, r_ok, R, RMAX, RT, 3)
            lo, hi, above, est = _apply_counts(n0, n1, n2, n3, lo, hi, above, est, t0, step, n_bits, top_k,
                                               PNREG, PSAMPLE)
    return lo, hi, above, est


@triton.jit
def _range_of(ns, R, BC: tl.constexpr):
    """Sample indices ``[start, end)`` of this program's entry range: whole chunks of ``BC``, the
    ranges of a row as even as chunks allow."""
    per = ((ns + BC - 1) // BC + R - 1) // R * BC
    start = tl.program_id(2) * per
    return start, tl.minimum(start + per, ns)


@triton.jit
def level_count_kernel(
    qa_ptr, off_ptr, bits_ptr, nv_ptr, st_ptr, part_ptr, p,
    N, C, n_bits, top_k, R, PR, RMAX, RT,
    KP: tl.constexpr, BQ: tl.constexpr, BC: tl.constexpr,
    NREG: tl.constexpr, SAMPLE: tl.constexpr, WINDOW: tl.constexpr, FIRST: tl.constexpr,
    PNREG: tl.constexpr, PSAMPLE: tl.constexpr, PWINDOW: tl.constexpr, COUNT: tl.constexpr = True,
):
    """Counting pass ``p`` over a tile of ``BQ`` queries of one memory row and one of ``R`` ranges
    of its filled entries: per query, the entries at or above each of ``3·NREG`` similarity
    levels (compare-and-sum, 3 levels per int32 add), into ``part[p % 2]`` (RMAX, RT, 16); ``PR``:
    the previous pass's ranges.

    Per query the state ``lo ≤ T ≤ hi`` brackets the threshold level ``T`` (the ``top_k``-th best
    similarity; −1 when fewer than ``top_k`` entries are filled), ``above`` = entries above ``hi``,
    ``est`` the probes' estimate of ``T``. The pass starts from the previous pass's state with its
    counts applied (``_state_in``; ``P*``: the previous pass's constants), which range 0 stores as
    ``st[p]``. The levels counted are spread over ``lo+1 .. hi`` or (``WINDOW``) consecutive around
    ``est``; ``SAMPLE > 1`` (a probe) counts every SAMPLE-th entry. A tile whose queries are all
    closed counts nothing. ``COUNT`` false: only settle the state (benchmarks' step timings)."""
    pid_q = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    rows = pid_q * BQ + tl.arange(0, BQ)
    r_ok = rows < N
    qrow = r * N + rows
    rbase = r * C
    nv = tl.load(nv_ptr + r)  # filled entries of this row
    lo, hi, above, est = _state_in(st_ptr, part_ptr, p, qrow, r_ok, PR, RMAX, RT, nv, n_bits, top_k,
                                   FIRST, PNREG, PSAMPLE, PWINDOW)
    here = st_ptr + p * 4 * RT + qrow
    mine = r_ok & (tl.program_id(2) == 0)
    tl.store(here, lo, mask=mine)
    tl.store(here + RT, hi, mask=mine)
    tl.store(here + 2 * RT, above, mask=mine)
    tl.store(here + 3 * RT, est, mask=mine)
    open_ = r_ok & (lo < hi)
    if COUNT:
        _count_pass(qa_ptr, off_ptr, bits_ptr, part_ptr, p, qrow, r_ok, rbase, nv, open_, lo, hi, est, n_bits, R, RMAX,
                    RT, KP, BQ, BC, NREG, SAMPLE, WINDOW)


@triton.jit
def _count_pass(qa_ptr, off_ptr, bits_ptr, part_ptr, p, qrow, r_ok, rbase, nv, open_, lo, hi, est, n_bits, R, RMAX, RT,
                KP: tl.constexpr, BQ: tl.constexpr, BC: tl.constexpr, NREG: tl.constexpr, SAMPLE: tl.constexpr,
                WINDOW: tl.constexpr):
    if tl.sum(open_.to(tl.int32), 0) > 0:
        t0, step = _thresholds(lo, hi, est, NREG, WINDOW)
        qa, off = _query_tile(qa_ptr, off_ptr, qrow, r_ok, KP)
        c0 = _lane_consts(off, t0, step, 0, n_bits)
        c1 = _lane_consts(off, t0, step, 1, n_bits)
        c2 = _lane_consts(off, t0, step, 2, n_bits)
        c3 = _lane_consts(off, t0, step, 3, n_bits)
        n0 = tl.zeros((BQ, 4), tl.int32)
        n1 = tl.zeros((BQ, 4), tl.int32)
        n2 = tl.zeros((BQ, 4), tl.int32)
        n3 = tl.zeros((BQ, 4), tl.int32)
        ns = (nv + SAMPLE - 1) // SAMPLE
        start, end = _range_of(ns, R, BC)
        for j0 in range(start, tl.minimum(end, ns - ns % BC), BC):
            n0, n1, n2, n3 = _count_chunk(qa, off, bits_ptr, rbase, j0, ns, nv, c0, c1, c2, c3, n0, n1, n2, n3,
                                          KP, BC, SAMPLE, NREG, False)
        if (ns % BC != 0) & (end == ns) & (start < end):
            n0, n1, n2, n3 = _count_chunk(qa, off, bits_ptr, rbase, ns - ns % BC, ns, nv, c0, c1, c2, c3, n0, n1, n2, n3,
                                          KP, BC, SAMPLE, NREG, True)
        out = part_ptr + (((p % 2) * RMAX + tl.program_id(2)) * RT + qrow[:, None]) * 16 + tl.arange(0, 4)[None, :]
        tl.store(out, n0, mask=r_ok[:, None])
        tl.store(out + 4, n1, mask=r_ok[:, None])
        tl.store(out + 8, n2, mask=r_ok[:, None])
        tl.store(out + 12, n3, mask=r_ok[:, None])


@triton.jit
def _emit_chunk(qa, off, bits_ptr, rbase, j0, nv, ts, need, base, neq, items_ptr, slot, r_ok, CAPI,
                KP: tl.constexpr, BC: tl.constexpr, USE_POPC: tl.constexpr, MASKED: tl.constexpr):
    """Appends, per query, the words (``BC/8`` consecutive filled entries, 8 per chunk) of this
    chunk that hold a selected entry: every word whose best score is above the threshold ``ts``,
    and words whose best is at it while fewer than ``need`` such words came before (they hold the
    lowest entries at the threshold: at most ``need`` words contain the first ``need`` of them).
    A thread holds two whole words of a query (``_level_scores(WORDS=True)``): their maxima need
    no exchange; positions come from 8-bit masks (sums of distinct bits) and popcounts, no scan."""
    s = _level_scores(qa, off, bits_ptr, rbase, j0, nv, nv, KP, BC, 1, MASKED, True)
    BQ: tl.constexpr = s.shape[0]
    # column 8i + 2m + b, i = (BC/16)·h + l: word 2m + h of the chunk
    wmax = tl.max(tl.max(tl.reshape(s, (BQ, 2, BC // 16, 4, 2)), 4), 2)  # (BQ, 2, 4) [h, m]
    w = 2 * tl.arange(0, 4)[None, None, :] + tl.arange(0, 2)[None, :, None]  # word in the chunk
    bit = 1 << w
    below = bit - 1  # the words before it, as bits
    at = ts[:, None, None]
    eqo = wmax == at
    eq_bits = tl.sum(tl.sum(tl.where(eqo, bit, 0), 2), 1)  # (BQ,)
    eq_before = neq[:, None, None] + _popcount(eq_bits[:, None, None] & below, USE_POPC)
    emit = (wmax > at) | (eqo & (eq_before < need[:, None, None]))
    e_bits = tl.sum(tl.sum(tl.where(emit, bit, 0), 2), 1)
    pos = base[:, None, None] + _popcount(e_bits[:, None, None] & below, USE_POPC)
    word = j0 // (BC // 8) + w + tl.zeros_like(pos)
    tl.store(items_ptr + slot[:, None, None] * CAPI + pos, word, mask=emit & r_ok[:, None, None] & (pos < CAPI))
    return base + _popcount(e_bits, USE_POPC), neq + _popcount(eq_bits, USE_POPC)


@triton.jit
def level_emit_kernel(
    qa_ptr, off_ptr, bits_ptr, nv_ptr, st_ptr, part_ptr, p, items_ptr, nitems_ptr,
    N, C, n_bits, top_k, R, PR, RMAX, RT,
    KP: tl.constexpr, BQ: tl.constexpr, BC: tl.constexpr, USE_POPC: tl.constexpr,
    PNREG: tl.constexpr, PSAMPLE: tl.constexpr, PWINDOW: tl.constexpr,
):
    """The emit pass over one of ``R`` entry ranges: it settles the last counting pass (range 0
    stores the final state as ``st[p]``), then with each query's threshold level ``T = lo`` and
    ``need = top_k − above`` entries to take at it, appends the words (``BC/8`` consecutive filled
    entries) holding its selected entries, in entry order, to the range's list (at most ``top_k``
    words: each holds an entry above ``T`` or is one of the range's first ``need`` words at it —
    a superset of what the range contributes; the expansion cuts exactly)."""
    pid_q = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    rows = pid_q * BQ + tl.arange(0, BQ)
    r_ok = rows < N
    qrow = r * N + rows
    rbase = r * C
    nv = tl.load(nv_ptr + r)
    thr, hi, above, est = _state_in(st_ptr, part_ptr, p, qrow, r_ok, PR, RMAX, RT, nv, n_bits, top_k,
                                    False, PNREG, PSAMPLE, PWINDOW)
    here = st_ptr + p * 4 * RT + qrow
    mine = r_ok & (tl.program_id(2) == 0)
    tl.store(here, thr, mask=mine)
    tl.store(here + RT, hi, mask=mine)
    tl.store(here + 2 * RT, above, mask=mine)
    tl.store(here + 3 * RT, est, mask=mine)
    need = top_k - above
    qa, off = _query_tile(qa_ptr, off_ptr, qrow, r_ok, KP)
    ts = thr - off  # the threshold in score units (score = sim − off)
    slot = qrow * R + tl.program_id(2)
    base = tl.zeros((BQ,), tl.int32)
    neq = tl.zeros((BQ,), tl.int32)
    start, end = _range_of(nv, R, BC)
    for j0 in range(start, tl.minimum(end, nv - nv % BC), BC):
        base, neq = _emit_chunk(qa, off, bits_ptr, rbase, j0, nv, ts, need, base, neq, items_ptr, slot, r_ok, top_k,
                                KP, BC, USE_POPC, False)
    if (nv % BC != 0) & (end == nv) & (start < end):
        base, neq = _emit_chunk(qa, off, bits_ptr, rbase, nv - nv % BC, nv, ts, need, base, neq, items_ptr, slot,
                                r_ok, top_k, KP, BC, USE_POPC, True)
    tl.store(nitems_ptr + slot, base, mask=r_ok)


@triton.jit
def level_expand_kernel(
    qsig_ptr, sigc_ptr, emap_ptr, nv_ptr, st_ptr, items_ptr, nitems_ptr, idx_ptr,
    N, C, n_bits, top_k, R,
    NW: tl.constexpr, G: tl.constexpr, BW: tl.constexpr, USE_POPC: tl.constexpr,
):
    """Per query: the entries of its emitted words (``G ≤ 32`` consecutive filled entries each;
    the ``R`` ranges' lists in order), scored exactly from the packed signatures ``sigc`` (a
    word's entries are adjacent: one coalesced load); those above ``T`` and the first ``need`` at
    ``T`` — their entry ids looked up in ``emap`` — are written in entry order, ``-1`` after the
    last. ``st_ptr``: the final state (``lo = T``, ``above``). Positions come from per-word bit
    masks (a sum of distinct bits per word, a popcount per entry) and a scan over the ``BW``
    words of a step only."""
    qrow = tl.program_id(0).to(tl.int64)
    RT = tl.num_programs(0)
    r = qrow // N
    rbase = r * C
    nv = tl.load(nv_ptr + r)
    thr = tl.load(st_ptr + qrow)
    need = top_k - tl.load(st_ptr + 2 * RT + qrow)
    out = idx_ptr + qrow * top_k
    g = tl.arange(0, G)[None, :]
    bit = 1 << g  # (1, G) int32: bit 31 wraps to the sign, as a bit pattern
    below = bit - 1  # the entries before entry g of its word, as bits
    n_eq = 0
    n_sel = 0
    for rho in range(0, R):
        slot = qrow * R + rho
        n_words = tl.load(nitems_ptr + slot)
        for w0 in range(0, n_words, BW):
            wi = w0 + tl.arange(0, BW)
            w_ok = wi < n_words
            word = tl.load(items_ptr + slot * top_k + wi, mask=w_ok, other=0)
            p = rbase + word[:, None] * G + g  # (BW, G) filled-entry positions of the row
            ok = w_ok[:, None] & (p < rbase + nv)
            diff = tl.zeros((BW, G), dtype=tl.int32)
            for w in tl.static_range(NW):
                rem = n_bits - 32 * w  # bits of this word that count
                keep = tl.where(rem >= 32, -1, (1 << tl.minimum(rem, 31)) - 1)
                qw = tl.load(qsig_ptr + qrow * NW + w)
                ew = tl.load(sigc_ptr + p * NW + w, mask=ok, other=0)
                diff += _popcount((ew ^ qw) & keep, USE_POPC)
            sim = n_bits - diff
            eq = ok & (sim == thr)
            eq_bits = tl.sum(tl.where(eq, bit, 0), 1)  # (BW,)
            n_eq_w = _popcount(eq_bits, USE_POPC)
            eq_before = n_eq + tl.cumsum(n_eq_w, 0) - n_eq_w
            sel = (ok & (sim > thr)) | (eq & (eq_before[:, None] + _popcount(eq_bits[:, None] & below, USE_POPC) < need))
            sel_bits = tl.sum(tl.where(sel, bit, 0), 1)
            n_sel_w = _popcount(sel_bits, USE_POPC)
            pos = (n_sel + tl.cumsum(n_sel_w, 0) - n_sel_w)[:, None] + _popcount(sel_bits[:, None] & below, USE_POPC)
            tl.store(out + pos, tl.load(emap_ptr + p, mask=sel, other=0), mask=sel)
            n_eq += tl.sum(n_eq_w, 0)
            n_sel += tl.sum(n_sel_w, 0)
    for p0 in range(0, top_k, BW * G):  # fewer than k entries: pad with -1
        pp = p0 + tl.arange(0, BW * G)
        tl.store(out + pp, tl.full((BW * G,), -1, tl.int32), mask=(pp >= n_sel) & (pp < top_k))


# Bounded autotune list for the scoring pass (the only heavy kernel): query tile and warps.
# BC is fixed by the launcher (≥ top_k: the probe needs k column partitions).
CANDIDATE_CONFIGS = [
    triton.Config({"BQ": 64}, num_warps=4, num_stages=2),
    triton.Config({"BQ": 64}, num_warps=8, num_stages=2),
    triton.Config({"BQ": 128}, num_warps=8, num_stages=2),
    triton.Config({"BQ": 32}, num_warps=4, num_stages=2),
]
candidates_kernel_tuned = triton.autotune(configs=CANDIDATE_CONFIGS, key=["C", "NW", "BC", "GPC", "PROBE", "PROBE_STRIDE", "PROBE_TOP2"])(
    candidates_kernel
)
