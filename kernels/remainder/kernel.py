"""Triton kernel: the block-mean remainder, flash style (forward only).

Letters: b batch, h heads, c query blocks, j key blocks, d head_dim, e value dim.

Layout: ``q (b, h, nq, d)`` (last dim contiguous), ``km (b, h, nkb, d)`` and ``vm (b, h, nkb, e)``
the key blocks' mean keys and values (contiguous), ``bias (nkb,)`` float32 ``log(tokens in the
block)``, ``unkept (b, h, c, nkb)`` int8 (1: the query block did not keep the block). Query block
``c`` covers queries ``[c * BQ, (c + 1) * BQ)``.

* :func:`remainder_fwd_kernel` — one program per (query block, b·h): online softmax over the
  ``nkb`` mean tokens in tiles of ``BLOCK_N``, kept blocks masked out; writes ``out`` (q's dtype)
  and ``lse`` (natural log, float32, ``-inf`` for a query whose every block was kept). With
  ``MERGE`` it also reads the kept blocks' attention ``o_in (b, h, nq, e)`` and ``lse_in (b, h, nq)``
  and writes the two merged by lse (``vidhash.attention.merge_attention`` in the epilogue: no
  second pass over the outputs).

Non-causal only (the ops fall back to the reference for causal selections). Scores in the log2
domain (``q·k̄ · scale · log2 e + bias · log2 e``), as the sparse-attention kernels.
"""
import triton
import triton.language as tl

from vidhash.kernels.sparse_attention.kernel import _INTERPRET, _dot, _dot_acc

_LOG2E = tl.constexpr(1.4426950408889634)


def _configs():
    """Bounded autotune space (one config under the interpreter, where timing means nothing)."""
    if _INTERPRET:
        return [triton.Config({"BLOCK_N": 32}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s) for n in (32, 64) for w in (4, 8) for s in (2, 3)]


@triton.autotune(configs=_configs(), key=["BQ", "D", "E", "PREC", "MERGE"])
@triton.jit
def remainder_fwd_kernel(
    Q, KM, VM, BIAS, UNKEPT, O, LSE, O_IN, LSE_IN,
    sm_scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh,
    stride_vb, stride_vh,
    stride_ob, stride_oh, stride_on,
    stride_ub, stride_uh, stride_uc,
    stride_ib, stride_ih, stride_in,
    H, NQ, NKB,
    BQ: tl.constexpr, BLOCK_M: tl.constexpr, D: tl.constexpr, E: tl.constexpr, PREC: tl.constexpr,
    MERGE: tl.constexpr, BLOCK_N: tl.constexpr,
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
    km_base = KM + b * stride_kb + h * stride_kh
    vm_base = VM + b * stride_vb + h * stride_vh
    un_row = UNKEPT + b * stride_ub + h * stride_uh + qb.to(tl.int64) * stride_uc
    # the running max starts finite: a tile with every block kept adds exp2(-inf) = 0
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, E], dtype=tl.float32)
    for start in range(0, NKB, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        jm = j < NKB
        un = tl.load(un_row + j, mask=jm, other=0) != 0
        km = tl.load(km_base + j[:, None] * D + dcol[None, :], mask=jm[:, None], other=0.0)
        bias = tl.load(BIAS + j, mask=jm, other=0.0)
        s = _dot(q, tl.trans(km), PREC) * sm_scale_log2 + bias[None, :] * _LOG2E
        s = tl.where(un[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        vm = tl.load(vm_base + j[:, None] * E + ecol[None, :], mask=jm[:, None], other=0.0)
        acc = _dot_acc(p.to(vm.dtype), vm, acc * alpha[:, None], PREC)
        m_i = m_new
    if MERGE:  # fold in the kept blocks' attention: one more "token" of weight exp(lse_in), value o_in
        lse_in = tl.load(LSE_IN + bh.to(tl.int64) * NQ + qpos, mask=qmask, other=float("-inf")) * _LOG2E
        o_in = tl.load(O_IN + b * stride_ib + h * stride_ih + qpos[:, None] * stride_in + ecol[None, :],
                       mask=qmask[:, None], other=0.0).to(tl.float32)
        m_new = tl.maximum(m_i, lse_in)
        alpha = tl.exp2(m_i - m_new)
        w_in = tl.exp2(lse_in - m_new)
        l_i = l_i * alpha + w_in
        acc = acc * alpha[:, None] + o_in * w_in[:, None]
        m_i = m_new
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) / _LOG2E, float("-inf"))
    tl.store(O + b * stride_ob + h * stride_oh + qpos[:, None] * stride_on + ecol[None, :], out.to(O.dtype.element_ty),
             mask=qmask[:, None])
    tl.store(LSE + bh.to(tl.int64) * NQ + qpos, lse, mask=qmask)
