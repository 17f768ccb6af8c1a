"""Naive PyTorch reference of block-sparse attention (what ``ops.py`` computes with the kernels).

Letters: b batch, h heads, c query blocks in one chunk, L kept keys of a query block
(kept blocks × block_size), d head_dim, e value dim.

:func:`block_sparse_attention` — exact softmax of each query block over its kept key blocks
only, in float32 (float64 stays float64), query blocks in chunks within
:data:`vidhash.ops.checks.CHUNK_ELEMS`. Published as :func:`vidhash.block_sparse_attention`;
autograd runs through it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vidhash.ops import checks
from vidhash.ops.checks import BlockSelection, check_qkv, check_selection, resolve_scale, upcast


def _kept_tokens(selection: BlockSelection, qb_idx: torch.Tensor, idx: torch.Tensor):
    """Key token indices ``(b, h, c, L)`` for chunk ``qb_idx`` and their validity mask
    ``(b, h, c, bq, L)`` (padding blocks, keys past the end, causal)."""
    bk, bq = selection.block_size, selection.query_block_size
    nq, nk = selection.num_queries, selection.num_keys
    tok = (idx.to(torch.int64).unsqueeze(-1) * bk + torch.arange(bk, device=idx.device)).flatten(-2)
    valid_k = (idx.to(torch.int64).unsqueeze(-1) >= 0).expand(*idx.shape, bk).flatten(-2) & (tok < nk)
    qpos = qb_idx.unsqueeze(-1) * bq + torch.arange(bq, device=idx.device)  # (c, bq)
    valid = valid_k.unsqueeze(-2) & (qpos < nq).unsqueeze(-1)
    if selection.causal:
        valid = valid & (tok.unsqueeze(-2) <= (qpos + nk - nq).unsqueeze(-1))
    return tok.clamp(0, nk - 1), valid


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    selection: BlockSelection,
    *,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Exact softmax attention of each query block over its kept key blocks only.

    Returns ``out (b, h, nq, e)`` in q's dtype and, with ``return_lse``, ``lse (b, h, nq)``
    (float32; ``-inf`` for a query that sees no key)."""
    check_qkv(q, k, v)
    check_selection(selection, q, k)
    b, h, nq, d = q.shape
    e = v.shape[-1]
    bq, kept, bk = selection.query_block_size, selection.kept, selection.block_size
    nqb = selection.num_query_blocks
    sc = resolve_scale(scale, d)
    if nqb == 0:  # no queries: empty outputs
        out = q.new_zeros(b, h, 0, e)
        return (out, q.new_zeros(b, h, 0, dtype=torch.float32)) if return_lse else out
    qp = F.pad(upcast(q), (0, 0, 0, nqb * bq - nq)).reshape(b, h, nqb, bq, d)
    kf, vf = upcast(k), upcast(v)
    outs, lses = [], []
    chunk = max(1, checks.CHUNK_ELEMS // max(1, b * h * bq * kept * bk))
    for start in range(0, nqb, chunk):
        qb_idx = torch.arange(start, min(nqb, start + chunk), device=q.device)
        idx = selection.indices[:, :, start : start + qb_idx.numel()]
        tok, valid = _kept_tokens(selection, qb_idx, idx)  # (b, h, c, L), (b, h, c, bq, L)
        c, L = qb_idx.numel(), tok.shape[-1]
        gather = tok.reshape(b, h, c * L, 1)
        kg = torch.gather(kf, 2, gather.expand(b, h, c * L, d)).reshape(b, h, c, L, d)
        vg = torch.gather(vf, 2, gather.expand(b, h, c * L, e)).reshape(b, h, c, L, e)
        s = torch.matmul(qp[:, :, start : start + c], kg.transpose(-1, -2)) * sc  # (b, h, c, bq, L)
        s = s.masked_fill(~valid, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - lse.masked_fill(torch.isinf(lse), 0.0).unsqueeze(-1))
        outs.append(torch.matmul(p, vg))
        lses.append(lse)
    out = torch.cat(outs, dim=2).reshape(b, h, nqb * bq, e)[:, :, :nq].to(q.dtype)
    if not return_lse:
        return out
    return out, torch.cat(lses, dim=2).reshape(b, h, nqb * bq)[:, :, :nq]
