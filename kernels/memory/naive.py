"""Naive PyTorch reference of the hashed-memory ops (what ``ops.py`` computes with the kernels).

Letters: b batch, h heads, t tokens written, n queries (m in one chunk), u buckets, s slots per
bucket, c = u·s entries, d head_dim, w signature words, k top_k.

Same arguments as the kernels' public functions, on a :class:`~vidhash.ops.checks.MemoryTable`
(updated in place) and the memory's hasher and routing numbers:

* :func:`memory_write_fifo` — each bucket a ring of ``s`` entries; tokens of one write enter in
  token order, a token written to a full bucket replaces its oldest entry.
* :func:`memory_write_merge` — a bucket fills in order; once full, a token merges into the entry
  with the most similar signature (running mean of key and value, signature of the merged key,
  newest frame, count + 1).
* :func:`memory_attend` — per query, the ``top_k`` entries of highest Hamming similarity (ties
  to the lower entry) and exact softmax over them, each entry weighted by ``log(count)``.

:class:`vidhash.memory.HashedMemory` runs these for ``backend="reference"`` (and for ``"auto"``
where the kernels do not apply).
"""
from __future__ import annotations

import math

import torch

from vidhash.hashing import hamming_similarity, sig_signs
from vidhash.kernels.signature.naive import signatures_and_buckets
from vidhash.ops import checks
from vidhash.ops.checks import MemoryTable


# --------------------------------------------------------------------------------------------
# write
# --------------------------------------------------------------------------------------------
def bucket_runs(bucket: torch.Tensor, num_buckets: int):
    """Tokens of a write sorted by bucket (stable: token order within a bucket), the number of
    tokens per bucket ``(..., u)``, and where each bucket's run starts in that order."""
    order = torch.sort(bucket, dim=-1, stable=True).indices
    n_in = torch.zeros(*bucket.shape[:-1], num_buckets, dtype=torch.int64, device=bucket.device)
    n_in.scatter_add_(-1, bucket, torch.ones_like(bucket))
    return order, n_in, torch.cumsum(n_in, -1) - n_in


def bucket_ranks(bucket: torch.Tensor, num_buckets: int):
    """Rank of each token among the tokens of this write routed to its bucket (token order),
    and the number of such tokens per bucket ``(b, h, u)``."""
    order, n_in, start = bucket_runs(bucket, num_buckets)
    sorted_b = bucket.gather(-1, order)
    rank_sorted = torch.arange(bucket.shape[-1], device=bucket.device) - start.gather(-1, sorted_b)
    rank = torch.empty_like(rank_sorted).scatter_(-1, order, rank_sorted)
    return rank, n_in


def _scatter(table: MemoryTable, flat_idx: torch.Tensor, keep: torch.Tensor, **values: torch.Tensor) -> None:
    """Write per-token ``values`` into the table's flattened entry ``flat_idx`` where ``keep``."""
    bh = flat_idx.shape[0] * flat_idx.shape[1]
    sel = keep.reshape(-1)
    row = torch.arange(bh, device=flat_idx.device).repeat_interleave(flat_idx.shape[-1])[sel]
    col = flat_idx.reshape(-1)[sel]
    c = table.capacity
    for name, val in values.items():
        buf = getattr(table, name)
        view = buf.view(bh, c, *buf.shape[4:])
        view[row, col] = val.reshape(bh * flat_idx.shape[-1], *val.shape[3:])[sel].to(buf.dtype)


@torch.no_grad()
def fifo_insert(table: MemoryTable, k, v, sig, bucket, frames) -> None:
    """The FIFO write of tokens ``k, v (b, h, t, d)`` whose signatures ``sig (b, h, t, w)`` and
    buckets ``bucket (b, h, t)`` are known; ``frames`` int64 ``(t,)``."""
    s = table.slots
    rank, n_in = bucket_ranks(bucket, table.num_buckets)
    n_tok = n_in.gather(-1, bucket)
    keep = rank >= n_tok - s  # only the last `slots` tokens of a bucket survive this write
    slot = (table.bucket_writes.gather(-1, bucket) + rank) % s
    flat = bucket * s + slot
    b, h, t = bucket.shape
    fr = frames.view(1, 1, t).expand(b, h, t)
    ones = torch.ones(b, h, t, dtype=torch.int32, device=k.device)
    _scatter(table, flat, keep, keys=k, values=v, signatures=sig, frames=fr, counts=ones)
    table.bucket_writes.add_(n_in)


@torch.no_grad()
def merge_insert(table: MemoryTable, k, v, sig, bucket, frames, hasher) -> None:
    """The merge write of routed tokens (as :func:`fifo_insert`), without a device sync per round.

    Tokens of one bucket enter in token order, one per bucket per round (round r = rank r in
    its bucket): a merge changes the entry the next token of that bucket compares against.
    Each round works on dense ``(b·h, P)`` tensors over the buckets that still have a token
    (buckets ordered by tokens received, so those of round r are a prefix of that order):
    gathers, then ``scatter_`` back to the chosen entries — one bucket holds one chosen
    entry, so scatters never collide, and a bucket without a token this round writes its
    entry's own values back. The only host read is the number of active buckets per round
    (one transfer per call). ``hasher`` signs the merged keys."""
    s, u, d, n_bits = table.slots, table.num_buckets, k.shape[-1], hasher.n_bits
    b, h, t = bucket.shape
    if t == 0:
        return
    bh, c = b * h, table.capacity
    dev = k.device
    w = sig.shape[-1]
    keys, vals = table.keys.view(bh, c, d), table.values.view(bh, c, d)
    sigs, frs, cnts = table.signatures.view(bh, c, w), table.frames.view(bh, c), table.counts.view(bh, c)
    slot_sigs = table.signatures.view(bh, u, s, w)
    writes = table.bucket_writes.view(bh, u)
    kf, vf, sf = k.reshape(bh, t, d), v.reshape(bh, t, d), sig.reshape(bh, t, w)
    ff = frames.view(1, t).expand(bh, t)
    bf = bucket.reshape(bh, t)
    order, n_in, start = bucket_runs(bf, u)  # tokens by bucket, tokens per bucket, run starts
    # buckets by tokens received, most first: the buckets with a token in round r are a prefix
    n_desc, border = torch.sort(n_in, dim=-1, descending=True, stable=True)
    start_desc = start.gather(-1, border)
    # active[r] = most buckets (over rows) with more than r tokens; one host read for all rounds
    hist = torch.zeros(bh, t + 1, dtype=torch.int64, device=dev).scatter_add_(-1, n_in, torch.ones_like(n_in))
    at_least = hist.flip(-1).cumsum(-1).flip(-1)  # buckets with ≥ j tokens
    active = at_least[:, 1:].amax(0).tolist()  # the one sync: (t,) ints
    acc = torch.float64 if keys.dtype == torch.float64 else torch.float32
    prefer_low = s - torch.arange(s, device=dev)  # ties to the lower slot
    for r, p in enumerate(active):
        if p == 0:
            break
        bsel = border[:, :p]  # (bh, p) buckets of this round
        valid = n_desc[:, :p] > r  # bucket has a token in this round (rows with fewer buckets: False)
        tok = order.gather(-1, (start_desc[:, :p] + r).clamp_(max=t - 1))
        tok_d = tok.unsqueeze(-1).expand(-1, -1, d)
        filled = writes.gather(-1, bsel)
        here = slot_sigs.gather(1, bsel.view(bh, p, 1, 1).expand(-1, -1, s, w))  # (bh, p, s, w)
        tok_sig = sf.gather(1, tok.unsqueeze(-1).expand(-1, -1, w))
        sim = hamming_similarity(tok_sig.unsqueeze(-2), here, n_bits).squeeze(-2)  # (bh, p, s)
        best = (sim.to(torch.int64) * (s + 1) + prefer_low).argmax(-1)
        e = bsel * s + torch.where(filled < s, filled, best)  # (bh, p) entry per bucket
        e_d = e.unsqueeze(-1).expand(-1, -1, d)
        e_w = e.unsqueeze(-1).expand(-1, -1, w)
        old_k, old_v = keys.gather(1, e_d), vals.gather(1, e_d)
        old_s, old_f, old_c = sigs.gather(1, e_w), frs.gather(1, e), cnts.gather(1, e)
        old = old_c.to(acc).unsqueeze(-1)
        new_k = (old_k.to(acc) * old + kf.gather(1, tok_d).to(acc)) / (old + 1)
        new_v = (old_v.to(acc) * old + vf.gather(1, tok_d).to(acc)) / (old + 1)
        sig_new = hasher(new_k.to(k.dtype).view(b, h, p, d), role="key").view(bh, p, w)
        vd = valid.unsqueeze(-1)
        keys.scatter_(1, e_d, torch.where(vd, new_k.to(keys.dtype), old_k))
        vals.scatter_(1, e_d, torch.where(vd, new_v.to(vals.dtype), old_v))
        sigs.scatter_(1, e_w, torch.where(vd, sig_new, old_s))
        frs.scatter_(1, e, torch.where(valid, torch.maximum(old_f, ff.gather(1, tok)), old_f))
        cnts.scatter_(1, e, old_c + valid.to(old_c.dtype))
        writes.scatter_add_(1, bsel, valid.to(writes.dtype))


@torch.no_grad()
def memory_write_fifo(table: MemoryTable, k: torch.Tensor, v: torch.Tensor, frames: torch.Tensor, *,
                      hasher, route_bits: int, route_key: int) -> None:
    """Store ``k, v (b, h, t, d)`` from ``frames`` (int64 ``(t,)``) with the FIFO policy."""
    sig, bucket = signatures_and_buckets(k, hasher, route_bits, table.num_buckets, route_key)
    fifo_insert(table, k, v, sig, bucket, frames)


@torch.no_grad()
def memory_write_merge(table: MemoryTable, k: torch.Tensor, v: torch.Tensor, frames: torch.Tensor, *,
                       hasher, route_bits: int, route_key: int) -> None:
    """Store ``k, v (b, h, t, d)`` from ``frames`` (int64 ``(t,)``) with the merge policy."""
    sig, bucket = signatures_and_buckets(k, hasher, route_bits, table.num_buckets, route_key)
    merge_insert(table, k, v, sig, bucket, frames, hasher)


# --------------------------------------------------------------------------------------------
# read
# --------------------------------------------------------------------------------------------
def _read_chunk(qs, idx, ok, keys, vals, bias, sc: float, acc: torch.dtype):
    """Softmax of queries ``qs (b, h, m, d)`` over their selected entries ``idx (b, h, m, k)``
    (``ok``: the entry exists). Returns ``out (b, h, m, d)`` in ``acc`` and ``lse (b, h, m)``."""
    b, h, m, d = qs.shape
    c, kk = keys.shape[2], idx.shape[-1]
    if kk * 8 >= c:
        # a large share selected: scores against every entry (one matmul) and the selected
        # ones picked out, weights scattered back for one matmul with the values; gathering
        # (m, kk, d) copies of keys and values instead costs far more on a CPU
        s = torch.matmul(qs.to(acc), keys.to(acc).transpose(-1, -2)).gather(-1, idx) * sc
        s = (s + bias.to(acc).gather(-1, idx.reshape(b, h, -1)).reshape(b, h, m, kk)).masked_fill(~ok, float("-inf"))
        vg = None
    else:
        g = idx.reshape(b, h, m * kk, 1)
        kg = torch.gather(keys, 2, g.expand(b, h, m * kk, d)).reshape(b, h, m, kk, d).to(acc)
        vg = torch.gather(vals, 2, g.expand(b, h, m * kk, d)).reshape(b, h, m, kk, d).to(acc)
        s = torch.einsum("bhmd,bhmkd->bhmk", qs.to(acc), kg) * sc + bias.gather(2, idx.reshape(b, h, -1)).reshape(b, h, m, kk).to(acc)
        s = s.masked_fill(~ok, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.masked_fill(torch.isinf(lse), 0.0).unsqueeze(-1))
    if vg is None:  # weights of the selection, back in entry order (indices are distinct; unused ones weigh 0)
        out = torch.matmul(torch.zeros(b, h, m, c, dtype=acc, device=qs.device).scatter(-1, idx, p), vals.to(acc))
    else:
        out = torch.einsum("bhmk,bhmkd->bhmd", p, vg)
    return out, lse


def memory_attend(table: MemoryTable, q: torch.Tensor, top_k: int, *, hasher, scale: float | None = None,
                  return_indices: bool = False, q_sig: torch.Tensor | None = None):
    """Attention of ``q (b, h, n, d)`` over its ``top_k`` most similar entries.

    Returns ``(out (b, h, n, d), lse (b, h, n))`` — lse float32, float64 for float64 queries — and
    with ``return_indices`` the int64 indices ``(b, h, n, min(top_k, c))`` by similarity, then
    entry (``-1`` for missing entries, last). Gradients flow to ``q``. ``q_sig``: the queries'
    signatures (default ``hasher(q, role="query")``)."""
    b, h, n, d = q.shape
    c = table.capacity
    kk = min(top_k, c)
    sc = 1.0 / math.sqrt(d) if scale is None else float(scale)
    keys, vals = table.keys.view(b, h, c, d), table.values.view(b, h, c, d)
    sigs = table.signatures.view(b, h, c, -1)
    counts = table.counts.view(b, h, c)
    valid = counts > 0
    bias = torch.log(counts.clamp(min=1).float())
    n_bits = hasher.n_bits
    # rank = (equal − different bits + n_bits) · (c + 1) + tie: ordered as the similarity, ties to
    # the lower slot, ≥ 1 for any entry and -1 for an empty slot. The ±1 sign product is the bit
    # agreement (hamming_similarity = (dot + n_bits) / 2), so one matmul and one pass build it, in
    # float32 while every rank is an exact float32 integer (then int32: an integer topk is ~1.5×
    # faster on a CPU), else in float64
    small = (2 * n_bits + 1) * (c + 1) < 1 << 24
    rank_dtype = torch.float32 if small else torch.float64
    with torch.no_grad():
        if q_sig is None:
            q_sig = hasher(q, role="query")
        k_signs = sig_signs(sigs, n_bits).to(rank_dtype)
        tie = (n_bits * (c + 1) + c - torch.arange(c, device=q.device, dtype=rank_dtype)).masked_fill(~valid, float("-inf"))
    outs, lses, idxs = [], [], []
    chunk = max(1, checks.CHUNK_ELEMS // max(1, b * h * c))
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    for start in range(0, n, chunk):
        qs = q[:, :, start : start + chunk]
        with torch.no_grad():
            with torch.autocast(q.device.type, enabled=False):
                dot = torch.matmul(sig_signs(q_sig[:, :, start : start + chunk], n_bits).to(rank_dtype),
                                   k_signs.transpose(-1, -2))
            rank = torch.add(tie.unsqueeze(-2), dot, alpha=c + 1).nan_to_num_(neginf=-1.0)
            top = (rank.to(torch.int32) if small else rank).topk(kk, dim=-1, sorted=return_indices)
            ok = top.values >= 0
            idx = top.indices  # (b, h, m, kk)
        out, lse = _read_chunk(qs, idx, ok, keys, vals, bias, sc, acc)
        outs.append(out)
        lses.append(lse)
        idxs.append(torch.where(ok, idx, -1))
    out = torch.cat(outs, 2).to(q.dtype)
    lse = torch.cat(lses, 2)
    if return_indices:
        return out, lse, torch.cat(idxs, 2)
    return out, lse
