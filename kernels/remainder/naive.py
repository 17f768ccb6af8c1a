"""Naive PyTorch reference of the block-mean remainder (what ``ops.py`` computes with the kernel).

Letters: b batch, h heads, c query blocks in one chunk, t query rows of a block, j key blocks,
d head_dim, e value dim.

:func:`block_mean_remainder` — each query's attention over the key blocks its selection did not
keep, one token per block (mean key, mean value, ``log count`` logit bias), in float32 (float64
stays float64), query blocks in chunks within :data:`REMAINDER_CHUNK_ELEMS`. Published as
``vidhash.attention.block_mean_remainder``; ``hash_attention(..., remainder="mean")`` merges it with
the kept blocks' attention. Autograd runs through it.
"""
from __future__ import annotations

import torch

from vidhash.kernels.block_score.naive import block_means as _means
from vidhash.ops.checks import BlockSelection, check_qkv, resolve_scale, upcast

REMAINDER_CHUNK_ELEMS = 1 << 26
"""Score elements (b·h·queries·key blocks) the remainder computes at once; above it, chunks of query
blocks. Large on purpose: a drop-in's shape (33,792 tokens, 3 heads, blocks of 64) is one chunk."""


def block_means(x: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per key block of ``x (b, h, n, d)``: the mean over its real tokens ``(b, h, j, d)`` in the
    references' precision (float64 stays float64, the rest float32; summed straight from ``x``, no
    upcast copy) and the tokens per block ``(j,)``."""
    n = x.shape[-2]
    nb = -(-n // block_size)
    cnt = torch.clamp(n - torch.arange(nb, device=x.device) * block_size, max=block_size)
    return _means(x, block_size, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32), cnt


def unkept_blocks(selection: BlockSelection) -> torch.Tensor:
    """``(b, h, query blocks, key blocks)`` bool: True where the query block did not keep the key block."""
    b, h, nqb, _ = selection.indices.shape
    nkb = selection.num_key_blocks
    idx = selection.indices.to(torch.int64)
    kept = torch.zeros(b, h, nqb, nkb + 1, dtype=torch.bool, device=idx.device)
    kept.scatter_(-1, torch.where(idx < 0, nkb, idx), True)
    return ~kept[..., :nkb]


def block_mean_remainder(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    selection: BlockSelection,
    *,
    scale: float | None = None,
):
    """Attention of each query over the key blocks its selection did **not** keep, each block
    stood in for by one token: its mean key ``k̄``, its mean value ``v̄`` and a logit bias of
    ``log(tokens in the block)`` — so the block's weight is ``count · exp(s q·k̄)``, what its tokens
    would weigh if their scores were all equal (a lower bound of the exact mass by Jensen's
    inequality; exact for a block of equal keys). Returns ``(out (b, h, nq, e), lse (b, h, nq))``,
    ``lse`` float32 and ``-inf`` where every block is kept or masked; merged with the kept blocks'
    exact attention by ``vidhash.attention.merge_attention``, it is
    ``hash_attention(..., remainder="mean")``.

    Causal: a block counts only where the query sees all of it (a block cut by the diagonal is the
    local block, kept by the selection, or else left out). Cost: ``nq × nk / block_size`` scores
    (dense attention's cost over ``block_size``), computed in chunks of query blocks; differentiable.
    """
    check_qkv(q, k, v)
    b, h, nq, d = q.shape
    nk, e = k.shape[-2], v.shape[-1]
    bk, bq = selection.block_size, selection.query_block_size
    nkb, nqb = selection.num_key_blocks, selection.num_query_blocks
    if selection.num_queries != nq or selection.num_keys != nk or tuple(selection.indices.shape[:2]) != (b, h):
        raise ValueError(f"selection is for (b, h, nq, nk) = ({tuple(selection.indices.shape[:2])}, "
                         f"{selection.num_queries}, {selection.num_keys}); got q {tuple(q.shape)}, k {tuple(k.shape)}")
    sc = resolve_scale(scale, d)
    k_mean, cnt = block_means(k, bk)
    k_mean = k_mean.to(q.dtype)  # (b, h, nkb, d)
    v_mean = block_means(v, bk)[0].to(v.dtype)
    bias = cnt.to(upcast(q).dtype).log()
    unkept = unkept_blocks(selection)  # (b, h, nqb, nkb)
    qp = torch.nn.functional.pad(q, (0, 0, 0, nqb * bq - nq)).reshape(b, h, nqb, bq, d)
    if selection.causal:  # query i sees block j whole iff its last key (j+1)·bk - 1 <= i + nk - nq (clipped)
        last = torch.clamp((torch.arange(nkb, device=q.device) + 1) * bk, max=nk) - 1
        qpos = torch.arange(nqb * bq, device=q.device).reshape(nqb, bq)
        sees = last <= (qpos + nk - nq).unsqueeze(-1)  # (nqb, bq, nkb)
    chunk = max(1, REMAINDER_CHUNK_ELEMS // max(1, b * h * bq * nkb))
    outs, lses = [], []
    for start in range(0, nqb, chunk):
        stop = min(nqb, start + chunk)
        s = upcast(torch.matmul(qp[:, :, start:stop], k_mean.unsqueeze(2).transpose(-1, -2))) * sc + bias
        allowed = unkept[:, :, start:stop].unsqueeze(3)  # (b, h, c, 1, nkb)
        if selection.causal:
            allowed = allowed & sees[start:stop]
        s = s.masked_fill(~allowed, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)  # (b, h, c, bq)
        p = torch.exp(s - lse.masked_fill(torch.isinf(lse), 0.0).unsqueeze(-1))
        outs.append(torch.matmul(p.to(v_mean.dtype), v_mean.unsqueeze(2)))
        lses.append(lse)
    out = torch.cat(outs, dim=2).reshape(b, h, nqb * bq, e)[:, :, :nq]
    lse = torch.cat(lses, dim=2).reshape(b, h, nqb * bq)[:, :, :nq]
    return out.to(v.dtype), lse


