"""Naive PyTorch reference of block selection (what ``ops.py`` computes with the kernel).

Letters: b batch, h heads, c query blocks in one chunk, j key blocks, w packed words.

:func:`select_blocks` — per query block, the key blocks to keep: sink blocks, local blocks,
then the most similar by Hamming similarity of pooled signatures (ties go to the lower block
index). Published as :func:`vidhash.select_blocks`; the chunk of query blocks worked on at once
stays within :data:`vidhash.ops.checks.CHUNK_ELEMS` (no ``query blocks × key blocks`` tensor
of the whole input).
"""
from __future__ import annotations

import torch
from torch import nn

from vidhash.hashing import default_hasher, hamming_similarity
from vidhash.kernels.signature.naive import block_signatures
from vidhash.ops import checks
from vidhash.ops.checks import BlockSelection, check_block, check_count, check_density, check_qkv, num_kept


def forced_and_allowed(
    qb_idx: torch.Tensor, nq: int, nk: int, bq: int, bk: int, local_blocks: int, sink_blocks: int, causal: bool
):
    """Masks ``(c, j)``: key blocks forced (sink/local) and allowed (causal) for query blocks ``qb_idx``."""
    nkb = -(-nk // bk)
    off = nk - nq
    q_lo = qb_idx * bq + off  # first query position of each block, in key coordinates
    q_hi = torch.clamp(qb_idx * bq + bq, max=nq) - 1 + off  # last
    kb = torch.arange(nkb, device=qb_idx.device)
    k_lo, k_hi = kb * bk, torch.clamp(kb * bk + bk, max=nk) - 1
    if causal:
        allowed = k_lo.unsqueeze(0) <= q_hi.unsqueeze(-1)
    else:
        allowed = torch.ones(qb_idx.numel(), nkb, dtype=torch.bool, device=qb_idx.device)
    forced = (kb < sink_blocks).unsqueeze(0).expand(qb_idx.numel(), nkb).clone()
    if local_blocks > 0:
        lo = q_lo - (local_blocks - 1) * bk
        hi = q_hi + (0 if causal else (local_blocks - 1) * bk)
        forced |= (k_hi.unsqueeze(0) >= lo.unsqueeze(-1)) & (k_lo.unsqueeze(0) <= hi.unsqueeze(-1))
    return forced & allowed, allowed


def _span(lo: int, hi: int, cap_lo: int, cap_hi: int) -> int:
    """Size of ``[lo, hi] ∩ [cap_lo, cap_hi]`` (integers)."""
    return max(0, min(hi, cap_hi) - max(lo, cap_lo) + 1)


def max_forced_blocks(nq: int, nk: int, bq: int, bk: int, local_blocks: int, sink_blocks: int, causal: bool) -> int:
    """Largest number of forced key blocks of any query block: ``forced_and_allowed(...)[0].sum(-1).max()``
    computed on the host from the sizes alone (no device sync, so ``torch.compile`` keeps one graph).

    Per query block, the forced blocks are the sink interval ``[0, sink_blocks)`` and the local
    interval of key blocks overlapping ``[lo, hi]``, both within the allowed interval."""
    nkb, off = -(-nk // bk), nk - nq
    best = 0
    for i in range(-(-nq // bq)):
        q_lo, q_hi = i * bq + off, min(i * bq + bq, nq) - 1 + off
        top = min(nkb - 1, q_hi // bk) if causal else nkb - 1  # last allowed key block
        sink = _span(0, sink_blocks - 1, 0, top)
        if local_blocks > 0:
            lo = q_lo - (local_blocks - 1) * bk
            hi = q_hi + (0 if causal else (local_blocks - 1) * bk)
            a, b = max(0, lo // bk), min(nkb - 1, hi // bk)
            count = sink + _span(a, b, 0, top) - _span(a, b, 0, min(top, sink_blocks - 1))
        else:
            count = sink
        best = max(best, count)
    return best


def _topk_ascending(rank: torch.Tensor, kept: int) -> torch.Tensor:
    """Indices of the ``kept`` largest ``rank`` values (rank < 0 = not allowed → -1), ascending."""
    top = rank.topk(kept, dim=-1)
    idx = torch.where(top.values >= 0, top.indices, torch.full_like(top.indices, rank.shape[-1]))
    idx = idx.sort(dim=-1).values
    return torch.where(idx == rank.shape[-1], -1, idx).to(torch.int32)


@torch.no_grad()
def select_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    density: float = 0.125,
    block_size: int = 64,
    query_block_size: int | None = None,
    local_blocks: int = 1,
    sink_blocks: int = 1,
    causal: bool = False,
    hasher: nn.Module | None = None,
) -> BlockSelection:
    """Choose the key blocks each query block attends to.

    Every query block keeps ``kept = max(ceil(density * key_blocks), most forced blocks of any
    query block)`` key blocks: first its forced blocks (the first ``sink_blocks``; the key
    blocks overlapping its own positions, widened by ``local_blocks - 1`` blocks before — and,
    non-causal, after — it), then the rest by Hamming similarity of block signatures, ties to
    the lower block index. Causal attention never keeps a block wholly in the future.
    """
    check_qkv(q, k)
    density = check_density(density)
    bk = check_block("block_size", block_size)
    bq = check_block("query_block_size", query_block_size if query_block_size is not None else block_size)
    check_count("local_blocks", local_blocks)
    check_count("sink_blocks", sink_blocks)
    hasher = hasher if hasher is not None else default_hasher(q.shape[-1], device=q.device)
    n_bits = hasher.n_bits
    nq, nk = q.shape[-2], k.shape[-2]
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    b, h = q.shape[:2]

    kept = num_kept(density, nkb)
    if kept < nkb and (local_blocks or sink_blocks):
        # Budget must cover the largest forced set of any query block.
        kept = min(nkb, max(kept, max_forced_blocks(nq, nk, bq, bk, local_blocks, sink_blocks, causal)))
    if kept == nkb:
        # Everything is kept: no signatures needed.
        _, allowed = forced_and_allowed(torch.arange(nqb, device=q.device), nq, nk, bq, bk, 0, 0, causal)
        rank = torch.where(allowed, nkb - torch.arange(nkb, device=q.device), -1)
        idx = _topk_ascending(rank, kept).expand(b, h, nqb, kept).contiguous()
        return BlockSelection(idx, bk, bq, nq, nk, causal)

    q_sig = block_signatures(q, bq, hasher, "query")
    k_sig = block_signatures(k, bk, hasher, "key")
    out = torch.empty(b, h, nqb, kept, dtype=torch.int32, device=q.device)
    chunk = max(1, checks.CHUNK_ELEMS // max(1, b * h * nkb * q_sig.shape[-1]))
    tie = nkb - torch.arange(nkb, device=q.device, dtype=torch.int64)
    for start in range(0, nqb, chunk):
        qb_idx = torch.arange(start, min(nqb, start + chunk), device=q.device)
        forced, allowed = forced_and_allowed(qb_idx, nq, nk, bq, bk, local_blocks, sink_blocks, causal)
        sim = hamming_similarity(q_sig[:, :, qb_idx], k_sig, n_bits).to(torch.int64)  # (b, h, c, j)
        score = torch.where(forced, n_bits + 1, sim)
        rank = torch.where(allowed, score * (nkb + 1) + tie, -1)
        out[:, :, start : start + qb_idx.numel()] = _topk_ascending(rank, kept)
    return BlockSelection(out, bk, bq, nq, nk, causal)
