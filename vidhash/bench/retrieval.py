"""Retrieval by attention for the HashHop benchmark (:mod:`vidhash.bench.hashhop`).

Letters: b batch, h heads, n tokens (q: nq, k: nk), d head_dim, e value dim.

* :func:`multi_hop_attention` — chained reads: the read of one hop is the query of the next
  (dense attention, or any read such as ``HashedMemory.attend``).
* :func:`bucket_attention` — attention over LSH buckets of keys, each bucket one pseudo-key
  (mean key, mean value, ``log(count)``): a retrieval baseline beside the hashed memory.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from vidhash.attention import dense_attention
from vidhash.hashing import SimHash, bucket_index
from vidhash.ops.checks import check_qkv, resolve_scale


def multi_hop_attention(
    q: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    *,
    hops: int = 2,
    proj: Callable[[torch.Tensor], torch.Tensor] | Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None,
    attn: Callable[[torch.Tensor], torch.Tensor | tuple] | None = None,
    scale: float | None = None,
    return_all: bool = False,
):
    """``hops`` chained reads: the read of hop ``h``, projected, is the query of hop ``h + 1``.

    ``attn(query)`` does one read (default: dense attention over ``k, v``; pass e.g.
    ``lambda x: memory.attend(x, top_k=8)`` to read a :class:`~vidhash.memory.HashedMemory`;
    a returned ``(out, lse)`` pair is accepted). ``proj`` is one callable applied between every
    hop, a sequence of ``hops - 1`` callables, or ``None`` for the identity.
    """
    if not isinstance(hops, int) or hops < 1:
        raise ValueError(f"hops must be a positive int, got {hops!r}")
    if attn is None:
        if k is None or v is None:
            raise ValueError("multi_hop_attention needs k and v, or an attn callable")
        check_qkv(q, k, v)

        def attn(x):
            return dense_attention(x, k, v, scale=scale)

    if proj is None:
        projs = [None] * (hops - 1)
    elif callable(proj):
        projs = [proj] * (hops - 1)
    else:
        projs = list(proj)
        if len(projs) != hops - 1:
            raise ValueError(f"proj must hold hops - 1 = {hops - 1} callables, got {len(projs)}")
    reads, x = [], q
    for hop in range(hops):
        r = attn(x)
        r = r[0] if isinstance(r, tuple) else r
        reads.append(r)
        if hop < hops - 1:
            x = r if projs[hop] is None else projs[hop](r)
    return (reads[-1], reads) if return_all else reads[-1]


def bucket_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    num_buckets: int = 64,
    num_tables: int = 4,
    lsh_bits: int | None = None,
    seed: int = 0,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Attention over hashed buckets of keys (non-causal).

    In each of ``num_tables`` tables, keys are routed to one of ``num_buckets`` buckets (a
    SimHash code of ``lsh_bits`` bits, seeded per table, through the keyed mixing hash) and
    aggregated by sum and count. A query reads, in every table, the bucket its own code lands
    in: that bucket acts as one pseudo-key (mean key, mean value) with logit
    ``scale · q·k̄ + log(count)``. Empty buckets are skipped.
    """
    check_qkv(q, k, v)
    if not isinstance(num_buckets, int) or num_buckets < 1:
        raise ValueError(f"num_buckets must be a positive int, got {num_buckets!r}")
    if not isinstance(num_tables, int) or num_tables < 1:
        raise ValueError(f"num_tables must be a positive int, got {num_tables!r}")
    bits = lsh_bits if lsh_bits is not None else max(1, math.ceil(math.log2(num_buckets)))
    b, h, nq, d = q.shape
    e = v.shape[-1]
    sc = resolve_scale(scale, d)
    logits, values = [], []
    for t in range(num_tables):
        hasher = SimHash(d, bits, seed=seed + 7919 * t)
        kb = bucket_index(hasher(k), num_buckets, key=seed + t)  # (b, h, nk)
        qb = bucket_index(hasher(q), num_buckets, key=seed + t)  # (b, h, nq)
        ksum = torch.zeros(b, h, num_buckets, d, device=q.device).scatter_add(2, kb.unsqueeze(-1).expand(b, h, kb.shape[-1], d), k.float())
        vsum = torch.zeros(b, h, num_buckets, e, device=q.device).scatter_add(2, kb.unsqueeze(-1).expand(b, h, kb.shape[-1], e), v.float())
        cnt = torch.zeros(b, h, num_buckets, device=q.device).scatter_add(2, kb, torch.ones_like(kb, dtype=torch.float32))
        c = cnt.gather(2, qb)  # (b, h, nq)
        kbar = ksum.gather(2, qb.unsqueeze(-1).expand(b, h, nq, d)) / c.clamp(min=1).unsqueeze(-1)
        vbar = vsum.gather(2, qb.unsqueeze(-1).expand(b, h, nq, e)) / c.clamp(min=1).unsqueeze(-1)
        logit = (q.float() * kbar).sum(-1) * sc + torch.log(c)  # log(0) = -inf masks empty buckets
        logits.append(logit)
        values.append(vbar)
    s = torch.stack(logits, dim=-1)  # (b, h, nq, tables)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.masked_fill(torch.isinf(lse), 0.0).unsqueeze(-1))
    out = (p.unsqueeze(-1) * torch.stack(values, dim=-2)).sum(-2).to(q.dtype)
    return (out, lse) if return_lse else out
