"""Triton kernel: the block-sparse attention forward with TMA tile loads (Hopper and later).

Letters: b batch, h heads, c query blocks, j kept key blocks, d head_dim, e value dim.

:func:`sparse_attn_fwd_tma_kernel` computes what ``kernel.sparse_attn_fwd_kernel`` computes, for
the shapes where every kept key block is one TMA tile: key blocks of 64 or 128 tokens
(``BK == BLOCK_N``), query blocks of a power of two ≥ 16 tokens (``BQ == BLOCK_M``). q, k and v come
as host tensor descriptors over their ``(b, h, n, d)`` views (any strides a descriptor takes:
16-byte aligned, last dim contiguous), so a gathered key block is one bulk copy
``k_desc.load([b, h, j * BK, 0])`` instead of ``BK × D`` pointer loads, and the compiler can
pipeline the copies with the MMAs. Rows past ``nq`` / ``nk`` come back as zeros (TMA's bounds
fill) and are masked as in the pointer kernel; a padding entry (``-1``) loads block 0 and masks
it out. Same log2-domain online softmax, same ``out`` / ``lse`` contract.

Non-causal only: causal launches keep the pointer kernel (its configs were checked for causal
rows on an H200; this one has not been).
"""
import triton
import triton.language as tl

from .kernel import _INTERPRET, _dot, _dot_acc


def _configs():
    """Bounded autotune space: warps × stages (the tile is fixed by the descriptors)."""
    if _INTERPRET:
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (2, 3, 4)]


@triton.autotune(configs=_configs(), key=["BQ", "BK", "D", "E", "PREC"])
@triton.jit
def sparse_attn_fwd_tma_kernel(
    q_desc, k_desc, v_desc, IDX, O, LSE,
    sm_scale_log2,
    stride_ob, stride_oh, stride_on,
    stride_ib, stride_ih, stride_ic,
    H, NQ, NK, KEPT,
    BQ: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, E: tl.constexpr, PREC: tl.constexpr,
):
    qb = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = tl.arange(0, BQ)
    qpos = qb * BQ + rows
    qmask = qpos < NQ
    ecol = tl.arange(0, E)
    q = q_desc.load([b, h, qb * BQ, 0]).reshape(BQ, D)
    idx_row = IDX + b.to(tl.int64) * stride_ib + h.to(tl.int64) * stride_ih + qb.to(tl.int64) * stride_ic
    m_i = tl.full([BQ], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BQ], dtype=tl.float32)
    acc = tl.zeros([BQ, E], dtype=tl.float32)
    lanes = tl.arange(0, BK)
    for it in range(0, KEPT):
        blk = tl.load(idx_row + it)
        start = tl.maximum(blk, 0) * BK
        kt = k_desc.load([b, h, start, 0]).reshape(BK, D)
        s = _dot(q, tl.trans(kt), PREC)
        valid = (blk >= 0) & (start + lanes < NK)
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * sm_scale_log2)
        p = tl.math.exp2(s * sm_scale_log2 - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        vt = v_desc.load([b, h, start, 0]).reshape(BK, E)
        acc = acc * alpha[:, None]
        acc = _dot_acc(p.to(vt.dtype), vt, acc, PREC)
        m_i = m_new
    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    o_ptr = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + qpos[:, None].to(tl.int64) * stride_on + ecol[None, :]
    tl.store(o_ptr, out.to(O.dtype.element_ty), mask=qmask[:, None])
    lse = tl.where(has_key, (m_i + tl.math.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(LSE + bh.to(tl.int64) * NQ + qpos, lse, mask=qmask)
