"""Triton kernels: block-sparse flash attention over a per-query-block index list.

Letters: b batch, h heads, c query blocks, j kept key blocks, d head_dim, e value dim.

Layout: ``q (b, h, nq, d)``, ``k (b, h, nk, d)``, ``v (b, h, nk, e)`` (last dim contiguous);
``idx (b, h, c, kept)`` int32, ascending key-block indices, ``-1`` = padding. Query block ``c``
covers queries ``[c * BQ, (c + 1) * BQ)``, key block ``j`` keys ``[j * BK, (j + 1) * BK)``.

* :func:`sparse_attn_fwd_kernel` — one program per (query block, b·h): online softmax over the
  kept blocks, ``BLOCK_N // BK_PAD`` kept blocks per step gathered into one tile of keys by
  pointer arithmetic (small key blocks cost no more steps than large ones); writes ``out`` and
  ``lse`` (natural log, float32, ``-inf`` for a query that sees no key).
* :func:`sparse_attn_bwd_delta_kernel` — ``delta = rowsum(dO · O) - dlse``.
* :func:`sparse_attn_bwd_dq_kernel` — dq over the same index list.
* :func:`sparse_attn_bwd_dkdv_kernel` — dk, dv per group of consecutive key blocks (≥ 16
  rows) over the transposed list (CSR: ``ptr (b·h·groups + 1)``, ``qlist`` query blocks,
  ``qbits`` which blocks of the group each kept), programs started in ``ops.dkdv_order``'s
  order (the heavy lists first, then place order).

Scores live in the log2 domain (``qk · scale · log2 e``) so the kernels use ``exp2``.
Masks: padding blocks, keys past ``nk``, query rows past the block or ``nq``, and (causal)
key ``j`` > query ``i + nk - nq`` (bottom-right aligned).
"""
import os

import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _tile_configs(with_block_n: bool, stages=(2, 3), capped: bool = False):
    """Bounded autotune space (≤ 13 configs; 1 under the interpreter, where timing means nothing).
    ``capped`` (the forward and dq): also ``BLOCK_N=64`` at 8 warps under a 128-register cap — two
    programs an SM where the uncapped one fits one (forward, query blocks of 128: 139 → 128 registers
    at d 64, no spill; 162 → 128 at d 128, 3 spill instructions; dq: 149 → 128 at d 64 / 128, no spill
    in the loop; 156 → 128 at d 128 / 64, 1; sm_90 SASS, kernels/sparse_attention/NOTES.md)."""
    if _INTERPRET:
        return [triton.Config({"BLOCK_N": n} if with_block_n else {}, num_warps=4, num_stages=1) for n in ((32, 64, 128) if with_block_n else (0,))]
    cfgs = []
    for n in ((64, 128) if with_block_n else (None,)):
        for w in (4, 8):
            for s in stages:
                cfgs.append(triton.Config({"BLOCK_N": n} if n else {}, num_warps=w, num_stages=s))
    if capped:
        cfgs.append(triton.Config({"BLOCK_N": 64}, num_warps=8, num_stages=2, maxnreg=128))
    return cfgs


# Causal rows on an H200 (Triton 3.6, 2026-12-03): the forward gave wrong rows (max error 2.8-3.9,
# fp32/bf16/fp16, key blocks of 16, query blocks 16 and 64) with every BLOCK_N=64 config and with
# BLOCK_N=128 at 8 warps; BLOCK_N=128 at 4 warps was right (1e-7 fp32), non-causal right with all.
# The interpreter is right with all, so the tests on a CPU cannot see it; root cause not found.
# Until it is, causal launches keep to the configs measured right (kernels/sparse_attention/NOTES.md).
_CAUSAL_SAFE = {"BLOCK_N": 128, "num_warps": 4}


def default_config(BK_PAD: int, D: int, BLOCK_M: int, with_block_n: bool, causal: bool = False) -> triton.Config:
    """The config used without autotuning (``VIDHASH_AUTOTUNE=0``, and the interpreter)."""
    meta = {"BLOCK_N": max(128 if D <= 64 or causal else 64, BK_PAD)} if with_block_n else {}
    if _INTERPRET:
        meta = {"BLOCK_N": max(32, BK_PAD)} if with_block_n else {}
        return triton.Config(meta, num_warps=4, num_stages=1)
    return triton.Config(meta, num_warps=4, num_stages=3 if D <= 64 else 2)


def _causal_safe(config: triton.Config, bk_pad: int) -> bool:
    return config.num_warps == _CAUSAL_SAFE["num_warps"] and config.kwargs.get("BLOCK_N") == max(_CAUSAL_SAFE["BLOCK_N"], bk_pad)


def _prune_block_n(configs, named_args, **kwargs):
    """A step gathers ``BLOCK_N // BK_PAD`` whole key blocks: drop tiles smaller than a block;
    causal launches keep the configs measured right on the H200 (``_CAUSAL_SAFE``, where any
    fits); under the interpreter keep only the smallest tile that fits."""
    bk_pad = kwargs.get("BK_PAD", named_args.get("BK_PAD", 1))
    ok = [c for c in configs if c.kwargs.get("BLOCK_N", bk_pad) >= bk_pad]
    if kwargs.get("CAUSAL", named_args.get("CAUSAL", False)) and not _INTERPRET:
        ok = [c for c in ok if _causal_safe(c, bk_pad)] or ok
    return ok[:1] if _INTERPRET else ok


_AUTOTUNE_KEY = ["BQ", "BK", "D", "E", "CAUSAL", "PREC"]
# triton 3.6's interpreter multiplies bf16 operands as raw integers: upcast there (only there).
_UPCAST_DOTS = tl.constexpr(_INTERPRET)


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    if _UPCAST_DOTS:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _dot_acc(a, b, acc, PREC: tl.constexpr):
    if _UPCAST_DOTS:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _gather_keys(IDX_ROW, it, KEPT, NK, BK: tl.constexpr, BK_PAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key token index and validity of the ``BLOCK_N`` lanes of step ``it``."""
    lanes = tl.arange(0, BLOCK_N)
    slot = it * (BLOCK_N // BK_PAD) + lanes // BK_PAD
    within = lanes % BK_PAD
    blk = tl.load(IDX_ROW + slot, mask=slot < KEPT, other=-1)
    tok = blk * BK + within
    valid = (blk >= 0) & (tok < NK)
    if BK_PAD != BK:
        valid = valid & (within < BK)
    return tok, valid


@triton.autotune(configs=_tile_configs(True, stages=(2, 3, 4), capped=True), key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune_block_n})
@triton.jit
def sparse_attn_fwd_kernel(
    Q, K, V, IDX, O, LSE,
    sm_scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_ib, stride_ih, stride_ic,
    H, NQ, NK, KEPT,
    BQ: tl.constexpr, BLOCK_M: tl.constexpr, BK: tl.constexpr, BK_PAD: tl.constexpr,
    D: tl.constexpr, E: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    qb = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = tl.arange(0, BLOCK_M)
    qpos = qb * BQ + rows
    qmask = (rows < BQ) & (qpos < NQ)
    dcol = tl.arange(0, D)
    ecol = tl.arange(0, E)
    q = tl.load(Q + b * stride_qb + h * stride_qh + qpos[:, None] * stride_qn + dcol[None, :], mask=qmask[:, None], other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    idx_row = IDX + b * stride_ib + h * stride_ih + qb.to(tl.int64) * stride_ic
    # running max starts finite (scale > 0), so rows that have seen no key yet need no guard
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, E], dtype=tl.float32)
    qlim = qpos + NK - NQ
    for it in range(0, tl.cdiv(KEPT, BLOCK_N // BK_PAD)):
        tok, kval = _gather_keys(idx_row, it, KEPT, NK, BK, BK_PAD, BLOCK_N)
        kt = tl.load(k_base + tok[None, :] * stride_kn + dcol[:, None], mask=kval[None, :], other=0.0)
        s = _dot(q, kt, PREC)
        valid = kval[None, :]
        if CAUSAL:
            valid = valid & (tok[None, :] <= qlim[:, None])
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * sm_scale_log2)
        p = tl.math.exp2(s * sm_scale_log2 - m_new[:, None])  # one FMA per score
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        vt = tl.load(v_base + tok[:, None] * stride_vn + ecol[None, :], mask=kval[:, None], other=0.0)
        acc = acc * alpha[:, None]
        acc = _dot_acc(p.to(vt.dtype), vt, acc, PREC)
        m_i = m_new
    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + qpos[:, None] * stride_on + ecol[None, :], out.to(O.dtype.element_ty), mask=qmask[:, None])
    lse = tl.where(has_key, (m_i + tl.math.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(LSE + bh.to(tl.int64) * NQ + qpos, lse, mask=qmask)


@triton.jit
def sparse_attn_bwd_delta_kernel(
    O, DO, DLSE, DELTA,
    stride_ob, stride_oh, stride_on,
    stride_db, stride_dh, stride_dn,
    H, NQ,
    E: tl.constexpr, HAS_DLSE: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < NQ
    ecol = tl.arange(0, E)
    o = tl.load(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + ecol[None, :], mask=rmask[:, None], other=0.0)
    do = tl.load(DO + b * stride_db + h * stride_dh + rows[:, None] * stride_dn + ecol[None, :], mask=rmask[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_DLSE:
        delta -= tl.load(DLSE + bh.to(tl.int64) * NQ + rows, mask=rmask, other=0.0)
    tl.store(DELTA + bh.to(tl.int64) * NQ + rows, delta, mask=rmask)


@triton.autotune(configs=_tile_configs(True, capped=True), key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune_block_n})
@triton.jit
def sparse_attn_bwd_dq_kernel(
    Q, K, V, IDX, DO, LSE, DELTA, DQ,
    sm_scale, sm_scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_db, stride_dh, stride_dn,
    stride_ib, stride_ih, stride_ic,
    H, NQ, NK, KEPT,
    BQ: tl.constexpr, BLOCK_M: tl.constexpr, BK: tl.constexpr, BK_PAD: tl.constexpr,
    D: tl.constexpr, E: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dq of one query block; ``DQ`` has ``q``'s strides."""
    qb = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = tl.arange(0, BLOCK_M)
    qpos = qb * BQ + rows
    qmask = (rows < BQ) & (qpos < NQ)
    dcol = tl.arange(0, D)
    ecol = tl.arange(0, E)
    q_off = b * stride_qb + h * stride_qh + qpos[:, None] * stride_qn + dcol[None, :]
    q = tl.load(Q + q_off, mask=qmask[:, None], other=0.0)
    do = tl.load(DO + b * stride_db + h * stride_dh + qpos[:, None] * stride_dn + ecol[None, :], mask=qmask[:, None], other=0.0)
    lse2 = tl.load(LSE + bh.to(tl.int64) * NQ + qpos, mask=qmask, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + bh.to(tl.int64) * NQ + qpos, mask=qmask, other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    idx_row = IDX + b * stride_ib + h * stride_ih + qb.to(tl.int64) * stride_ic
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    qlim = qpos + NK - NQ
    for it in range(0, tl.cdiv(KEPT, BLOCK_N // BK_PAD)):
        tok, kval = _gather_keys(idx_row, it, KEPT, NK, BK, BK_PAD, BLOCK_N)
        kt = tl.load(k_base + tok[None, :] * stride_kn + dcol[:, None], mask=kval[None, :], other=0.0)
        vt = tl.load(v_base + tok[None, :] * stride_vn + ecol[:, None], mask=kval[None, :], other=0.0)
        s = _dot(q, kt, PREC)
        valid = kval[None, :] & qmask[:, None]
        if CAUSAL:
            valid = valid & (tok[None, :] <= qlim[:, None])
        p = tl.where(valid, tl.math.exp2(s * sm_scale_log2 - lse2[:, None]), 0.0)
        dp = _dot(do, vt, PREC)
        ds = p * (dp - delta[:, None])
        dq = _dot_acc(ds.to(kt.dtype), tl.trans(kt), dq, PREC)
    dq = dq * sm_scale
    tl.store(DQ + q_off, dq.to(DQ.dtype.element_ty), mask=qmask[:, None])


@triton.autotune(configs=_tile_configs(False), key=_AUTOTUNE_KEY + ["G"])
@triton.jit
def sparse_attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, PTR, QLIST, QBITS, ORDER, DK, DV,
    sm_scale, sm_scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_db, stride_dh, stride_dn,
    H, NQ, NK, NGRP,
    BQ: tl.constexpr, BLOCK_M: tl.constexpr, BK: tl.constexpr, BK_SUB: tl.constexpr, G: tl.constexpr,
    D: tl.constexpr, E: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
):
    """dk, dv of one group of ``G`` consecutive key blocks (``G · BK_SUB`` rows, so small key
    blocks still fill an MMA tile) over the query blocks that kept any of them; ``QBITS`` says
    which of the ``G`` blocks each query block kept. ``DK``/``DV`` have ``k``/``v``'s strides."""
    j = tl.load(ORDER + tl.program_id(0))
    bh = j // NGRP
    grp = j % NGRP
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    krow = tl.arange(0, G * BK_SUB)
    sub = krow // BK_SUB
    within = krow % BK_SUB
    kpos = (grp * G + sub) * BK + within
    kmask = kpos < NK
    if BK_SUB != BK:
        kmask = kmask & (within < BK)
    dcol = tl.arange(0, D)
    ecol = tl.arange(0, E)
    k_off = b * stride_kb + h * stride_kh + kpos[:, None] * stride_kn + dcol[None, :]
    v_off = b * stride_vb + h * stride_vh + kpos[:, None] * stride_vn + ecol[None, :]
    k = tl.load(K + k_off, mask=kmask[:, None], other=0.0)
    v = tl.load(V + v_off, mask=kmask[:, None], other=0.0)
    dk = tl.zeros([G * BK_SUB, D], dtype=tl.float32)
    dv = tl.zeros([G * BK_SUB, E], dtype=tl.float32)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_db + h * stride_dh
    lse_base = LSE + bh.to(tl.int64) * NQ
    delta_base = DELTA + bh.to(tl.int64) * NQ
    rows = tl.arange(0, BLOCK_M)
    start = tl.load(PTR + j)
    end = tl.load(PTR + j + 1)
    for e in range(start, end):
        qb = tl.load(QLIST + e)
        qpos = qb * BQ + rows
        qmask = (rows < BQ) & (qpos < NQ)
        qt = tl.load(q_base + qpos[None, :] * stride_qn + dcol[:, None], mask=qmask[None, :], other=0.0)
        do = tl.load(do_base + qpos[:, None] * stride_dn + ecol[None, :], mask=qmask[:, None], other=0.0)
        lse2 = tl.load(lse_base + qpos, mask=qmask, other=0.0) * 1.4426950408889634
        delta = tl.load(delta_base + qpos, mask=qmask, other=0.0)
        st = _dot(k, qt, PREC)  # (G * BK_SUB, BLOCK_M)
        kept_rows = kmask
        if G > 1:
            bits = tl.load(QBITS + e)
            kept_rows = kept_rows & (((bits >> sub) & 1) != 0)
        valid = kept_rows[:, None] & qmask[None, :]
        if CAUSAL:
            valid = valid & (kpos[:, None] <= (qpos + NK - NQ)[None, :])
        pt = tl.where(valid, tl.math.exp2(st * sm_scale_log2 - lse2[None, :]), 0.0)
        dv = _dot_acc(pt.to(do.dtype), do, dv, PREC)
        dpt = _dot(v, tl.trans(do), PREC)
        dst = pt * (dpt - delta[None, :])
        dk = _dot_acc(dst.to(qt.dtype), tl.trans(qt), dk, PREC)
    dk = dk * sm_scale
    tl.store(DK + k_off, dk.to(DK.dtype.element_ty), mask=kmask[:, None])
    tl.store(DV + v_off, dv.to(DV.dtype.element_ty), mask=kmask[:, None])


@triton.jit
def _sub_block_grads(q, do, lse2, delta, qpos, qmask, k_s, v_s, kpos_s, kmask_s, dkt, dvt, sm_scale_log2,
                     NQ, NK, CAUSAL: tl.constexpr, PREC: tl.constexpr):
    """One kept (query block, key block) pair of :func:`sparse_attn_bwd_dkdv_sub_kernel`: the
    scores with the query block as the MMA's M (``q · kᵀ``: ``BLOCK_M × BK_SUB``), and dk, dv
    accumulated transposed (``dVᵀ += dOᵀ · P``, ``dKᵀ += Qᵀ · dS``: M is the head dim), so no
    product has a 16-row M."""
    s = _dot(q, tl.trans(k_s), PREC)
    valid = qmask[:, None] & kmask_s[None, :]
    if CAUSAL:
        valid = valid & (kpos_s[None, :] <= (qpos + NK - NQ)[:, None])
    p = tl.where(valid, tl.math.exp2(s * sm_scale_log2 - lse2[:, None]), 0.0)
    dp = _dot(do, tl.trans(v_s), PREC)
    ds = p * (dp - delta[:, None])
    dvt = _dot_acc(tl.trans(do), p.to(do.dtype), dvt, PREC)
    dkt = _dot_acc(tl.trans(q), ds.to(q.dtype), dkt, PREC)
    return dkt, dvt


@triton.jit
def _sub_block_tiles(k_base, v_base, stride_kn, stride_vn, first, sub, NK,
                     BK: tl.constexpr, BK_SUB: tl.constexpr, D: tl.constexpr, E: tl.constexpr):
    """Key block ``first + sub``: its k and v tiles (``BK_SUB`` rows), token positions and mask."""
    within = tl.arange(0, BK_SUB)
    kpos = (first + sub) * BK + within
    kmask = kpos < NK
    if BK_SUB != BK:
        kmask = kmask & (within < BK)
    k_s = tl.load(k_base + kpos[:, None] * stride_kn + tl.arange(0, D)[None, :], mask=kmask[:, None], other=0.0)
    v_s = tl.load(v_base + kpos[:, None] * stride_vn + tl.arange(0, E)[None, :], mask=kmask[:, None], other=0.0)
    return k_s, v_s, kpos, kmask


@triton.jit
def _store_sub_block(DK, DV, dk_base, dv_base, stride_kn, stride_vn, kpos, kmask, dkt, dvt, sm_scale,
                     D: tl.constexpr, E: tl.constexpr):
    """Write one key block's transposed accumulators (``D × BK_SUB``, ``E × BK_SUB``) into dk, dv."""
    tl.store(dk_base + kpos[None, :] * stride_kn + tl.arange(0, D)[:, None], (dkt * sm_scale).to(DK.dtype.element_ty), mask=kmask[None, :])
    tl.store(dv_base + kpos[None, :] * stride_vn + tl.arange(0, E)[:, None], dvt.to(DV.dtype.element_ty), mask=kmask[None, :])


def _sub_configs():
    """The per-block dk/dv kernel's autotune space: 8 warps only. At 4 warps it faulted on an H200
    (illegal memory access at d 64, 2 blocks a program, bf16, 2 and 3 stages; 8 warps right, and the
    other pointer kernels' configs right where they ran: ``scripts/gpu/config_faults.py``, 2026-12-05). The
    interpreter is right at 4 warps, and its sm_90 SASS (``python -m vidhash.kernels.sass dkdv``)
    shows no spill or stack there; root cause not found (it resembles the 4-warp, several-``tl.dot``
    faults on sm_90 reported against Triton 3.6+: NOTES.md). Until it is, the kernel keeps to what ran right."""
    return [c for c in _tile_configs(False) if _INTERPRET or c.num_warps == 8]


_SUB_CONFIGS = _sub_configs()


@triton.autotune(configs=_SUB_CONFIGS, key=_AUTOTUNE_KEY + ["G"])
@triton.jit
def sparse_attn_bwd_dkdv_sub_kernel(
    Q, K, V, DO, LSE, DELTA, PTR, QLIST, QBITS, ORDER, DK, DV,
    sm_scale, sm_scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_db, stride_dh, stride_dn,
    H, NQ, NK, NGRP,
    BQ: tl.constexpr, BLOCK_M: tl.constexpr, BK: tl.constexpr, BK_SUB: tl.constexpr, G: tl.constexpr,
    D: tl.constexpr, E: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
):
    """dk, dv of ``G`` (2 or 4) consecutive small key blocks (16 or 32 tokens) per program, over
    the query blocks that kept any of them (``PTR``/``QLIST``/``QBITS`` of
    ``transpose_selection(selection, G)``): each listed query block's q and dO are loaded once and
    serve every block of the group it kept, and only the kept blocks' products are computed (a
    branch per block on ``QBITS``; one pair of transposed accumulators per block). Against
    :func:`sparse_attn_bwd_dkdv_kernel` with ``G = 1`` (one q/dO load per kept pair, 16-row MMAs)
    and with ``G > 1`` (one 64-row tile over the union list: products for blocks not kept)."""
    j = tl.load(ORDER + tl.program_id(0))
    bh = j // NGRP
    grp = j % NGRP
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    first = grp * G
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    k0, v0, kpos0, kmask0 = _sub_block_tiles(k_base, v_base, stride_kn, stride_vn, first, 0, NK, BK, BK_SUB, D, E)
    k1, v1, kpos1, kmask1 = _sub_block_tiles(k_base, v_base, stride_kn, stride_vn, first, 1, NK, BK, BK_SUB, D, E)
    dkt0 = tl.zeros([D, BK_SUB], dtype=tl.float32)
    dvt0 = tl.zeros([E, BK_SUB], dtype=tl.float32)
    dkt1 = tl.zeros([D, BK_SUB], dtype=tl.float32)
    dvt1 = tl.zeros([E, BK_SUB], dtype=tl.float32)
    if G == 4:
        k2, v2, kpos2, kmask2 = _sub_block_tiles(k_base, v_base, stride_kn, stride_vn, first, 2, NK, BK, BK_SUB, D, E)
        k3, v3, kpos3, kmask3 = _sub_block_tiles(k_base, v_base, stride_kn, stride_vn, first, 3, NK, BK, BK_SUB, D, E)
        dkt2 = tl.zeros([D, BK_SUB], dtype=tl.float32)
        dvt2 = tl.zeros([E, BK_SUB], dtype=tl.float32)
        dkt3 = tl.zeros([D, BK_SUB], dtype=tl.float32)
        dvt3 = tl.zeros([E, BK_SUB], dtype=tl.float32)
    dcol = tl.arange(0, D)
    ecol = tl.arange(0, E)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_db + h * stride_dh
    lse_base = LSE + bh.to(tl.int64) * NQ
    delta_base = DELTA + bh.to(tl.int64) * NQ
    rows = tl.arange(0, BLOCK_M)
    start = tl.load(PTR + j)
    end = tl.load(PTR + j + 1)
    for e in range(start, end):
        qb = tl.load(QLIST + e)
        bits = tl.load(QBITS + e)
        qpos = qb * BQ + rows
        qmask = (rows < BQ) & (qpos < NQ)
        q = tl.load(q_base + qpos[:, None] * stride_qn + dcol[None, :], mask=qmask[:, None], other=0.0)
        do = tl.load(do_base + qpos[:, None] * stride_dn + ecol[None, :], mask=qmask[:, None], other=0.0)
        lse2 = tl.load(lse_base + qpos, mask=qmask, other=0.0) * 1.4426950408889634
        delta = tl.load(delta_base + qpos, mask=qmask, other=0.0)
        if (bits & 1) != 0:
            dkt0, dvt0 = _sub_block_grads(q, do, lse2, delta, qpos, qmask, k0, v0, kpos0, kmask0, dkt0, dvt0,
                                          sm_scale_log2, NQ, NK, CAUSAL, PREC)
        if (bits & 2) != 0:
            dkt1, dvt1 = _sub_block_grads(q, do, lse2, delta, qpos, qmask, k1, v1, kpos1, kmask1, dkt1, dvt1,
                                          sm_scale_log2, NQ, NK, CAUSAL, PREC)
        if G == 4:
            if (bits & 4) != 0:
                dkt2, dvt2 = _sub_block_grads(q, do, lse2, delta, qpos, qmask, k2, v2, kpos2, kmask2, dkt2, dvt2,
                                              sm_scale_log2, NQ, NK, CAUSAL, PREC)
            if (bits & 8) != 0:
                dkt3, dvt3 = _sub_block_grads(q, do, lse2, delta, qpos, qmask, k3, v3, kpos3, kmask3, dkt3, dvt3,
                                              sm_scale_log2, NQ, NK, CAUSAL, PREC)
    dk_base = DK + b * stride_kb + h * stride_kh
    dv_base = DV + b * stride_vb + h * stride_vh
    _store_sub_block(DK, DV, dk_base, dv_base, stride_kn, stride_vn, kpos0, kmask0, dkt0, dvt0, sm_scale, D, E)
    _store_sub_block(DK, DV, dk_base, dv_base, stride_kn, stride_vn, kpos1, kmask1, dkt1, dvt1, sm_scale, D, E)
    if G == 4:
        _store_sub_block(DK, DV, dk_base, dv_base, stride_kn, stride_vn, kpos2, kmask2, dkt2, dvt2, sm_scale, D, E)
        _store_sub_block(DK, DV, dk_base, dv_base, stride_kn, stride_vn, kpos3, kmask3, dkt3, dvt3, sm_scale, D, E)
