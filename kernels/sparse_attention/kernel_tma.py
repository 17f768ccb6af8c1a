"""Triton kernels: the block-sparse attention forward and backward with TMA tile loads (Hopper and later).

Letters: b batch, h heads, c query blocks, j kept key blocks, d head_dim, e value dim.

:func:`sparse_attn_fwd_tma_kernel` computes what ``kernel.sparse_attn_fwd_kernel`` computes, for
the shapes where every kept key block is one TMA tile: key blocks of 64 or 128 tokens
(``BK == BLOCK_N``), query blocks of a power of two ≥ 16 tokens (``BQ == BLOCK_M``). q, k and v come
as host tensor descriptors over their ``(b, h, n, d)`` views (any strides a descriptor takes:
16-byte aligned, last dim contiguous), so a gathered key block is one bulk copy
``k_desc.load([b, h, j * BK, 0])`` instead of ``BK × D`` pointer loads, and the compiler can
pipeline the copies with the MMAs. Rows past ``nq`` / ``nk`` come back as zeros (TMA's bounds
fill) and are masked as in the pointer kernel; a padding entry (``-1``) loads block 0 and masks
it out. Same log2-domain online softmax, same ``out`` / ``lse`` contract. The forward runs two
loops: the entries before the row's first padding entry or ragged block without the mask (one
select per score less: 371 → 333 SASS instructions a step at 8 warps, d 64), the rest masked.

:func:`sparse_attn_bwd_dq_tma_kernel` and :func:`sparse_attn_bwd_dkdv_tma_kernel` are the backward's
dq and dk/dv the same way (dk/dv: one key block per program — blocks of 64/128 are one group in the
pointer kernel too — over the transposed list, each query block one descriptor load of q and dO).

Non-causal only: causal launches keep the pointer kernels (their configs were checked for causal
rows on an H200; these have not been). ``ops.use_tma`` chooses: the forward by default on Hopper,
the backward only under ``VIDHASH_TMA=1`` until measured on a GPU.
"""
import triton
import triton.language as tl

from .kernel import _INTERPRET, _dot, _dot_acc


def _configs(forward: bool = False):
    """Bounded autotune space: warps × stages (the tile is fixed by the descriptors); the forward
    also two register-capped configs that fit more programs on an SM with no spill in the loop
    (sm_90 SASS, ``python -m vidhash.kernels.sass tma-forward``; query blocks of 128):

    * 4 warps, 2 stages, 160 registers — at head dim 64 three programs (193 uncapped: two);
    * 8 warps, 2 stages, 128 registers — at head dim 128 two programs (154 uncapped: one).

    Elsewhere a cap is above what the config takes, or spills (365 spill instructions in the loop for
    the 160 cap at head dim 128): :func:`_prune_caps` keeps each only at its head dim."""
    if _INTERPRET:
        return [triton.Config({}, num_warps=4, num_stages=1)]
    cfgs = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (2, 3, 4)]
    if forward:
        cfgs += [triton.Config({}, num_warps=4, num_stages=2, maxnreg=160),
                 triton.Config({}, num_warps=8, num_stages=2, maxnreg=128)]
    return cfgs


@triton.jit
def _query_tile(q_desc, IDX, stride_ib, stride_ih, stride_ic, H, NQ, BQ: tl.constexpr, D: tl.constexpr):
    """This program's query block: ``(bh, b, h, qb, qpos, qmask, q (BQ, D), its index-list row)``."""
    qb = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    qpos = qb * BQ + tl.arange(0, BQ)
    q = q_desc.load([b, h, qb * BQ, 0]).reshape(BQ, D)
    idx_row = IDX + b.to(tl.int64) * stride_ib + h.to(tl.int64) * stride_ih + qb.to(tl.int64) * stride_ic
    return bh, b, h, qb, qpos, qpos < NQ, q, idx_row


@triton.jit
def _kept_block(idx_row, it, b, h, NK, BK: tl.constexpr):
    """Entry ``it`` of the index row: its first key, which of its ``BK`` keys count (padding
    entries load block 0 and count none) and whether all of them do (a scalar)."""
    blk = tl.load(idx_row + it)
    start = tl.maximum(blk, 0) * BK
    return start, (blk >= 0) & (start + tl.arange(0, BK) < NK), (blk >= 0) & (start + BK <= NK)


@triton.jit
def _fwd_step(q, k_desc, v_desc, b, h, start, valid, acc, l_i, m_i, sm_scale_log2,
              BK: tl.constexpr, D: tl.constexpr, E: tl.constexpr, PREC: tl.constexpr):
    """One kept key block of the online softmax: scores (masked by ``valid`` unless it is None —
    every key counts), the new max, the rescaled sum and accumulator."""
    kt = k_desc.load([b, h, start, 0]).reshape(BK, D)
    s = _dot(q, tl.trans(kt), PREC)
    if valid is not None:
        s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * sm_scale_log2)
    p = tl.math.exp2(s * sm_scale_log2 - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    vt = v_desc.load([b, h, start, 0]).reshape(BK, E)
    acc = _dot_acc(p.to(vt.dtype), vt, acc * alpha[:, None], PREC)
    return acc, l_i * alpha + tl.sum(p, 1), m_new


def _prune_caps(configs, named_args, **kwargs):
    """The register-capped forward configs only at the head dim they were made for (see _configs)."""
    d = kwargs.get("D", named_args.get("D", 64))
    want = 160 if d <= 64 else 128
    return [c for c in configs if not c.maxnreg or c.maxnreg == want] or configs


@triton.autotune(configs=_configs(forward=True), key=["BQ", "BK", "D", "E", "PREC"],
                 prune_configs_by={"early_config_prune": _prune_caps})
@triton.jit
def sparse_attn_fwd_tma_kernel(
    q_desc, k_desc, v_desc, IDX, O, LSE,
    sm_scale_log2,
    stride_ob, stride_oh, stride_on,
    stride_ib, stride_ih, stride_ic,
    H, NQ, NK, KEPT,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, E: tl.constexpr, PREC: tl.constexpr,
):
    bh, b, h, qb, qpos, qmask, q, idx_row = _query_tile(q_desc, IDX, stride_ib, stride_ih, stride_ic, H, NQ, BQ, D)
    ecol = tl.arange(0, E)
    m_i = tl.full([BQ], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BQ], dtype=tl.float32)
    acc = tl.zeros([BQ, E], dtype=tl.float32)
    # entries before the first padding entry or ragged block count every key: no select there
    n_whole = KEPT
    for c0 in range(0, KEPT, 64):
        pos = c0 + tl.arange(0, 64)
        blk = tl.load(idx_row + pos, mask=pos < KEPT, other=0)
        part = (pos < KEPT) & ((blk < 0) | (blk * BK + BK > NK))
        n_whole = tl.minimum(n_whole, tl.min(tl.where(part, pos, KEPT)))
    for it in range(0, n_whole):
        start, _, _ = _kept_block(idx_row, it, b, h, NK, BK)
        acc, l_i, m_i = _fwd_step(q, k_desc, v_desc, b, h, start, None, acc, l_i, m_i, sm_scale_log2, BK, D, E, PREC)
    for it in range(n_whole, KEPT):
        start, valid, _ = _kept_block(idx_row, it, b, h, NK, BK)
        acc, l_i, m_i = _fwd_step(q, k_desc, v_desc, b, h, start, valid, acc, l_i, m_i, sm_scale_log2, BK, D, E, PREC)
    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    o_ptr = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + qpos[:, None].to(tl.int64) * stride_on + ecol[None, :]
    tl.store(o_ptr, out.to(O.dtype.element_ty), mask=qmask[:, None])
    lse = tl.where(has_key, (m_i + tl.math.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(LSE + bh.to(tl.int64) * NQ + qpos, lse, mask=qmask)


@triton.autotune(configs=_configs(), key=["BQ", "BK", "D", "E", "PREC"])
@triton.jit
def sparse_attn_bwd_dq_tma_kernel(
    q_desc, k_desc, v_desc, do_desc, IDX, LSE, DELTA, DQ,
    sm_scale, sm_scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_ib, stride_ih, stride_ic,
    H, NQ, NK, KEPT,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, E: tl.constexpr, PREC: tl.constexpr,
):
    """``kernel.sparse_attn_bwd_dq_kernel`` with TMA tiles: dq of one query block over its kept key
    blocks, each one descriptor load of k and of v. ``DQ`` has ``q``'s strides."""
    bh, b, h, qb, qpos, qmask, q, idx_row = _query_tile(q_desc, IDX, stride_ib, stride_ih, stride_ic, H, NQ, BQ, D)
    dcol = tl.arange(0, D)
    do = do_desc.load([b, h, qb * BQ, 0]).reshape(BQ, E)
    lse2 = tl.load(LSE + bh.to(tl.int64) * NQ + qpos, mask=qmask, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + bh.to(tl.int64) * NQ + qpos, mask=qmask, other=0.0)
    dq = tl.zeros([BQ, D], dtype=tl.float32)
    for it in range(0, KEPT):
        start, kval, _ = _kept_block(idx_row, it, b, h, NK, BK)
        kt = k_desc.load([b, h, start, 0]).reshape(BK, D)
        vt = v_desc.load([b, h, start, 0]).reshape(BK, E)
        s = _dot(q, tl.trans(kt), PREC)
        valid = kval[None, :] & qmask[:, None]
        p = tl.where(valid, tl.math.exp2(s * sm_scale_log2 - lse2[:, None]), 0.0)
        dp = _dot(do, tl.trans(vt), PREC)
        ds = p * (dp - delta[:, None])
        dq = _dot_acc(ds.to(kt.dtype), kt, dq, PREC)
    dq = dq * sm_scale
    q_off = b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + qpos[:, None].to(tl.int64) * stride_qn + dcol[None, :]
    tl.store(DQ + q_off, dq.to(DQ.dtype.element_ty), mask=qmask[:, None])


def _split_pre_hook(nargs):
    """A dk/dv config's q and dO descriptors load ``BQ // QSPLIT`` rows at a time."""
    rows = nargs["BQ"] // nargs["QSPLIT"]
    for name in ("q_desc", "do_desc"):
        nargs[name].block_shape = [1, 1, rows, nargs[name].block_shape[-1]]


def _dkdv_configs():
    """The dk/dv kernel's autotune space: warps × stages with the query block whole, and two at 8
    warps with it in halves (``QSPLIT=2``: a score tile of half the rows live at a time) — one
    uncapped (147–182 registers against 207–255 whole) and one under a 128-register cap, which fits
    two programs an SM where every whole-block 8-warp config fits one (28–32 spill instructions in
    the loop; 1.4–1.8× the loop instructions per query block: sm_90 SASS, ``python -m
    vidhash.kernels.sass tma-dkdv``). A pre-hook sets the q/dO descriptors' rows to the config's."""
    if _INTERPRET:
        return [triton.Config({"QSPLIT": 1}, num_warps=4, num_stages=1, pre_hook=_split_pre_hook)]
    whole = [triton.Config({"QSPLIT": 1}, num_warps=w, num_stages=s, pre_hook=_split_pre_hook)
             for w in (4, 8) for s in (2, 3, 4)]
    halves = [triton.Config({"QSPLIT": 2}, num_warps=8, num_stages=2, pre_hook=_split_pre_hook),
              triton.Config({"QSPLIT": 2}, num_warps=8, num_stages=2, maxnreg=128, pre_hook=_split_pre_hook)]
    return whole + halves


def _prune_split(configs, named_args, **kwargs):
    """Halves only of query blocks of 64 rows or more (a half stays an MMA tile of ≥ 32 rows)."""
    bq = kwargs.get("BQ", named_args.get("BQ", 64))
    return [c for c in configs if c.kwargs.get("QSPLIT", 1) == 1 or bq >= 64] or configs


@triton.autotune(configs=_dkdv_configs(), key=["BQ", "BK", "D", "E", "PREC"],
                 prune_configs_by={"early_config_prune": _prune_split})
@triton.jit
def sparse_attn_bwd_dkdv_tma_kernel(
    q_desc, k_desc, v_desc, do_desc, LSE, DELTA, PTR, QLIST, ORDER, DK, DV,
    sm_scale, sm_scale_log2,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    H, NQ, NK, NKB,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, E: tl.constexpr, PREC: tl.constexpr,
    QSPLIT: tl.constexpr = 1,
):
    """``kernel.sparse_attn_bwd_dkdv_kernel`` for one key block per program (key blocks of 64/128:
    the group is one block) with TMA tiles: dk, dv of key block ``j`` over the query blocks that
    kept it (``PTR``/``QLIST``, visited in ``ORDER``), each query block one descriptor load of q
    and of dO — or, ``QSPLIT=2``, two steps of half the rows each (the descriptors' block rows
    ``BQ // QSPLIT``). ``DK``/``DV`` have ``k``/``v``'s strides."""
    j = tl.load(ORDER + tl.program_id(0))
    bh = j // NKB
    blk = j % NKB
    b = bh // H
    h = bh % H
    krow = tl.arange(0, BK)
    kpos = blk * BK + krow
    kmask = kpos < NK
    dcol = tl.arange(0, D)
    ecol = tl.arange(0, E)
    k = k_desc.load([b, h, blk * BK, 0]).reshape(BK, D)
    v = v_desc.load([b, h, blk * BK, 0]).reshape(BK, E)
    dk = tl.zeros([BK, D], dtype=tl.float32)
    dv = tl.zeros([BK, E], dtype=tl.float32)
    lse_base = LSE + bh.to(tl.int64) * NQ
    delta_base = DELTA + bh.to(tl.int64) * NQ
    rows = tl.arange(0, BQ // QSPLIT)
    start = tl.load(PTR + j)
    end = tl.load(PTR + j + 1)
    for it in range(start * QSPLIT, end * QSPLIT):
        e = it // QSPLIT
        first = tl.load(QLIST + e) * BQ + (it % QSPLIT) * (BQ // QSPLIT)
        qpos = first + rows
        qmask = qpos < NQ
        q = q_desc.load([b, h, first, 0]).reshape(BQ // QSPLIT, D)
        do = do_desc.load([b, h, first, 0]).reshape(BQ // QSPLIT, E)
        lse2 = tl.load(lse_base + qpos, mask=qmask, other=0.0) * 1.4426950408889634
        delta = tl.load(delta_base + qpos, mask=qmask, other=0.0)
        st = _dot(k, tl.trans(q), PREC)  # (BK, BQ // QSPLIT)
        valid = kmask[:, None] & qmask[None, :]
        pt = tl.where(valid, tl.math.exp2(st * sm_scale_log2 - lse2[None, :]), 0.0)
        dv = _dot_acc(pt.to(do.dtype), do, dv, PREC)
        dpt = _dot(v, tl.trans(do), PREC)
        dst = pt * (dpt - delta[None, :])
        dk = _dot_acc(dst.to(q.dtype), q, dk, PREC)
    dk = dk * sm_scale
    k_off = b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + kpos[:, None].to(tl.int64) * stride_kn + dcol[None, :]
    v_off = b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh + kpos[:, None].to(tl.int64) * stride_vn + ecol[None, :]
    tl.store(DK + k_off, dk.to(DK.dtype.element_ty), mask=kmask[:, None])
    tl.store(DV + v_off, dv.to(DV.dtype.element_ty), mask=kmask[:, None])
