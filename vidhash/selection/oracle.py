"""Exact attention mass per (query block, key block): the oracle every block selection is measured against.

Letters: b batch, h heads, n tokens (q: nq, k: nk), d head_dim, c query blocks in one chunk,
i query block, j key block, t query tokens of a chunk.

The *mass* of key block ``j`` for query block ``i`` is ``M[i, j] = Σ_{q ∈ i} Σ_{key ∈ j} p_q(key)``
with ``p_q`` the exact softmax of query ``q`` over every key it may see (causal masks bottom-right
aligned, as in :mod:`vidhash.attention`). A query's masses sum to 1, so

* :func:`selection_mass` — ``Σ_i Σ_{j kept} M[i, j] / #queries``: the mean over queries of the share
  of exact attention mass the kept blocks hold. It is the same number as
  :func:`vidhash.attention.selection_recall` on the same query blocks (both average over queries
  that see at least one key; tested);
* :func:`oracle_recall` — the same with, per query block, the ``kept`` key blocks of largest
  ``M[i, j]``: the most any selection of that many blocks per query block can hold (forced
  blocks are not forced on the oracle unless ``local_blocks`` / ``sink_blocks`` say so).

Everything is exact in float32 (float64 stays float64), chunked over query blocks so that no
temporary exceeds ``_CHUNK_ELEMS`` elements per chunk — never an ``nq × nk`` tensor.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vidhash.kernels.block_select.naive import forced_and_allowed
from vidhash.ops.checks import BlockSelection, check_block, check_qkv, resolve_scale, upcast

_CHUNK_ELEMS = 1 << 24


def eval_query_blocks(num_query_blocks: int, max_query_blocks: int | None, device=None) -> torch.Tensor:
    """Query blocks to evaluate: all, or ``max_query_blocks`` evenly spaced ones (as
    :func:`vidhash.attention.selection_recall` picks them)."""
    blocks = torch.arange(num_query_blocks, device=device)
    if max_query_blocks is not None and max_query_blocks < num_query_blocks:
        if max_query_blocks < 1:
            raise ValueError(f"max_query_blocks must be ≥ 1, got {max_query_blocks}")
        blocks = torch.linspace(0, num_query_blocks - 1, max_query_blocks, device=device).round().long().unique()
    return blocks


@torch.no_grad()
def block_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_size: int,
    query_block_size: int,
    causal: bool = False,
    scale: float | None = None,
    query_blocks: torch.Tensor | None = None,
    query_stride: int = 1,
    chunk_elems: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mass ``M (b, h, c, nkb)`` of every key block for the query blocks ``query_blocks``
    (default: all), and ``counts (b, h, c)``: how many of each block's queries see any key.

    ``M[..., i, :]`` sums to ``counts[..., i]``. Accumulates in float32 (float64 inputs: float64).
    ``query_stride`` s > 1 sums only every s-th query of each block (offsets 0, s, 2s, …; s must
    divide ``query_block_size``): an estimate at 1/s of the cost, ``counts`` of those queries.
    ``chunk_elems``: the most score elements one chunk holds (default ``_CHUNK_ELEMS``, 2²⁴; a
    GPU takes far larger chunks — fewer launches — as the drop-in's ``reuse_mass`` does).
    """
    check_qkv(q, k)
    bk = check_block("block_size", block_size)
    bq = check_block("query_block_size", query_block_size)
    if isinstance(query_stride, bool) or not isinstance(query_stride, int) or query_stride < 1 or bq % query_stride:
        raise ValueError(f"query_stride must be a positive int dividing query_block_size {bq}, got {query_stride!r}")
    b, h, nq, d = q.shape
    nk = k.shape[-2]
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    offsets = torch.arange(0, bq, query_stride, device=q.device)
    tq = offsets.numel()  # queries summed per block
    blocks = torch.arange(nqb, device=q.device) if query_blocks is None else query_blocks.to(q.device).long()
    if query_blocks is not None and blocks.numel() and (int(blocks.min()) < 0 or int(blocks.max()) >= nqb):  # no host sync otherwise
        raise ValueError(f"query_blocks must lie in [0, {nqb}), got min {int(blocks.min())} max {int(blocks.max())}")
    sc = resolve_scale(scale, d)
    kf = F.pad(upcast(k), (0, 0, 0, nkb * bk - nk))  # (b, h, nkb·bk, d); padded keys are masked below
    key_pos = torch.arange(nkb * bk, device=q.device)
    masses, counts = [], []
    chunk = max(1, (chunk_elems or _CHUNK_ELEMS) // max(1, b * h * tq * nkb * bk))
    for start in range(0, blocks.numel(), chunk):
        qb_idx = blocks[start : start + chunk]
        c = qb_idx.numel()
        qpos = (qb_idx.unsqueeze(-1) * bq + offsets).flatten()  # (c·tq,)
        in_range = qpos < nq
        qc = upcast(q[:, :, qpos.clamp(max=nq - 1)])
        s = torch.matmul(qc, kf.transpose(-1, -2)) * sc  # (b, h, t, nkb·bk)
        bad = (key_pos >= nk).unsqueeze(0) | ~in_range.unsqueeze(-1)
        if causal:
            bad = bad | (key_pos.unsqueeze(0) > (qpos + nk - nq).unsqueeze(-1))
        s = s.masked_fill(bad, float("-inf"))
        lse = torch.logsumexp(s, dim=-1, keepdim=True)
        p = torch.exp(s - lse.masked_fill(torch.isinf(lse), 0.0))  # rows that see nothing: all 0
        m = p.reshape(b, h, c, tq, nkb, bk).sum(dim=(3, 5))
        masses.append(m)
        counts.append(torch.isfinite(lse).reshape(b, h, c, tq).sum(-1))
    if not masses:
        return q.new_zeros(b, h, 0, nkb, dtype=torch.float32), q.new_zeros(b, h, 0, dtype=torch.int64)
    return torch.cat(masses, dim=2), torch.cat(counts, dim=2)


def kept_mass(mass: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Mass ``(b, h, c)`` of the kept blocks ``indices (b, h, c, kept)`` (``-1`` = padding)."""
    idx = indices.to(torch.int64)
    got = mass.gather(-1, idx.clamp(min=0))
    return got.masked_fill(idx < 0, 0.0).sum(-1)


def top_mass(mass: torch.Tensor, kept: int, forced: torch.Tensor | None = None) -> torch.Tensor:
    """Mass ``(b, h, c)`` of the ``kept`` heaviest blocks per row; ``forced (c, nkb)`` blocks first."""
    if forced is None:
        return mass.topk(min(kept, mass.shape[-1]), dim=-1).values.sum(-1)
    total = mass.sum(-1).clamp(min=1.0) * 2 + 1  # above any real mass: forced blocks rank first
    ranked = torch.where(forced, mass + total.unsqueeze(-1), mass)
    top = ranked.topk(min(kept, mass.shape[-1]), dim=-1).indices
    return mass.gather(-1, top).sum(-1)


def _ratio(kept: torch.Tensor, counts: torch.Tensor) -> float:
    n = int(counts.sum())
    return float(kept.double().sum() / n) if n else 1.0


@torch.no_grad()
def selection_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    selection: BlockSelection,
    *,
    scale: float | None = None,
    max_query_blocks: int | None = None,
) -> float:
    """Mean over queries of the share of exact attention mass held by ``selection``'s kept key
    blocks (1.0: nothing lost). Equals :func:`vidhash.attention.selection_recall` with the same
    ``max_query_blocks`` (same evenly spaced blocks, same averaging), computed through
    :func:`block_mass`."""
    blocks = eval_query_blocks(selection.num_query_blocks, max_query_blocks, q.device)
    mass, counts = block_mass(q, k, block_size=selection.block_size, query_block_size=selection.query_block_size,
                              causal=selection.causal, scale=scale, query_blocks=blocks)
    return _ratio(kept_mass(mass, selection.indices[:, :, blocks]), counts)


@torch.no_grad()
def oracle_recall(
    q: torch.Tensor,
    k: torch.Tensor,
    kept: int,
    *,
    block_size: int,
    query_block_size: int,
    causal: bool = False,
    scale: float | None = None,
    max_query_blocks: int | None = None,
    local_blocks: int = 0,
    sink_blocks: int = 0,
) -> float:
    """The most attention mass any selection of ``kept`` key blocks per query block can hold: per
    query block the ``kept`` blocks of largest exact mass (those ``local_blocks`` / ``sink_blocks``
    force first, as :func:`vidhash.attention.select_blocks` does; default none), as a mean over
    queries — the same footing as :func:`selection_mass`."""
    if not isinstance(kept, int) or isinstance(kept, bool) or kept < 1:
        raise ValueError(f"kept must be a positive int, got {kept!r}")
    nq, nk = q.shape[-2], k.shape[-2]
    blocks = eval_query_blocks(-(-nq // query_block_size), max_query_blocks, q.device)
    mass, counts = block_mass(q, k, block_size=block_size, query_block_size=query_block_size, causal=causal,
                              scale=scale, query_blocks=blocks)
    forced = None
    if local_blocks or sink_blocks:
        forced, _ = forced_and_allowed(blocks, nq, nk, query_block_size, block_size, local_blocks, sink_blocks, causal)
    return _ratio(top_mass(mass, kept, forced), counts)


def _query_positions(nq: int, bq: int, blocks: torch.Tensor) -> torch.Tensor:
    """Token positions of the query blocks ``blocks`` in order, those past ``nq`` dropped."""
    pos = (blocks.unsqueeze(-1) * bq + torch.arange(bq, device=blocks.device)).flatten()
    return pos[pos < nq]


@torch.no_grad()
def dense_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    query_block_size: int,
    causal: bool = False,
    scale: float | None = None,
    query_blocks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact dense attention float32 ``(b, h, len(pos), e)`` of the queries of ``query_blocks``
    (default all; their positions in order, those past ``nq`` dropped), chunked like
    :func:`block_mass` — what :func:`attention_error` compares against (compute it once to judge
    several outputs). Queries that see no key give 0."""
    check_qkv(q, k, v)
    b, h, nq, d = q.shape
    nk = k.shape[-2]
    bq = check_block("query_block_size", query_block_size)
    blocks = torch.arange(-(-nq // bq), device=q.device) if query_blocks is None else query_blocks.to(q.device).long()
    sc = resolve_scale(scale, d)
    kf, vf = upcast(k), upcast(v)
    parts = []
    chunk = max(1, _CHUNK_ELEMS // max(1, b * h * bq * nk))
    for start in range(0, blocks.numel(), chunk):
        qpos = _query_positions(nq, bq, blocks[start : start + chunk])
        s = torch.matmul(upcast(q[:, :, qpos]), kf.transpose(-1, -2)) * sc
        if causal:
            s = s.masked_fill(torch.arange(nk, device=q.device) > (qpos + nk - nq).unsqueeze(-1), float("-inf"))
        lse = torch.logsumexp(s, dim=-1, keepdim=True)
        parts.append(torch.matmul(torch.exp(s - lse.masked_fill(torch.isinf(lse), 0.0)), vf))
    if not parts:
        return q.new_zeros(b, h, 0, v.shape[-1], dtype=torch.float32)
    return torch.cat(parts, dim=2)


@torch.no_grad()
def attention_error(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    *,
    query_block_size: int,
    causal: bool = False,
    scale: float | None = None,
    query_blocks: torch.Tensor | None = None,
    dense: torch.Tensor | None = None,
) -> float:
    """Relative error ``‖out − dense‖ / ‖dense‖`` (Frobenius, float32) of an attention output
    ``out (b, h, nq, e)`` against exact dense attention, over the queries of ``query_blocks``
    (default all), chunked like :func:`block_mass`. Queries that see no key count as 0 in both.
    ``dense``: :func:`dense_rows` of the same arguments, computed once for several outputs."""
    check_qkv(q, k, v)
    bq = check_block("query_block_size", query_block_size)
    blocks = torch.arange(-(-q.shape[-2] // bq), device=q.device) if query_blocks is None else query_blocks.to(q.device).long()
    qpos = _query_positions(q.shape[-2], bq, blocks)
    if dense is None:
        dense = dense_rows(q, k, v, query_block_size=bq, causal=causal, scale=scale, query_blocks=blocks)
    elif dense.shape[:2] != out.shape[:2] or dense.shape[2] != qpos.numel():
        raise ValueError(f"dense must be dense_rows of these queries: (b, h, {qpos.numel()}, e), got {tuple(dense.shape)}")
    diff = (upcast(out[:, :, qpos]) - dense).double()
    err, ref = float(diff.pow(2).sum()), float(dense.double().pow(2).sum())
    return math.sqrt(err / ref) if ref > 0 else math.sqrt(err)
