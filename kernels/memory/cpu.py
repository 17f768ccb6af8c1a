"""The hashed-memory read on a CPU at a cost of the filled entries, not of the capacity.

Letters: b batch, h heads, n queries, c entries (capacity), f filled entries of one head,
d head_dim, w signature words, r n_bits, k top_k.

:func:`memory_attend_compact` reads what :func:`~vidhash.kernels.memory.naive.memory_attend` (the
reference) reads — per query the ``top_k`` entries of highest Hamming similarity, ties to the lower
entry, and exact softmax over them with each entry weighted by ``log(count)`` — and returns the same
selection; the outputs equal the reference's to float rounding (another summation order), not
bitwise. The reference scores every one of the ``c`` entries for every query and gathers
``(n, k, d)`` copies of keys and values; here, one head at a time:

1. the filled entries (``counts > 0``), in entry order — so a tie still goes to the lower entry —
   with their keys, values, log-count weights and signature bits (:func:`filled_entries`; kept
   while the memory is unchanged by a :class:`ReadCache`, so a generation gathers them once per
   chunk, not once per denoising step);
2. their rank for every query, ``(similarity + n_bits)·(f + 1) + f − j``, one int8 matmul of ±1
   bit signs (exact int32; float32 where ``torch._int_mm`` is missing), then ``topk`` over ``f``
   entries — once per query signature while the memory is unchanged (:class:`SelectionMemo`,
   with a :class:`ReadCache`);
3. attention over the selected pairs only: their scores by a sampled matmul
   (``torch.sparse.sampled_addmm`` on a CSR pattern of the selection), the weighted sum of values
   by a bag sum (``embedding_bag``), nothing of size ``(n, c)`` or ``(n, k, d)`` held.

A head with at most ``top_k`` filled entries reads them all (dense, the same log-count bias).
Inference only (no gradients to ``q``); float32 arithmetic (float64 for float64 queries), as the
reference. :class:`vidhash.memory.HashedMemory` runs it for ``backend="auto"`` on a CPU
(``HashedMemory.attend`` says when).
"""
from __future__ import annotations

import functools
import math
import warnings
import weakref
from typing import NamedTuple

import torch

from vidhash.hashing import LearnedHash, SimHash, sig_signs
from vidhash.ops.checks import MemoryTable


class FilledEntries(NamedTuple):
    """One head's filled entries (``counts > 0``), in entry order: what every read of the head
    takes from the memory until it changes. Letters: f filled entries, r n_bits."""

    filled: torch.Tensor  # (f,) int64 entry indices
    bias: torch.Tensor  # (f,) log(count) in the read's dtype (the log in float32, as the reference)
    keys: torch.Tensor  # (f, d) in the read's dtype
    vals: torch.Tensor  # (f, d) in the read's dtype
    k_signs: torch.Tensor  # ±1 signature bits: int8 (r, f) for int32 ranks, else (f, r) in the rank dtype
    tie: torch.Tensor  # (f,) rank of entry j apart from its similarity: n_bits·(f + 1) + f − j, rank dtype


def _rank_dtype(f: int, n_bits: int) -> torch.dtype:
    """The dtype of the ranks ``(similarity + n_bits)·(f + 1) + f − j``: int32 (an int8 matmul
    gives the similarities exactly, :func:`_int_mm_works`) while they fit; else float32 while they
    are exact float32 integers, else float64."""
    top = (2 * n_bits + 1) * (f + 1)
    if top < 1 << 31 and n_bits <= 127 and _int_mm_works():
        return torch.int32
    return torch.float32 if top < 1 << 24 else torch.float64


@functools.lru_cache(maxsize=1)
def _int_mm_works() -> bool:
    """Whether ``torch._int_mm`` (int8 × int8 → int32) runs on a CPU here and is exact."""
    a = torch.tensor([[1, -1, 1, -1, 1, 1, -1, -1]], dtype=torch.int8)
    try:
        return bool(torch.equal(torch._int_mm(a, a.t().contiguous()), torch.tensor([[8]], dtype=torch.int32)))
    except (AttributeError, RuntimeError, TypeError):
        return False


class JoinedEntries(NamedTuple):
    """The filled entries of every head in one tensor each, head after head (each head's
    :class:`FilledEntries` views its rows): one sparse read covers several heads. Letters: F the
    filled entries of all heads."""

    keys: torch.Tensor  # (F, d) in the read's dtype
    vals: torch.Tensor  # (F, d)
    bias: torch.Tensor  # (F,)
    starts: tuple  # (b·h,) ints: the first row of each head


class Entries(list):
    """:func:`filled_entries`' list (``b·h`` :class:`FilledEntries` or None), with ``joined``."""

    joined: JoinedEntries


def filled_entries(table: MemoryTable, n_bits: int, acc: torch.dtype) -> Entries:
    """Per batch element and head (``b·h`` of them), its :class:`FilledEntries`, None for an empty
    one; gathered for all heads at once (``.joined``, which the heads' keys, values and bias view)."""
    b, h, c, d = table.keys.shape[0], table.keys.shape[1], table.capacity, table.keys.shape[-1]
    bh = b * h
    mask = table.counts.view(bh, c) > 0
    flat = torch.nonzero(mask.view(-1)).squeeze(1)  # (F,) i·c + j: head by head, entry order within
    fs = mask.sum(1).tolist()
    keys = table.keys.view(bh * c, d).index_select(0, flat).to(acc)
    vals = table.values.view(bh * c, d).index_select(0, flat).to(acc)
    bias = torch.log(table.counts.view(-1).index_select(0, flat).float()).to(acc)
    sigs = table.signatures.view(bh * c, -1).index_select(0, flat)
    starts = [sum(fs[:i]) for i in range(bh)]
    out = Entries()
    out.joined = JoinedEntries(keys, vals, bias, tuple(starts))
    for i, (f, s0) in enumerate(zip(fs, starts)):
        if f == 0:
            out.append(None)
            continue
        rows = slice(s0, s0 + f)
        dt = _rank_dtype(f, n_bits)
        signs = sig_signs(sigs[rows], n_bits)
        signs = signs.to(torch.int8).t().contiguous() if dt == torch.int32 else signs.to(dt)
        out.append(FilledEntries(flat[rows] - i * c, bias[rows], keys[rows], vals[rows], signs,
                                 n_bits * (f + 1) + f - torch.arange(f, dtype=dt)))
    return out


class ReadCache:
    """The :func:`filled_entries` of one memory, kept while its tensors are unchanged: the same
    tensor objects (held by weak reference) at the same ``_version`` — every in-place change (a
    write, ``reset``, ``load_state_dict``) bumps it — make the next read reuse them, anything else
    rebuilds them. A generation reads an unchanged memory in every pass over a chunk (its denoising
    steps and its commit) and writes it once per chunk. (A change through ``tensor.data``, which
    has its own version counter, is not seen: the memory's ops never make one.)

    With the entries it keeps their :class:`SelectionMemo` (emptied with them): the selections
    already made, by query signature."""

    def __init__(self):
        self._refs: tuple = ()
        self._key: tuple | None = None
        self._entries: Entries = Entries()
        self.memo: SelectionMemo | None = None  # of the kept entries; None while nothing is kept

    def __reduce__(self):  # copied or pickled with its memory: empty (weak references do not copy)
        return ReadCache, ()

    def get(self, table: MemoryTable, n_bits: int, acc: torch.dtype) -> Entries:
        parts = (table.keys, table.values, table.signatures, table.counts)
        if any(t.is_inference() for t in parts):  # made under torch.inference_mode: no version counter to
            self._refs, self._key, self.memo = (), None, None  # see a change by, so nothing is kept
            return filled_entries(table, n_bits, acc)
        key = (n_bits, acc, *(t._version for t in parts))
        if key != self._key or len(self._refs) != len(parts) or any(r() is not t for r, t in zip(self._refs, parts)):
            self._key, self.memo, self._entries = None, None, filled_entries(table, n_bits, acc)
            self._refs, self._key, self.memo = tuple(weakref.ref(t) for t in parts), key, SelectionMemo()
        return self._entries


MEMO_BYTES = 64 << 20
"""At most this many bytes of selections a :class:`SelectionMemo` keeps (per memory); beyond it,
new signatures are selected and not kept."""


class SelectionMemo:
    """The selections (:func:`_top`'s indices) already made from one set of filled entries, per
    head and by query signature: a query's selection is a function of its signature bits alone
    (its rank row is ``tie + (f + 1)·signs·k_signs``, and ``topk`` treats rows independently), so
    a query whose signature was seen before — in this read or an earlier read of the unchanged
    memory: a chunk's denoising steps, guidance and commit pass — gets the kept row, bitwise what
    :func:`_top` would give it. In the default 10-s demo 45 % of the reads' query rows bring a
    signature new to the chunk. Signatures of up to 63 bits (an int64 code each); longer ones are
    not kept (:meth:`select` then calls :func:`_top`)."""

    def __init__(self):
        # (head, kk, sorted) -> [{signature: row of store}, store (≥ rows used, kk) int64 or None]
        self._heads: dict[tuple, list] = {}
        self.bytes = 0  # of the selections kept

    @staticmethod
    def codes(q_signs: torch.Tensor) -> list | None:
        """``q_signs (m, n, r)`` ±1 → the signatures as Python integers, ``m`` lists of ``n``; None
        for more than 63 bits."""
        r = q_signs.shape[-1]
        return ((q_signs > 0).to(torch.int64) << torch.arange(r)).sum(-1).tolist() if r <= 63 else None

    def select(self, head: int, codes: list | None, q_signs: torch.Tensor, e: FilledEntries, kk: int,
               sorted_: bool) -> torch.Tensor:
        """:func:`_top` ``(q_signs (n, r), e.k_signs, e.tie, kk, sorted_)`` of head ``head`` (``codes``:
        its queries' row of :meth:`codes`), each signature selected once. The bookkeeping of a few
        hundred integers is Python dicts and lists: cheaper than tensor ops of that size."""
        if codes is None or not codes:
            return _top(q_signs, e.k_signs, e.tie, kk, sorted_)
        memo = self._heads.setdefault((head, kk, sorted_), [{}, None])
        slot = memo[0]
        rows = [slot.get(c, -1) for c in codes]  # each query's row of the store, -1: not kept
        if -1 in rows:
            # the new signatures selected (from one query of each), kept while the memo has room
            new: dict[int, int] = {}
            for i, (c, row) in enumerate(zip(codes, rows)):
                if row < 0 and c not in new:
                    new[c] = i
            fresh = _top(q_signs.index_select(0, torch.tensor(list(new.values()))), e.k_signs, e.tie, kk, sorted_)
            m = len(slot)
            store = self._room(memo, m + len(new), kk, fresh.numel() * 8)
            if store is None:  # memo full: this read's rows from the kept ones and the fresh ones
                where = {c: m + j for j, c in enumerate(new)}
                table = torch.cat([memo[1][:m], fresh]) if m else fresh
                return table.index_select(0, torch.tensor([r if r >= 0 else where[c] for c, r in zip(codes, rows)]))
            store[m : m + len(new)] = fresh
            for j, c in enumerate(new):
                slot[c] = m + j
            rows = [slot[c] for c in codes]
        return memo[1].index_select(0, torch.tensor(rows))

    def _room(self, memo: list, rows: int, kk: int, nbytes: int) -> torch.Tensor | None:
        """The memo's store with room for ``rows`` rows (grown by doubling), ``nbytes`` more counted;
        None when that would pass :data:`MEMO_BYTES`."""
        if self.bytes + nbytes > MEMO_BYTES:
            return None
        self.bytes += nbytes
        store = memo[1]
        if store is None or store.shape[0] < rows:
            grown = torch.empty(max(rows, 1024, 2 * (0 if store is None else store.shape[0])), kk, dtype=torch.int64)
            if store is not None:
                grown[: store.shape[0]] = store
            store = memo[1] = grown
        return store


def _top(q_signs: torch.Tensor, k_signs: torch.Tensor, tie: torch.Tensor, kk: int, sorted_: bool) -> torch.Tensor:
    """Indices ``(n, kk)`` of the ``kk`` best ranks ``tie + (f + 1)·q_signs·k_signs`` per query
    (``k_signs`` and ``tie`` as :class:`FilledEntries` holds them): ``sorted_``: best first, else in
    topk's order. The ranks are exact integers in every dtype, and topk's order depends on their
    comparisons alone, so each dtype gives the same indices: int32 from an int8 matmul (~2× faster
    than float32's and no conversion), else an integer topk of float32 ranks (~1.5× faster than a
    float one), else float64."""
    if k_signs.dtype == torch.int8:  # (r, f)
        f = k_signs.shape[1]
        if q_signs.shape[0] == 0:
            return torch.empty(0, kk, dtype=torch.int64)
        rank = torch._int_mm(q_signs.to(torch.int8), k_signs).mul_(f + 1).add_(tie)
        return rank.topk(kk, dim=-1, sorted=sorted_).indices
    f = k_signs.shape[0]
    rank = torch.addmm(tie.unsqueeze(0), q_signs.to(k_signs.dtype), k_signs.t(), alpha=f + 1)
    return (rank.to(torch.int32) if k_signs.dtype == torch.float32 else rank).topk(kk, dim=-1, sorted=sorted_).indices


@torch.no_grad()
def _select(q_signs: torch.Tensor, k_signs: torch.Tensor, kk: int, n_bits: int, sorted_: bool) -> torch.Tensor:
    """Indices ``(n, kk)`` into the ``f`` filled entries of the ``kk`` best ranks of each query
    (``q_signs (n, n_bits)``, ``k_signs (f, n_bits)`` ±1): by similarity, ties to the lower entry;
    ``sorted_``: best first, else in topk's order."""
    f = k_signs.shape[0]
    dt = _rank_dtype(f, n_bits)
    k = k_signs.to(torch.int8).t().contiguous() if dt == torch.int32 else k_signs.to(dt)
    return _top(q_signs, k, n_bits * (f + 1) + f - torch.arange(f, dtype=dt), kk, sorted_)


def _sparse_read(q: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor, bias: torch.Tensor, cols: torch.Tensor,
                 sc: float):
    """Softmax of ``q (n, d)`` over keys ``cols (n, kk)`` (entry indices, distinct per row, any
    order) of ``keys``/``vals (c, d)``, key ``cols[i, j]`` scored ``sc·q·k + bias[i, j]``:
    ``out (n, d)``, ``lse (n,)``."""
    n, kk = cols.shape
    crow, zeros = _csr_rows(n, kk, q.dtype)  # (crow doubles as embedding_bag's bag offsets, less the last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta": sampled_addmm alone is used
        pattern = torch.sparse_csr_tensor(crow, cols.reshape(-1), zeros, size=(n, keys.shape[0]), check_invariants=False)
        s = torch.sparse.sampled_addmm(pattern, q, keys.t(), beta=0.0, alpha=sc).values().view(n, kk)
    s.add_(bias)  # (s is this call's own: in place, the same values as s + bias)
    lse = torch.logsumexp(s, dim=-1)
    p = s.sub_(lse.unsqueeze(-1)).exp_()
    # F.embedding_bag(cols, vals, per_sample_weights=p, mode="sum") without its Python checks: the same op
    out = torch.embedding_bag(vals, cols.reshape(-1), crow[:-1], False, 0, False, p.reshape(-1), False, None)[0]
    return out, lse


@functools.lru_cache(maxsize=8)
def _csr_rows(n: int, kk: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Row pointers of ``n`` rows of ``kk`` entries, and ``n·kk`` zero values (zeros, not empty:
    sampled_addmm's beta = 0 still multiplies them, and 0·NaN is NaN); read only."""
    return torch.arange(0, n * kk + 1, kk, dtype=torch.int64), torch.zeros(n * kk, dtype=dtype)


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[idx]`` for a 1-D ``x`` (index_select: ~4× faster than advanced indexing on a CPU)."""
    return x.index_select(0, idx.reshape(-1)).view(idx.shape)


def _dense_read(q: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor, bias: torch.Tensor, sc: float):
    """Softmax of ``q (n, d)`` over every row of ``keys``/``vals (f, d)`` with ``bias (f,)``."""
    s = torch.addmm(bias.unsqueeze(0), q, keys.t(), alpha=sc)
    lse = torch.logsumexp(s, dim=-1)
    return torch.matmul(torch.exp(s - lse.unsqueeze(-1)), vals), lse


def _query_signs(q: torch.Tensor, hasher, q_sig: torch.Tensor | None) -> torch.Tensor:
    """±1 float32 ``(b, h, n, r)`` of the queries' signature bits: of ``q_sig`` when given, else of
    ``hasher(q, role="query")`` — for the library's hashers (whose signature is
    ``pack_bits(project(q) > 0)``) straight from the projection's signs, the same values without
    packing and unpacking the bits."""
    if q_sig is None and type(hasher) in (SimHash, LearnedHash):
        return (hasher.project(q, role="query") > 0).to(torch.float32) * 2 - 1
    return sig_signs(hasher(q, role="query") if q_sig is None else q_sig, hasher.n_bits)


def _read_selected(entries: Entries, sels: dict, qf: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, sc: float):
    """Softmax over the selected entries, ``sels`` (head → ``(n, kk)`` positions among its filled
    entries), into ``out (b·h, n, d)`` and ``lse (b·h, n)``: several heads in one sparse read over
    :class:`JoinedEntries` (each score, bias, exponent and bag sum is per query and entry, in the
    selection's order either way: the same values as head by head, in fewer, larger ops)."""
    if not sels:
        return
    heads = list(sels)
    if len(heads) == 1 or getattr(entries, "joined", None) is None:
        for i in heads:
            e = entries[i]
            out[i], lse[i] = _sparse_read(qf[i], e.keys, e.vals, _take(e.bias, sels[i]), sels[i], sc)
        return
    j = entries.joined
    n, kk = sels[heads[0]].shape
    cols = torch.cat([sels[i] + j.starts[i] for i in heads])  # (heads·n, kk) rows of the joined entries
    q = qf.reshape(-1, qf.shape[-1]) if len(heads) == qf.shape[0] else qf[heads].reshape(-1, qf.shape[-1])
    o, l = _sparse_read(q, j.keys, j.vals, _take(j.bias, cols), cols, sc)
    if len(heads) == qf.shape[0]:
        out.copy_(o.view_as(out))
        lse.copy_(l.view_as(lse))
    else:
        out[heads], lse[heads] = o.view(len(heads), n, -1), l.view(len(heads), n).to(lse.dtype)


@torch.no_grad()
def memory_attend_compact(table: MemoryTable, q: torch.Tensor, top_k: int, *, hasher, scale: float | None = None,
                          return_indices: bool = False, q_sig: torch.Tensor | None = None,
                          cache: ReadCache | None = None):
    """:func:`~vidhash.kernels.memory.naive.memory_attend` (same arguments and returns) at a cost
    of the filled entries: ``out (b, h, n, d)``, ``lse (b, h, n)`` (float32, float64 for float64
    queries) and with ``return_indices`` the indices ``(b, h, n, min(top_k, c))`` best first
    (``-1`` for missing entries, last) — the reference's. No gradients. ``cache``: a
    :class:`ReadCache` of this memory (its filled entries are then gathered once per change of
    the memory, not per read; the result is the same)."""
    if q.device.type != "cpu" or table.keys.device.type != "cpu":
        raise ValueError(f"memory_attend_compact reads CPU tensors; q is on {q.device}, the memory on {table.keys.device}")
    b, h, n, d = q.shape
    kk = min(top_k, table.capacity)
    sc = 1.0 / math.sqrt(d) if scale is None else float(scale)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    n_bits = hasher.n_bits
    entries = cache.get(table, n_bits, acc) if cache is not None else filled_entries(table, n_bits, acc)
    qf = q.reshape(b * h, n, d).to(acc)
    q_signs = _query_signs(q, hasher, q_sig).reshape(b * h, n, n_bits)
    out = torch.zeros(b * h, n, d, dtype=acc)
    lse = torch.full((b * h, n), float("-inf"), dtype=acc if acc == torch.float64 else torch.float32)
    idx = torch.full((b * h, n, kk), -1, dtype=torch.int64) if return_indices else None
    memo = cache.memo if cache is not None else None
    codes = SelectionMemo.codes(q_signs) if memo is not None else None  # b·h lists of n ints
    sels = {}  # head -> the top-kk ranks among its filled entries (positions in `filled`)
    for i, e in enumerate(entries):
        if e is None:
            continue
        f = e.filled.numel()
        if f <= kk:  # every filled entry is selected: dense over them
            out[i], lse[i] = _dense_read(qf[i], e.keys, e.vals, e.bias, sc)
            if return_indices:
                idx[i, :, :f] = _take(e.filled, _top(q_signs[i], e.k_signs, e.tie, f, True))
            continue
        sels[i] = sel = (memo.select(i, codes[i] if codes is not None else None, q_signs[i], e, kk, return_indices)
                         if memo is not None else _top(q_signs[i], e.k_signs, e.tie, kk, return_indices))
        if return_indices:
            idx[i] = _take(e.filled, sel)
    _read_selected(entries, sels, qf, out, lse, sc)
    res = out.view(b, h, n, d).to(q.dtype), lse.view(b, h, n)
    return (*res, idx.view(b, h, n, kk)) if return_indices else res
