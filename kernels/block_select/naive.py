"""Naive PyTorch reference of block selection (what ``ops.py`` computes with the kernel).

Letters: b batch, h heads, c query blocks in one chunk, j key blocks, w packed words.

:func:`select_blocks` — per query block, the key blocks to keep: sink blocks, local blocks,
then the most similar by Hamming similarity of pooled signatures (ties go to the lower block
index). Published as :func:`vidhash.select_blocks`; the chunk of query blocks worked on at once
stays within :data:`vidhash.ops.checks.CHUNK_ELEMS` (no ``query blocks × key blocks`` tensor
of the whole input).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vidhash.hashing import default_hasher, hamming_similarity
from vidhash.kernels.signature.naive import block_signatures
from vidhash.ops import checks
from vidhash.ops.checks import BlockSelection, check_qkv, check_selection_args, num_kept


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


def _forced_geometry(i: int, nq: int, nk: int, bq: int, bk: int, local_blocks: int, causal: bool):
    """Query block ``i``'s last allowed key block ``top`` and its local key blocks' first and last
    index before clipping to ``[0, nkb - 1]`` (``lo // bk``, ``hi // bk``)."""
    nkb, off = -(-nk // bk), nk - nq
    q_lo, q_hi = i * bq + off, min(i * bq + bq, nq) - 1 + off
    top = min(nkb - 1, q_hi // bk) if causal else nkb - 1
    lo = q_lo - (local_blocks - 1) * bk
    hi = q_hi + (0 if causal else (local_blocks - 1) * bk)
    return top, lo // bk, hi // bk


def _forced_count(i: int, nq: int, nk: int, bq: int, bk: int, local_blocks: int, sink_blocks: int, causal: bool) -> int:
    """Forced key blocks of query block ``i``: the sink interval ``[0, sink_blocks)`` and the local
    interval of key blocks overlapping ``[lo, hi]``, both within the allowed ``[0, top]``."""
    nkb = -(-nk // bk)
    top, first, last = _forced_geometry(i, nq, nk, bq, bk, local_blocks, causal)
    sink = _span(0, sink_blocks - 1, 0, top)
    if local_blocks == 0:
        return sink
    a, b = max(0, first), min(nkb - 1, last)
    return sink + _span(a, b, 0, top) - _span(a, b, 0, min(top, sink_blocks - 1))


def max_forced_blocks_loop(nq: int, nk: int, bq: int, bk: int, local_blocks: int, sink_blocks: int, causal: bool) -> int:
    """Reference of :func:`max_forced_blocks`: every query block's count, one by one."""
    return max((_forced_count(i, nq, nk, bq, bk, local_blocks, sink_blocks, causal) for i in range(-(-nq // bq))), default=0)


def _first(pred, n: int) -> int:
    """Smallest ``i`` in ``[0, n)`` with ``pred(i)`` (``n`` if none) for a ``pred`` true on a suffix."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if pred(mid) else (mid + 1, hi)
    return lo


def max_forced_blocks(nq: int, nk: int, bq: int, bk: int, local_blocks: int, sink_blocks: int, causal: bool) -> int:
    """Largest number of forced key blocks of any query block: ``forced_and_allowed(...)[0].sum(-1).max()``
    from the sizes alone, in Python integers (no tensor, no device sync: ``torch.compile`` traces it
    to a constant and keeps one graph), counting ``O(bk + log(query blocks))`` query blocks rather
    than all of them (:func:`max_forced_blocks_loop`, the reference, counts all).

    Every interval end grows with the query block ``i``, so the query blocks fall into three runs:
    (1) while no key block is allowed (causal: count 0) or the local interval starts at most one
    past the sink interval (the two merge into one interval from 0), the count only grows;
    (2) then, until the local interval passes the last key block, the count is ``sink + local
    width``, a function of ``(i·bq + nk − nq) mod bk`` (period ``bk / gcd(bq, bk)`` query blocks,
    the last block aside); (3) then the local interval only loses blocks at its start. The
    maximum is at the end of (1), within one period from the start of (2), at the start of (3),
    or at the last query block."""
    nqb, nkb = -(-nq // bq), -(-nk // bk)

    def count(i: int) -> int:
        return _forced_count(i, nq, nk, bq, bk, local_blocks, sink_blocks, causal)

    if nqb == 0:
        return 0
    if local_blocks == 0:  # the sink interval alone: grows with i
        return count(nqb - 1)

    def apart(i: int) -> bool:  # run (2) or (3): some key block allowed, the local interval starts past sink + 1
        top, first, _ = _forced_geometry(i, nq, nk, bq, bk, local_blocks, causal)
        return top >= 0 and max(0, first) > min(sink_blocks - 1, top) + 1

    def clipped(i: int) -> bool:  # run (3)
        return apart(i) and _forced_geometry(i, nq, nk, bq, bk, local_blocks, causal)[2] > nkb - 1

    two, three = _first(apart, nqb), _first(clipped, nqb)
    period = bk // math.gcd(bq, bk)
    candidates = {nqb - 1, max(0, two - 1), min(three, nqb - 1), *range(two, min(three, two + period))}
    return max(count(i) for i in candidates)


def num_kept_blocks(nq: int, nk: int, *, density: float, block_size: int, query_block_size: int,
                    local_blocks: int, sink_blocks: int, causal: bool) -> int:
    """``kept`` of :func:`select_blocks` (and of every scorer) for these sizes: ``ceil(density · key
    blocks)``, raised to the most forced blocks of any query block — Python integers from the
    sizes and the config, never from a tensor (one graph under ``torch.compile``)."""
    nkb = -(-nk // block_size)
    kept = num_kept(density, nkb)
    if kept < nkb and (local_blocks or sink_blocks):
        forced = max_forced_blocks(nq, nk, query_block_size, block_size, local_blocks, sink_blocks, causal)
        kept = min(nkb, max(kept, forced))
    return kept


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
    density, bk, bq = check_selection_args(density, block_size, query_block_size, local_blocks, sink_blocks)
    hasher = hasher if hasher is not None else default_hasher(q.shape[-1], device=q.device)
    n_bits = hasher.n_bits
    nq, nk = q.shape[-2], k.shape[-2]
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    b, h = q.shape[:2]

    kept = num_kept_blocks(nq, nk, density=density, block_size=bk, query_block_size=bq, local_blocks=local_blocks,
                           sink_blocks=sink_blocks, causal=causal)  # covers the largest forced set of any query block
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
