"""Launchers, autograd Function and public functions of the hashed-memory kernels.

Letters: b batch, h heads, r = b·h memory rows, t tokens written, n queries, u buckets,
s slots, c = u·s entries, d head_dim, w signature words, k top_k.

Each public function takes the memory's tensors (a :class:`~vidhash.ops.checks.MemoryTable`,
updated in place), its hasher and routing numbers — the arguments of its reference of the same
name in ``naive.py``:

* :func:`memory_write_fifo` — the FIFO write (three launches: signature + bucket, rank + slot,
  scatter + write counters).
* :func:`memory_write_merge` — the merge write with a SimHash hasher (two launches: signature +
  bucket, then one program per (bucket, row) applying its tokens in order; no host sync). A
  LearnedHash hasher stays on the reference path (the kernel cannot recompute a merged key's
  MLP signature).
* :func:`memory_select` — per query, the ``k`` entries the reference read keeps, int32
  ``(b, h, n, k)`` in entry order, ``-1`` where fewer than ``k`` entries exist.
* :func:`memory_select_levels` — the same indices by counts per similarity level and one emit
  pass (no candidate lists; ``memory_attend(select="levels")``, kernels/memory/NOTES.md).
* :func:`memory_attend` — the read: ``(out, lse)`` with gradients to ``q``
  (``return_indices=True`` adds the indices in the reference's order).

The query signatures come from the signature kernel; where a query's projection is within
float rounding of 0 its bit may differ from the reference's, and so may its selection (pass
``q_sig`` to :func:`memory_select` to use given signatures).
"""
from __future__ import annotations

import math

import torch
import triton

from vidhash.hashing import SimHash, popcount
from vidhash.kernels.signature.ops import check_device, interpreting, signatures_and_buckets, signatures_triton
from vidhash.ops.checks import MemoryTable

from .kernel import (
    attend_bwd_kernel,
    attend_fwd_kernel,
    block_count_kernel,
    candidates_kernel,
    candidates_kernel_tuned,
    compact_bits_kernel,
    fifo_rank_kernel,
    fifo_scatter_kernel,
    level_count_kernel,
    level_emit_kernel,
    level_expand_kernel,
    merge_write_kernel,
    query_operand_kernel,
    select_kernel,
)

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MERGE_DTYPES = SUPPORTED_DTYPES + (torch.float64,)  # the merge write accumulates in float64 for float64 memories
PROBE_MAX_K = 256  # larger top_k: no probe, every query scans all entries in the select kernel
GROUP = 16  # entries per candidate group on the GPU (a chunk of BC entries holds BC // GROUP)
SELECTS = ("candidates", "levels")  # memory_attend(select=...): the two selection paths (same result)
LEVEL_MAX_BITS = 125  # the levels select counts levels in byte lanes of int32s: similarities up to 125
LEVEL_STEPS = ("prepare", "window", "count", "emit")  # memory_select_levels(_until=...): benchmarks time its steps


def _rows(table: MemoryTable):
    """The table's tensors as ``(r, c, ...)`` / ``(r, u)`` views (no copies)."""
    if not isinstance(table, MemoryTable):
        raise ValueError(f"the memory kernels take a MemoryTable (HashedMemory.table), got {type(table).__name__}")
    b, h, u, s, d = table.keys.shape
    r, c = b * h, u * s
    if not all(t.is_contiguous() for t in table):
        raise ValueError("the memory's tensors must be contiguous for the Triton kernels")
    return (
        table.keys.view(r, c, d), table.values.view(r, c, d), table.signatures.view(r, c, -1),
        table.frames.view(r, c), table.counts.view(r, c), table.bucket_writes.view(r, u),
    )


def check_dtypes(table: MemoryTable, *tensors: torch.Tensor) -> None:
    for t in (table.keys, *tensors):
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"the memory kernels support {SUPPORTED_DTYPES}, got {t.dtype} (use backend='reference')")


# --------------------------------------------------------------------------------------------
# write
# --------------------------------------------------------------------------------------------
def _check_write(table: MemoryTable, k: torch.Tensor, v: torch.Tensor) -> None:
    b, h, _, _, d = table.keys.shape
    if k.ndim != 4 or tuple(v.shape) != tuple(k.shape) or (k.shape[0], k.shape[1], k.shape[3]) != (b, h, d):
        raise ValueError(f"k and v must be (batch={b}, heads={h}, t, head_dim={d}), got {tuple(k.shape)} and {tuple(v.shape)}")


@torch.no_grad()
def memory_write_fifo(table: MemoryTable, k: torch.Tensor, v: torch.Tensor, frames: torch.Tensor, *,
                      hasher, route_bits: int, route_key: int) -> None:
    """Store ``k, v (b, h, t, d)`` from ``frames`` (int64 ``(t,)``) as ``naive.memory_write_fifo``
    does: ring buffers per bucket, tokens of one write in token order. ``hasher`` (SimHash or
    LearnedHash) signs the keys; the first ``route_bits`` bits, hashed with ``route_key``, pick
    the bucket."""
    check_device(k, v)
    check_dtypes(table, k, v)
    _check_write(table, k, v)
    b, h, t, d = k.shape
    if t == 0:
        return
    keys, values, sigs, mframes, counts, writes = _rows(table)
    u, s, r = table.num_buckets, table.slots, b * h
    sig, bucket = signatures_and_buckets(k, hasher, route_bits, u, route_key)
    rank = torch.empty(r, t, dtype=torch.int32, device=k.device)
    total = torch.empty_like(rank)
    entry = torch.empty(r, t, dtype=torch.int64, device=k.device)
    frames = frames.to(device=k.device, dtype=torch.int64).contiguous()
    bt = 32 if interpreting() else 64
    grid = (triton.cdiv(t, bt), r)
    fifo_rank_kernel[grid](bucket, writes, rank, total, entry, t, u, s,
                           BLOCK_T=bt, BLOCK_J=bt if interpreting() else 128, num_warps=4)
    fifo_scatter_kernel[grid](
        k, v, sig, bucket, rank, total, entry, frames,
        keys, values, sigs, mframes, counts, writes,
        h, t, u, s, d,
        *k.stride(), *v.stride(),
        NW=sig.shape[-1], BLOCK_T=bt, BLOCK_D=max(16, triton.next_power_of_2(d)), num_warps=4,
    )


@torch.no_grad()
def memory_write_merge(table: MemoryTable, k: torch.Tensor, v: torch.Tensor, frames: torch.Tensor, *,
                       hasher, route_bits: int, route_key: int) -> None:
    """Store ``k, v (b, h, t, d)`` from ``frames`` (int64 ``(t,)``) as ``naive.memory_write_merge``
    does: a bucket fills in order, then each token merges into its most similar entry (running
    mean of key and value in float32 — float64 for float64 memories —, signature of the merged
    key, newest frame, count + 1); tokens of one bucket in token order.

    Two launches, no host sync: the signature kernel (each token's signature and bucket), then
    :func:`~vidhash.kernels.memory.kernel.merge_write_kernel`, one program per (bucket, b·h
    row). Keys, values, counts, frames and write counters equal the reference's bit for bit
    (same operations in the same order, no FMA contraction, IEEE division); signatures too,
    except where a projection (of a token or of a merged key) is within float rounding of 0 —
    the kernel sums ``d`` products in another order than torch's matmul — and such a bit can
    then change later slot choices of that bucket. SimHash only: a LearnedHash's merged-key
    signature needs its MLP (ValueError; ``HashedMemory.write(backend="auto")`` uses the
    reference then)."""
    if not isinstance(hasher, SimHash):
        raise ValueError(
            f"memory_write_merge recomputes merged keys' signatures in the kernel for SimHash only, the memory's hasher "
            f"is {type(hasher).__name__} (use backend='reference' or 'auto')"
        )
    check_device(k, v)
    for t_ in (table.keys, k, v):
        if t_.dtype not in MERGE_DTYPES:
            raise ValueError(f"the merge write kernel supports {MERGE_DTYPES}, got {t_.dtype} (use backend='reference')")
    _check_write(table, k, v)
    b, h, t, d = k.shape
    if t == 0:
        return
    keys, values, sigs, mframes, counts, writes = _rows(table)
    u, s = table.num_buckets, table.slots
    sig, bucket = signatures_and_buckets(k, hasher, route_bits, u, route_key)
    planes = hasher.planes.to(device=k.device, dtype=torch.float32).contiguous()
    per_head = hasher.heads is not None and hasher.heads > 1
    if per_head and planes.shape[0] != h:
        raise ValueError(f"the hasher has {planes.shape[0]} heads, the input {h}")
    frames = frames.to(device=k.device, dtype=torch.int64).contiguous()
    nw = sig.shape[-1]
    block_d = max(16, triton.next_power_of_2(d))
    block_t = min(32 if interpreting() else 256, max(16, triton.next_power_of_2(t)))
    block_s = max(16, triton.next_power_of_2(s))  # ≥ 16: the merged keys' projection is a tl.dot
    merge_write_kernel[(u, b * h)](
        k, v, sig, bucket, frames, planes,
        keys, values, sigs, mframes, counts, writes,
        h, t, u, s, d, hasher.n_bits, planes.stride(0) if per_head else 0,
        *k.stride(), *v.stride(),
        NW=nw, NWP=triton.next_power_of_2(nw), BLOCK_S=block_s, BLOCK_D=block_d,
        BLOCK_T=block_t, ACC_F64=table.keys.dtype == torch.float64,
        # (s × d) key and value tiles, their merged copies and the planes live in registers: ptxas for
        # sm_90 at s=16, d=64: 4 warps 202 registers (fp32: 255 + 208 B spilled), 8 warps 111-116, no spills
        num_warps=8 if block_s * block_d >= 1024 else 4,
        enable_fp_fusion=False,  # (old·cnt + x) rounds the product, then the sum, as torch does
    )


# --------------------------------------------------------------------------------------------
# read
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def memory_select(table: MemoryTable, q: torch.Tensor, top_k: int, *, hasher, q_sig: torch.Tensor | None = None,
                  probe_stride: int = 2, cap: int | None = None, probe_top2: bool = True,
                  _candidates_only: bool = False):
    """Indices (int32 ``(b, h, n, min(top_k, c))``, entry order, ``-1`` padded) of the entries
    ``naive.memory_attend`` keeps for each query: highest Hamming similarity, ties to the
    lower entry, empty entries never. ``q_sig``: the queries' signatures (default: the signature
    kernel's of ``hasher``, whose ``n_bits`` the table's signatures have).

    ``_candidates_only`` (benchmarks) stops after the candidates kernel and returns its
    ``(chunk ids, counts)`` per query row instead of the indices.

    ``probe_stride`` (≥ 1), ``cap`` (candidate chunks and groups kept per query before it
    falls back to scanning every entry) and ``probe_top2`` (the probe keeps the best two entries
    per column partition, for a tighter bound once top_k nears the partition count) change the
    speed, never the result.
    """
    check_device(q)
    b, h, n, d = q.shape
    c, n_bits = table.capacity, hasher.n_bits
    kk = min(int(top_k), c)
    if q_sig is None:
        q_sig = signatures_triton(q, hasher, role="query")
    q_sig = q_sig.contiguous()
    _, _, sigs, _, counts, _ = _rows(table)
    nw = sigs.shape[-1]
    rows = b * h * n
    idx = torch.empty(b, h, n, kk, dtype=torch.int32, device=q.device)
    if rows == 0:
        return idx
    probe = kk <= PROBE_MAX_K
    if interpreting():  # tiny tiles: the interpreter's cost grows with the tile
        bc, gpc, bq, bl, bi = (max(16, triton.next_power_of_2(kk)) if probe else 16), 4, 16, 32, 4
    else:
        bc = max(128, triton.next_power_of_2(kk)) if probe else 128
        gpc, bq, bl, bi = bc // GROUP, None, 256, 64
    group = bc // gpc
    chunks, groups = triton.cdiv(c, bc), triton.cdiv(c, group)
    if chunks > 1 << 15:
        raise ValueError(f"the memory read kernel handles at most {(1 << 15) * bc} entries per head, this memory has {c}")
    if cap is None:
        cap = max(512, 4 * kk)
    cap_items, cap_groups = max(1, min(int(cap), chunks)), max(1, min(int(cap), groups))
    cand = torch.empty(rows, cap_items, dtype=torch.int32, device=q.device)  # candidate chunks
    ncand = torch.empty(rows, dtype=torch.int32, device=q.device)
    grp = torch.empty(rows, cap_groups, dtype=torch.int32, device=q.device)  # candidate groups
    nwp = triton.next_power_of_2(nw)
    args = (q_sig, sigs, counts, cand, ncand, n, c, n_bits, kk, cap_items)
    consts = dict(NW=nw, NWP=nwp, BC=bc, GPC=gpc, PROBE=probe, PROBE_STRIDE=probe_stride, USE_POPC=not interpreting(),
                  PROBE_TOP2=bool(probe and probe_top2 and 4 * kk >= bc))
    if bq is not None:
        candidates_kernel[(triton.cdiv(n, bq), b * h)](*args, BQ=bq, **consts)
    else:
        grid = lambda meta: (triton.cdiv(n, meta["BQ"]), b * h)  # noqa: E731
        candidates_kernel_tuned[grid](*args, **consts)
    if _candidates_only:  # benchmarks: time the first stage alone, and see how many chunks survive it
        return cand, ncand
    select_kernel[(rows,)](q_sig, sigs, counts, cand, ncand, grp, idx, n, c, n_bits, kk, cap_items, cap_groups,
                           NW=nw, GPC=gpc, G=group, BI=bi, BL=bl,
                           NBINS=max(2, triton.next_power_of_2(n_bits + 1)),
                           USE_POPC=not interpreting(), num_warps=4)
    return idx


def _closing_passes(n_bits: int, levels_per_pass: int) -> int:
    """Counting passes that close any bracket of threshold levels (``n_bits + 1`` open at most):
    a pass over ``s`` open levels leaves ``ceil(s / levels_per_pass) − 1``."""
    s, passes = n_bits + 1, 0
    while s > 0:
        s, passes = -(-s // levels_per_pass) - 1, passes + 1
    return passes


def _level_passes(probe_stride: int, n_bits: int) -> tuple[list[tuple[int, int, bool, bool]], int]:
    """The counting passes of the levels select as ``(registers of 3 levels, sample stride,
    window, closing)``, and the index of the window pass: a coarse probe over every ``4·probe_stride``-th
    filled entry (12 levels spread over the bracket), a finer one over every ``probe_stride``-th
    (12 levels around the first's estimate), the window pass (6 levels around the second's),
    then passes that split what is still open 9 ways until every bracket of ``n_bits + 1``
    levels would be closed (two for 32 bits). ``probe_stride=0``: only the splitting passes."""
    closing = [(3, 1, False, True)] * _closing_passes(n_bits, 9)
    if not probe_stride:
        return [(3, 1, False, False)] + closing[1:], 0
    return [(4, 4 * probe_stride, False, False), (4, probe_stride, True, False), (2, 1, True, False)] + closing, 2


def _level_ranges(q: torch.Tensor, programs: int, c: int, bc: int, ranges: int | None) -> int:
    """Entry ranges per (query tile, row) for the levels select's passes: given, or on a GPU
    enough to put two programs on every SM (at least 4 chunks of ``bc`` entries per range) —
    1 at the bench shape (384 tiles), ~22 for 256 queries × 3 heads."""
    if ranges is not None:
        if not isinstance(ranges, int) or isinstance(ranges, bool) or ranges < 1:
            raise ValueError(f"ranges must be a positive int or None, got {ranges!r}")
        return ranges
    if q.device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    return max(1, min(triton.cdiv(2 * sms, max(1, programs)), triton.cdiv(c, 4 * bc)))


def _closing_ranges(q: torch.Tensor, programs: int, c: int, bc: int, ranges: int) -> int:
    """Entry ranges of the two closing passes, which count only for the few tiles the window pass
    left open. Finer splits shorten such a tile's scan (one program over all 410 chunks of the
    bench's row took 0.2 ms a pass on the H200), but every program of a closed tile still starts
    to find out that it has nothing to do (127 registers: 3 CTAs per SM) — 16 ranges cost 37 µs a
    pass of such empty programs at the bench shape (Nsight Compute, H100, 2026-12-05, every query
    closed). So on a GPU at least four waves' worth of programs (4 · 3 · SMs: 5 ranges at the bench's
    384 tiles on 132 SMs, 4.8 waves: ≈ 12 µs empty, ≈ 50 µs with a tile open — about as 16 ranges
    then), at most 16, but never fewer than the other passes' ``ranges`` (22 at the generation
    shape). Elsewhere (the interpreter) up to 16, so the tests split the closing passes finely."""
    cap = min(16, triton.cdiv(c, 4 * bc))
    if q.device.type == "cuda":
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count
        cap = min(cap, triton.cdiv(4 * 3 * sms, max(1, programs)))
    return max(ranges, cap)


def _level_operands(sigs, counts, q_sig, n_bits: int, kp: int):
    """The scoring operands of the levels select: each row's filled entries packed to the front
    (entry order) as int8 bits ``(r, c, kp)``, with their signatures ``(r, c, w)`` and entry ids
    ``(r, c)``, and the number of filled entries per row ``(r,)``; the queries as int8 ``±1``
    ``(rows, kp)`` with ``n_bits − |q|`` per query. Positions: filled entries per block of
    ``be`` (a kernel), their running sum over the blocks (a short ``cumsum``), the rest in the
    block (``tl.cumsum``)."""
    r, c, nw = sigs.shape
    rows, dev, interp = q_sig.numel() // nw, sigs.device, interpreting()
    be = 32 if interp else 256
    nb = triton.cdiv(c, be)
    blk = torch.empty(r, nb, dtype=torch.int32, device=dev)
    block_count_kernel[(nb, r)](counts, blk, c, nb, BE=be, num_warps=4)
    incl = torch.cumsum(blk, dim=1, dtype=torch.int32)
    bits = torch.empty(r, c, kp, dtype=torch.int8, device=dev)
    sigc = torch.empty(r, c, nw, dtype=torch.int32, device=dev)
    emap = torch.empty(r, c, dtype=torch.int32, device=dev)
    nv = torch.empty(r, dtype=torch.int32, device=dev)
    compact_bits_kernel[(nb, r)](sigs, counts, incl, bits, emap, sigc, nv, c, nb, n_bits, NW=nw, KP=kp, BE=be, num_warps=4)
    qa = torch.empty(rows, kp, dtype=torch.int8, device=dev)
    off = torch.empty(rows, dtype=torch.int32, device=dev)
    query_operand_kernel[(triton.cdiv(rows, 64),)](q_sig, qa, off, rows, n_bits, NW=nw, KP=kp, BR=64, num_warps=4)
    return bits, sigc, emap, nv, qa, off


@torch.no_grad()
def memory_select_levels(table: MemoryTable, q: torch.Tensor, top_k: int, *, hasher, q_sig: torch.Tensor | None = None,
                         probe_stride: int = 8, ranges: int | None = None, _state: bool = False,
                         _until: str | None = None):
    """:func:`memory_select` by counts per similarity level (``select="levels"``): the same indices
    (int32 ``(b, h, n, min(top_k, c))``, entry order, ``-1`` padded), no candidate lists.

    1. The filled entries of each row, in entry order, packed to the front as int8 bits
       (:func:`~vidhash.kernels.memory.kernel.compact_bits_kernel`): every later pass costs the
       filled entries only; the queries as ``±1`` int8 (``query_operand_kernel``).
    2. Per query, the threshold level ``T`` (similarity of its ``top_k``-th entry) and how many
       entries lie above it, from exact counts of the entries at or above a few levels per pass
       (:func:`~vidhash.kernels.memory.kernel.level_count_kernel`: scores on the int8 tensor
       cores, 3 levels per int32 compare-and-sum). A coarse probe over every
       ``4·probe_stride``-th filled entry and a finer one over every ``probe_stride``-th estimate
       ``T``; one pass over every entry counts the 6 levels around the estimate, which closes
       ``T`` unless the estimate was off by more than 2; passes that split what is still open
       follow (a tile whose queries are all closed returns at once). ``probe_stride=0``: no
       probe, coarse-to-fine passes over every entry (two for 32 bits). Each pass runs over
       ``ranges`` ranges of the filled entries per query tile (default: enough programs for the
       GPU — one range at the bench shape, ~22 for 256 queries × 3 heads); its counts per range
       are summed by the next pass, which applies them to the state first.
    3. One emit pass (:func:`~vidhash.kernels.memory.kernel.level_emit_kernel`): per query and
       entry range, the words of consecutive filled entries whose best score is above ``T``, and
       the range's first words whose best is ``T`` (at most ``top_k`` words per range).
    4. Per query, the entries of those words scored exactly: above ``T``, then the lowest entries
       at ``T``, in entry order (:func:`~vidhash.kernels.memory.kernel.level_expand_kernel`).

    ``probe_stride`` and ``ranges`` change the speed, never the result. ``_state`` (tests, benchmarks) also
    returns the per-query ``(lo, hi, above, words)``, where ``lo == hi == T``; ``_until``
    (benchmarks: ``"prepare"``, ``"window"`` — after the probes and the window pass —, ``"count"``,
    ``"emit"``) stops after that step and returns that state."""
    check_device(q)
    b, h, n, d = q.shape
    c, n_bits = table.capacity, hasher.n_bits
    if n_bits > LEVEL_MAX_BITS:
        raise ValueError(f"select='levels' counts similarities of at most {LEVEL_MAX_BITS} bits, the memory has n_bits={n_bits}")
    if not isinstance(probe_stride, int) or probe_stride < 0:
        raise ValueError(f"probe_stride must be an int ≥ 0 (0 = no probe), got {probe_stride!r}")
    kk = min(int(top_k), c)
    if q_sig is None:
        q_sig = signatures_triton(q, hasher, role="query")
    q_sig = q_sig.contiguous()
    _, _, sigs, _, counts, _ = _rows(table)
    nw, r = sigs.shape[-1], b * h
    rows = r * n
    idx = torch.empty(b, h, n, kk, dtype=torch.int32, device=q.device)
    if rows == 0 or kk == 0:
        none = torch.zeros(rows, dtype=torch.int32, device=q.device)
        return (idx, none, none, none, none) if _state else idx
    if _until is not None and _until not in LEVEL_STEPS:
        raise ValueError(f"_until must be one of {LEVEL_STEPS} or None, got {_until!r}")
    interp = interpreting()
    bq, bc = (16, 16) if interp else (64, 128)
    # 1. filled entries packed to the front as int8 bits, queries as ±1 int8 (the dot's K: a power of two ≥ 32)
    kp = max(32, triton.next_power_of_2(n_bits))
    bits, sigc, emap, nv, qa, off = _level_operands(sigs, counts, q_sig, n_bits, kp)
    none = torch.zeros(rows, dtype=torch.int32, device=q.device) if _until else None
    if _until == "prepare":
        return none, none, none, none
    # 2. threshold level per query: the counting passes (pass p settles pass p − 1 and stores st[p])
    ranges = _level_ranges(q, triton.cdiv(n, bq) * r, c, bc, ranges)
    closing_ranges = _closing_ranges(q, triton.cdiv(n, bq) * r, c, bc, ranges)
    passes, window_pass = _level_passes(probe_stride, n_bits)
    spans = [closing_ranges if closing else ranges for *_, closing in passes]
    rmax = max(spans)
    st = torch.empty(len(passes) + 1, 4, rows, dtype=torch.int32, device=q.device)  # lo, hi, above, est
    part = torch.empty(2, rmax, rows, 16, dtype=torch.int32, device=q.device)  # a pass's counts per range
    tiles = (triton.cdiv(n, bq), r)
    args = (qa, off, bits, nv, st, part)
    consts = dict(KP=kp, BQ=bq, BC=bc, num_warps=4, num_stages=1 if interp else 3)

    def prev_of(p):  # what pass p settles: the constants and ranges of pass p - 1
        nreg, sample, window, _ = passes[p - 1] if p else (1, 1, False, False)
        return dict(PNREG=nreg, PSAMPLE=sample, PWINDOW=window), spans[p - 1] if p else 1

    def settle(p):  # the state after pass p - 1, as st[p] (benchmarks' step timings)
        pc, pr = prev_of(p)
        level_count_kernel[tiles + (1,)](*args, p, n, c, n_bits, kk, 1, pr, rmax, rows, NREG=1, SAMPLE=1, WINDOW=False,
                                         FIRST=False, COUNT=False, **pc, **consts)
        return (*st[p, :3], none)

    for p, (nreg, sample, window, _) in enumerate(passes):
        pc, pr = prev_of(p)
        level_count_kernel[tiles + (spans[p],)](*args, p, n, c, n_bits, kk, spans[p], pr, rmax, rows, NREG=nreg,
                                                SAMPLE=sample, WINDOW=window, FIRST=p == 0, **pc, **consts)
        if _until == "window" and p == window_pass:
            return settle(p + 1)
    if _until == "count":
        return settle(len(passes))
    # 3. emit: the words holding each query's selection, per entry range (settles the last pass: st[-1])
    g = bc // 8  # a word: half the entries one thread holds in the tensor cores' accumulator layout
    words = torch.empty(rows * ranges, kk, dtype=torch.int32, device=q.device)
    nitems = torch.empty(rows * ranges, dtype=torch.int32, device=q.device)
    pc, pr = prev_of(len(passes))
    level_emit_kernel[tiles + (ranges,)](*args, len(passes), words, nitems, n, c, n_bits, kk, ranges, pr, rmax, rows,
                                         KP=kp, BQ=bq, BC=bc, USE_POPC=not interp, **pc, num_warps=4,
                                         num_stages=1 if interp else 3)
    lo, hi, above, _ = st[-1]
    if _until == "emit":
        return lo, hi, above, nitems.view(rows, ranges).sum(1)
    # 4. their entries, exactly
    level_expand_kernel[(rows,)](q_sig, sigc, emap, nv, st[-1], words, nitems, idx, n, c, n_bits, kk, ranges,
                                 NW=nw, G=g, BW=4 if interp else 16, USE_POPC=not interp, num_warps=1 if not interp else 4)
    return (idx, lo, hi, above, nitems.view(rows, ranges).sum(1)) if _state else idx


def _attend_launch(kernel, q, keys, values, counts, idx, scale, *extra):
    b, h, n, d = q.shape
    c = keys.shape[1]
    kk = idx.shape[-1]
    kernel[(b * h * n,)](
        q, keys, values, counts, idx, *extra,
        h, n, c, d, kk, scale, *q.stride(),
        BJ=16 if interpreting() else 64, BD=max(16, triton.next_power_of_2(d)), num_warps=4,
    )


class _MemoryAttend(torch.autograd.Function):
    """Exact attention of ``q`` over the entries ``idx`` (gradients to ``q`` only)."""

    @staticmethod
    def forward(ctx, q, keys, values, counts, idx, scale):
        b, h, n, d = q.shape
        out = torch.empty(b, h, n, d, dtype=q.dtype, device=q.device)
        lse = torch.empty(b, h, n, dtype=torch.float32, device=q.device)
        _attend_launch(attend_fwd_kernel, q, keys, values, counts, idx, scale, out, lse)
        ctx.save_for_backward(q, keys, values, counts, idx, lse)
        ctx.scale = scale
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, keys, values, counts, idx, lse = ctx.saved_tensors
        b, h, n, d = q.shape
        dout = torch.zeros(b, h, n, d, dtype=torch.float32, device=q.device) if dout is None else dout.contiguous()
        dlse = torch.zeros(b, h, n, dtype=torch.float32, device=q.device) if dlse is None else dlse.contiguous()
        dq = torch.empty(b, h, n, d, dtype=q.dtype, device=q.device)
        _attend_launch(attend_bwd_kernel, q, keys, values, counts, idx, ctx.scale, lse, dout, dlse, dq)
        return dq, None, None, None, None, None


def _reference_order(table: MemoryTable, n_bits: int, q_sig: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``idx`` (entry order) reordered as the reference returns it: by similarity, then entry;
    int64, ``-1`` for missing entries last."""
    b, h, n, kk = idx.shape
    c = table.capacity
    sigs = table.signatures.view(b, h, c, -1)
    ok = idx >= 0
    safe = idx.clamp(min=0).long()
    sel = torch.gather(sigs, 2, safe.reshape(b, h, n * kk, 1).expand(-1, -1, -1, sigs.shape[-1])).reshape(b, h, n, kk, -1)
    sim = n_bits - popcount(torch.bitwise_xor(sel, q_sig.unsqueeze(-2))).sum(-1).long()
    rank = torch.where(ok, sim * (c + 1) + (c - safe), -1)
    order = rank.argsort(dim=-1, descending=True, stable=True)
    out = safe.gather(-1, order)
    return torch.where(rank.gather(-1, order) >= 0, out, -1)


def memory_attend(table: MemoryTable, q: torch.Tensor, top_k: int, *, hasher, scale: float | None = None,
                  return_indices: bool = False, q_sig: torch.Tensor | None = None, select: str = "candidates"):
    """``naive.memory_attend`` with the kernels: ``(out (b, h, n, d), lse (b, h, n))`` in
    float32 lse, gradients to ``q``; ``return_indices`` adds int64 ``(b, h, n, k)``. ``select``:
    ``"candidates"`` (:func:`memory_select`) or ``"levels"`` (:func:`memory_select_levels`) —
    the same entries, by two kernels."""
    if select not in SELECTS:
        raise ValueError(f"select must be one of {SELECTS}, got {select!r}")
    check_device(q)
    check_dtypes(table, q)
    b, h, n, d = q.shape
    if q_sig is None:
        q_sig = signatures_triton(q, hasher, role="query")
    pick = memory_select_levels if select == "levels" else memory_select
    idx = pick(table, q, top_k, hasher=hasher, q_sig=q_sig)
    keys, values, _, _, counts, _ = _rows(table)
    sc = 1.0 / math.sqrt(d) if scale is None else float(scale)
    out, lse = _MemoryAttend.apply(q, keys, values, counts, idx, sc)
    if return_indices:
        return out, lse, _reference_order(table, hasher.n_bits, q_sig, idx)
    return out, lse
