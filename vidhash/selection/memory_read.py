"""How well a memory read's top-k keeps what exact attention over the whole memory would weigh most.

Letters: b batch, h heads, n queries, c entries (the memory's capacity), k entries read per query.

A read of :class:`~vidhash.memory.HashedMemory` keeps, per query, the ``k`` entries whose
signatures are most similar to the query's. Against the exact scores of every valid entry
(the attention logit the read gives an entry: ``q·key·scale + log(count)``; ``q·key·scale`` for
a FIFO memory, whose entries count one token each):

* ``topk_recall`` — share of the exact top-k entries the read keeps (``|kept ∩ exact top-k| / k``,
  ``k`` capped at the valid entries), mean over queries;
* ``mass_recall`` — share of the exact attention mass over the whole memory the kept entries hold;
* ``oracle`` — the same for the exact top-k (the most any ``k`` entries can hold); ``ratio`` =
  mass_recall / oracle.

:class:`MemoryReadStats` accumulates these over reads (device tensors, no host sync until
:meth:`~MemoryReadStats.summary`); :func:`probe_memory_reads` measures every read that runs eagerly
inside it (``vidhash eval world`` per run), leaving the reads' results untouched.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from vidhash.kernels.memory import naive as memory_naive
from vidhash.memory import HashedMemory, MemoryRead
from vidhash.ops.checks import MemoryTable

KEYS = ("topk_recall", "mass_recall", "oracle", "ratio")


@torch.no_grad()
def read_recall_sums(table: MemoryTable, q: torch.Tensor, idx: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """float64 ``[queries, top-k hits share sum, kept mass sum, oracle mass sum]`` of the read
    ``idx (b, h, n, k)`` (entry indices, ``-1`` = none) by ``q (b, h, n, d)`` from ``table``.
    Queries of an empty memory are not counted."""
    b, h, n, d = q.shape
    c = table.capacity
    sc = 1.0 / math.sqrt(d) if scale is None else float(scale)
    counts = table.counts.view(b, h, c)
    bias = torch.where(counts > 0, counts.clamp(min=1).float().log(), float("-inf"))  # (b, h, c)
    keys = table.keys.view(b, h, c, d).float()
    kk = idx.shape[-1]
    out = torch.zeros(4, dtype=torch.float64, device=q.device)
    chunk = max(1, (1 << 23) // max(1, b * h * c))
    for start in range(0, n, chunk):
        s = torch.matmul(q[:, :, start : start + chunk].float(), keys.transpose(-1, -2)) * sc + bias.unsqueeze(-2)
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # (b, h, t, c); an empty memory: all 0
        sel = idx[:, :, start : start + chunk].long()
        ok = sel >= 0
        kept = torch.where(ok, p.gather(-1, sel.clamp(min=0)), 0.0)
        valid = (counts > 0).sum(-1, keepdim=True).unsqueeze(-1)  # (b, h, 1, 1)
        want = torch.minimum(valid, torch.tensor(kk, device=q.device))  # exact top-k size per row
        top = s.topk(kk, dim=-1).indices
        top_ok = torch.arange(kk, device=q.device) < want
        hit = ((sel.unsqueeze(-1) == top.unsqueeze(-2)) & ok.unsqueeze(-1) & top_ok.unsqueeze(-2)).any(-2)
        rows = (valid > 0).expand(b, h, sel.shape[2], 1).squeeze(-1)  # (b, h, t)
        share = hit.sum(-1).double() / want.squeeze(-1).clamp(min=1).double()
        oracle = torch.where(top_ok, p.gather(-1, top), 0.0).sum(-1)
        live = lambda x: torch.where(rows, x.double(), 0.0).sum()  # no boolean indexing: no host sync
        out += torch.stack([rows.sum().double(), live(share), live(kept.sum(-1)), live(oracle)])
    return out


class MemoryReadStats:
    """Sums of :func:`read_recall_sums` over reads; :meth:`summary` gives the means."""

    def __init__(self):
        self.sums = None
        self.reads = 0

    def add(self, table: MemoryTable, q: torch.Tensor, idx: torch.Tensor, scale: float | None = None) -> None:
        got = read_recall_sums(table, q, idx, scale)
        self.sums = got if self.sums is None else self.sums + got.to(self.sums.device)
        self.reads += 1

    def summary(self) -> dict:
        """``{topk_recall, mass_recall, oracle, ratio, reads, queries}`` (None for the means when no read was seen)."""
        if self.sums is None or float(self.sums[0]) == 0:
            return {**dict.fromkeys(KEYS), "reads": self.reads, "queries": 0}
        n, hits, mass, oracle = (float(x) for x in self.sums.cpu())
        return {"topk_recall": hits / n, "mass_recall": mass / n, "oracle": oracle / n,
                "ratio": mass / oracle if oracle > 0 else None, "reads": self.reads, "queries": int(n)}


@contextmanager
def probe_memory_reads(max_queries: int = 64, every: int = 1):
    """Inside the ``with``, every :meth:`HashedMemory.attend` that reads a top-k (not every entry)
    and runs eagerly — or every ``every``-th of them (the reference selection over the whole
    capacity costs a CPU ~10× the read itself) — also adds its recall to the yielded
    :class:`MemoryReadStats`, on up to ``max_queries`` evenly spaced queries per read. The read
    itself runs unchanged; the kept entries are recomputed by the reference selection
    (``kernels/memory/naive.py``) from the memory's stored signatures and the query signatures of
    its hasher. Reads replayed from a CUDA graph run no Python and are not seen (``reads`` counts
    the ones measured)."""
    if not isinstance(max_queries, int) or max_queries < 1:
        raise ValueError(f"max_queries must be a positive int, got {max_queries!r}")
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"every must be a positive int, got {every!r}")
    stats = MemoryReadStats()
    original = HashedMemory.attend
    seen = [0]

    def attend(self, q, top_k=None, *, scale=None, return_indices=False, backend="auto", mass_cap=0, select="candidates"):
        res = original(self, q, top_k, scale=scale, return_indices=return_indices, backend=backend, mass_cap=mass_cap,
                       select=select)
        kk = MemoryRead(top_k, mass_cap).top_k_for(self.capacity)
        capturing = q.is_cuda and torch.cuda.is_current_stream_capturing()
        eligible = kk is not None and not capturing and not torch.compiler.is_compiling()
        if eligible:
            seen[0] += 1
        if eligible and (seen[0] - 1) % every == 0:
            with torch.no_grad():
                step = max(1, -(-q.shape[2] // max_queries))
                sub = q[:, :, ::step].detach()
                idx = memory_naive.memory_attend(self.table, sub, kk, hasher=self.hasher, scale=scale,
                                                 return_indices=True)[2]
                stats.add(self.table, sub, idx, scale)
        return res

    HashedMemory.attend = attend
    try:
        yield stats
    finally:
        HashedMemory.attend = original
