"""Triton kernel: exact attention mass per (query block, key block), non-causal (forward only).

Letters: b batch, h heads, c query blocks, j key blocks, d head_dim, t the queries summed per query
block (``TQ``: every ``query_stride``-th of its ``BQ``), g query blocks of one program (``G``).

Layout: ``q (b, h, nqs, d)`` — the strided queries, query block ``c`` owning rows ``[c·TQ, (c+1)·TQ)``
(last dim contiguous); ``k (b, h, nk, d)``; ``out (b, h, nqb, nkb)`` float32.

:func:`block_mass_kernel` — one program per ``G`` query blocks of one (batch, head): a first sweep
over the keys in tiles of one key block (``BK``) keeps each query's running max and sum (its
log-sum-exp, log2 domain); a second sweep recomputes each tile's scores, exponentiates them against
the lse and writes, per query block, the sum over its ``TQ`` queries and the tile's keys — the block
mass ``M[c, j] = Σ_{q ∈ c} Σ_{key ∈ j} p_q(key)``. Nothing of size queries × keys is stored; the
scores are computed twice. Float32 accumulation (``tl.dot`` of the input dtype); the torch reference
(``vidhash.selection.oracle.block_mass``) computes in float32 throughout, so the two agree to
rounding.
"""
import triton
import triton.language as tl

from vidhash.kernels.sparse_attention.kernel import _dot


@triton.jit
def _tile_scores(q, k_base, j0, cols, dcol, stride_kn, NK, sm_scale_log2, PREC: tl.constexpr):
    """Scores ``(rows, BK)`` (log2 domain) of the keys ``j0 + cols``, ``-inf`` past ``NK``."""
    key = j0 + cols
    key_ok = key < NK
    kt = tl.load(k_base + key[:, None].to(tl.int64) * stride_kn + dcol[None, :], mask=key_ok[:, None], other=0.0)
    s = _dot(q, tl.trans(kt), PREC) * sm_scale_log2
    return tl.where(key_ok[None, :], s, float("-inf"))


@triton.jit
def block_mass_kernel(
    Q, K, OUT,
    sm_scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_ob, stride_oh, stride_oc,
    H, NQS, NK, NQB, NKB,
    TQ: tl.constexpr, G: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    BLOCK_M: tl.constexpr = G * TQ
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < NQS
    dcol = tl.arange(0, D)
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None].to(tl.int64) * stride_qn + dcol[None, :],
                mask=row_ok[:, None], other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    cols = tl.arange(0, BK)

    # 1. each query's log-sum-exp (log2 domain) over every key
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for j0 in range(0, NK, BK):
        s = _tile_scores(q, k_base, j0, cols, dcol, stride_kn, NK, sm_scale_log2, PREC)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(s - m_new[:, None]), 1)
        m_i = m_new
    lse = m_i + tl.math.log2(l_i)

    # 2. per key block: Σ over the block's keys and each query block's TQ queries of exp2(s − lse)
    groups = pid * G + tl.arange(0, G)
    o_ptr = OUT + b * stride_ob + h * stride_oh + groups.to(tl.int64) * stride_oc
    for j in range(0, NKB):
        s = _tile_scores(q, k_base, j * BK, cols, dcol, stride_kn, NK, sm_scale_log2, PREC)
        p = tl.where(row_ok[:, None], tl.math.exp2(s - lse[:, None]), 0.0)  # exp2(-inf) = 0 past NK
        per_query = tl.sum(p, 1)
        mass = tl.sum(tl.reshape(per_query, [G, TQ]), 1)
        tl.store(o_ptr + j, mass, mask=groups < NQB)



@triton.jit
def _candidate_scores(q, k_base, j, qpos, row_ok, cols, dcol, stride_kn, NK, NQ, sm_scale_log2,
                      BK: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr):
    """Scores ``(BLOCK_M, BK)`` (log2 domain) of key block ``j`` (``-1``: none), ``-inf`` where a key is
    past ``NK``, the causal mask forbids it or the row holds no query."""
    key = j * BK + cols
    key_ok = (key < NK) & (j >= 0)
    kt = tl.load(k_base + key[:, None].to(tl.int64) * stride_kn + dcol[None, :], mask=key_ok[:, None], other=0.0)
    s = _dot(q, tl.trans(kt), PREC) * sm_scale_log2
    ok = key_ok[None, :] & row_ok[:, None]
    if CAUSAL:
        ok = ok & (key[None, :] <= (qpos + NK - NQ)[:, None])
    return tl.where(ok, s, float("-inf"))


@triton.jit
def candidate_mass_kernel(
    Q, K, BLOCKS, IDX, OUT,
    sm_scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_ib, stride_ih, stride_ic,
    stride_ob, stride_oh, stride_oc,
    H, NQ, NK, TAKE, STRIDE, BQ,
    TQ, BLOCK_M: tl.constexpr, BK: tl.constexpr, D: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
):
    """The ``rescore`` scorer's mass: for query block ``c = BLOCKS[i]`` (program 0: ``i``) of one (batch,
    head) (program 1), its ``TQ`` strided queries (rows ``[c·TQ, (c+1)·TQ)`` of ``Q``, query ``c·BQ + t·STRIDE``) attend to the
    keys of its ``TAKE`` candidate blocks ``IDX[i]`` (``-1``: none) only; ``OUT[i, e]`` = the summed
    softmax probability of candidate ``e``'s keys over those queries. Two sweeps over the candidates:
    each query's log-sum-exp, then the masses (scores computed twice; nothing stored)."""
    i = tl.program_id(0)
    c = tl.load(BLOCKS + i)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    t = tl.arange(0, BLOCK_M)
    qpos = c * BQ + t * STRIDE
    row_ok = (t < TQ) & (qpos < NQ)
    dcol = tl.arange(0, D)
    q = tl.load(Q + b * stride_qb + h * stride_qh + (c * TQ + t)[:, None].to(tl.int64) * stride_qn + dcol[None, :],
                mask=row_ok[:, None], other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    i_base = IDX + b * stride_ib + h * stride_ih + i.to(tl.int64) * stride_ic
    cols = tl.arange(0, BK)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for e in range(0, TAKE):
        j = tl.load(i_base + e)
        s = _candidate_scores(q, k_base, j, qpos, row_ok, cols, dcol, stride_kn, NK, NQ, sm_scale_log2, BK, CAUSAL, PREC)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: nothing to rescale
        l_i = l_i * tl.math.exp2(m_i - m_safe) + tl.sum(tl.math.exp2(s - m_safe[:, None]), 1)
        m_i = m_new
    lse = tl.where(l_i > 0, m_i + tl.math.log2(tl.maximum(l_i, 1e-30)), 0.0)  # a row without keys: every score -inf, p = 0

    o_base = OUT + b * stride_ob + h * stride_oh + i.to(tl.int64) * stride_oc
    for e in range(0, TAKE):
        j = tl.load(i_base + e)
        s = _candidate_scores(q, k_base, j, qpos, row_ok, cols, dcol, stride_kn, NK, NQ, sm_scale_log2, BK, CAUSAL, PREC)
        tl.store(o_base + e, tl.sum(tl.sum(tl.math.exp2(s - lse[:, None]), 1), 0))
