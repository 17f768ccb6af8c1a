"""The hashed-memory read on a CPU at a cost of the filled entries, not of the capacity.

Letters: b batch, h heads, n queries, c entries (capacity), f filled entries of one head,
d head_dim, w signature words, k top_k.

:func:`memory_attend_compact` reads what :func:`~vidhash.kernels.memory.naive.memory_attend` (the
reference) reads — per query the ``top_k`` entries of highest Hamming similarity, ties to the lower
entry, and exact softmax over them with each entry weighted by ``log(count)`` — and returns the same
selection; the outputs equal the reference's to float rounding (another summation order), not
bitwise. The reference scores every one of the ``c`` entries for every query and gathers
``(n, k, d)`` copies of keys and values; here, one head at a time:

1. the filled entries (``counts > 0``), in entry order — so a tie still goes to the lower entry;
2. their rank for every query, ``(similarity + n_bits)·(f + 1) + f − j``, one matmul of ±1 bit
   signs (exact integers in float32), then ``topk`` over ``f`` entries;
3. attention over the selected pairs only: their scores by a sampled matmul
   (``torch.sparse.sampled_addmm`` on a CSR pattern of the selection), the weighted sum of values
   by a bag sum (``embedding_bag``), nothing of size ``(n, c)`` or ``(n, k, d)`` held.

A head with at most ``top_k`` filled entries reads them all (dense, the same log-count bias).
Inference only (no gradients to ``q``); float32 arithmetic (float64 for float64 queries), as the
reference. :class:`vidhash.memory.HashedMemory` runs it for ``backend="auto"`` on a CPU
(``HashedMemory.attend`` says when).
"""
from __future__ import annotations

import math
import warnings

import torch

from vidhash.hashing import sig_signs
from vidhash.ops.checks import MemoryTable


@torch.no_grad()
def _select(q_signs: torch.Tensor, k_signs: torch.Tensor, kk: int, n_bits: int, sorted_: bool) -> torch.Tensor:
    """Indices ``(n, kk)`` into the ``f`` filled entries of the ``kk`` best ranks of each query
    (``q_signs (n, n_bits)``, ``k_signs (f, n_bits)`` ±1): by similarity, ties to the lower entry;
    ``sorted_``: best first, else in topk's order."""
    f = k_signs.shape[0]
    small = (2 * n_bits + 1) * (f + 1) < 1 << 24  # every rank an exact float32 integer
    dt = torch.float32 if small else torch.float64
    tie = n_bits * (f + 1) + f - torch.arange(f, dtype=dt)
    rank = torch.addmm(tie.unsqueeze(0), q_signs.to(dt), k_signs.to(dt).t(), alpha=f + 1)
    return (rank.to(torch.int32) if small else rank).topk(kk, dim=-1, sorted=sorted_).indices


def _sparse_read(q: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor, bias: torch.Tensor, cols: torch.Tensor,
                 sc: float):
    """Softmax of ``q (n, d)`` over keys ``cols (n, kk)`` (entry indices, distinct per row, any
    order) of ``keys``/``vals (c, d)``, key ``cols[i, j]`` scored ``sc·q·k + bias[i, j]``:
    ``out (n, d)``, ``lse (n,)``."""
    n, kk = cols.shape
    crow = torch.arange(0, n * kk + 1, kk, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta": sampled_addmm alone is used
        # (values zeros, not empty: beta = 0 still multiplies them, and 0·NaN is NaN)
        pattern = torch.sparse_csr_tensor(crow, cols.reshape(-1), torch.zeros(n * kk, dtype=q.dtype),
                                          size=(n, keys.shape[0]), check_invariants=False)
        s = torch.sparse.sampled_addmm(pattern, q, keys.t(), beta=0.0, alpha=sc).values().view(n, kk)
    s = s + bias
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1))
    out = torch.nn.functional.embedding_bag(cols, vals, per_sample_weights=p, mode="sum")
    return out, lse


def _dense_read(q: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor, bias: torch.Tensor, sc: float):
    """Softmax of ``q (n, d)`` over every row of ``keys``/``vals (f, d)`` with ``bias (f,)``."""
    s = torch.addmm(bias.unsqueeze(0), q, keys.t(), alpha=sc)
    lse = torch.logsumexp(s, dim=-1)
    return torch.matmul(torch.exp(s - lse.unsqueeze(-1)), vals), lse


@torch.no_grad()
def memory_attend_compact(table: MemoryTable, q: torch.Tensor, top_k: int, *, hasher, scale: float | None = None,
                          return_indices: bool = False, q_sig: torch.Tensor | None = None):
    """:func:`~vidhash.kernels.memory.naive.memory_attend` (same arguments and returns) at a cost
    of the filled entries: ``out (b, h, n, d)``, ``lse (b, h, n)`` (float32, float64 for float64
    queries) and with ``return_indices`` the indices ``(b, h, n, min(top_k, c))`` best first
    (``-1`` for missing entries, last) — the reference's. No gradients."""
    if q.device.type != "cpu" or table.keys.device.type != "cpu":
        raise ValueError(f"memory_attend_compact reads CPU tensors; q is on {q.device}, the memory on {table.keys.device}")
    b, h, n, d = q.shape
    c = table.capacity
    kk = min(top_k, c)
    sc = 1.0 / math.sqrt(d) if scale is None else float(scale)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    n_bits = hasher.n_bits
    if q_sig is None:
        q_sig = hasher(q, role="query")
    keys, vals = table.keys.view(b * h, c, d), table.values.view(b * h, c, d)
    sigs, counts = table.signatures.view(b * h, c, -1), table.counts.view(b * h, c)
    qf, q_sig = q.reshape(b * h, n, d).to(acc), q_sig.reshape(b * h, n, -1)
    out = torch.zeros(b * h, n, d, dtype=acc)
    lse = torch.full((b * h, n), float("-inf"), dtype=acc if acc == torch.float64 else torch.float32)
    idx = torch.full((b * h, n, kk), -1, dtype=torch.int64)
    for i in range(b * h):
        # 1. the filled entries of this head, in entry order, and their log-count weights
        filled = torch.nonzero(counts[i] > 0).squeeze(1)
        f = filled.numel()
        if f == 0:
            continue
        bias = torch.log(counts[i, filled].float()).to(acc)  # as the reference: log in float32
        q_signs, k_signs = sig_signs(q_sig[i], n_bits), sig_signs(sigs[i, filled], n_bits)
        if f <= kk:  # every filled entry is selected: dense over them
            out[i], lse[i] = _dense_read(qf[i], keys[i, filled].to(acc), vals[i, filled].to(acc), bias, sc)
            if return_indices:
                idx[i, :, :f] = filled[_select(q_signs, k_signs, f, n_bits, True)]
            continue
        # 2. the top-kk ranks among them (positions in `filled`)
        sel = _select(q_signs, k_signs, kk, n_bits, return_indices)
        if return_indices:
            idx[i] = filled[sel]
        # 3. softmax over the selected entries
        k_i = keys[i] if keys.dtype == acc else keys[i].to(acc)
        v_i = vals[i] if vals.dtype == acc else vals[i].to(acc)
        out[i], lse[i] = _sparse_read(qf[i], k_i, v_i, bias[sel], filled[sel], sc)
    res = out.view(b, h, n, d).to(q.dtype), lse.view(b, h, n)
    return (*res, idx.view(b, h, n, kk)) if return_indices else res
