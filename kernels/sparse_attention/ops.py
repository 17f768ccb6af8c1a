"""Launchers, autograd Function and public functions for block-sparse flash attention.

Letters: b batch, h heads, c query blocks, j key blocks, d head_dim, e value dim.

* :func:`block_sparse_attention_triton` — :func:`naive.block_sparse_attention` on the Triton
  kernels (forward and backward).
* :func:`hash_attention_triton` — selection kernel + sparse attention, the fast path behind
  ``vidhash.attention.hash_attention(..., backend="triton")``.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
from triton.runtime.errors import OutOfResources
from triton.tools.tensor_descriptor import TensorDescriptor

from vidhash.kernels.block_select.ops import select_blocks_triton
from vidhash.ops.checks import BlockSelection, check_qkv, check_selection, resolve_scale

from .kernel import (
    _INTERPRET,
    default_config,
    sparse_attn_bwd_delta_kernel,
    sparse_attn_bwd_dkdv_kernel,
    sparse_attn_bwd_dkdv_sub_kernel,
    sparse_attn_bwd_dq_kernel,
    sparse_attn_fwd_kernel,
)
from .kernel_tma import sparse_attn_bwd_dkdv_tma_kernel, sparse_attn_bwd_dq_tma_kernel, sparse_attn_fwd_tma_kernel

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------
def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection) -> None:
    check_qkv(q, k, v)
    b, h, nq, d = q.shape
    e = v.shape[-1]
    if v.shape[:2] != q.shape[:2]:
        raise ValueError(f"v has (batch, heads) {tuple(v.shape[:2])}, q has {(b, h)}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the Triton kernels take {[str(t) for t in SUPPORTED_DTYPES]}, got {q.dtype}")
    if d not in SUPPORTED_HEAD_DIMS or e not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"the Triton kernels take head_dim in {SUPPORTED_HEAD_DIMS} for q/k and v, got {d} and {e}")
    check_selection(selection, q, k)
    idx = selection.indices
    if idx.dtype != torch.int32:
        raise ValueError(f"the Triton kernels take int32 selection.indices, got {idx.dtype}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.shape[-2] * t.stride(-2) >= 2**31:
            raise ValueError(f"{name} is too long for 32-bit offsets: {t.shape[-2]} tokens × stride {t.stride(-2)}")


def autotuning() -> bool:
    """Autotune the attention kernels (bounded lists in kernel.py) unless ``VIDHASH_AUTOTUNE=0``
    or under the interpreter, where one default config runs."""
    return not _INTERPRET and os.environ.get("VIDHASH_AUTOTUNE", "1") != "0"


def _launch(kernel, grid, *args, **meta):
    """Launch a pointer kernel: autotuned (a config whose tiles overflow shared memory is timed as
    infinite there, never picked), or one config (``VIDHASH_AUTOTUNE=0``, the interpreter): the
    default, with one stage fewer at a time while its tiles do not fit. Triton raises
    ``OutOfResources`` before the launch, so a retry runs on untouched buffers. (H100, 2026-12-06:
    the dq kernel's default at float32, d 64, value dim 128, key tiles of 128, 3 stages asked for
    237,568 B of 232,448; 2 stages take 139,264 — ptxas's counts, ``kernels/sass.py``.)"""
    if autotuning():
        return kernel[grid](*args, **meta)
    with_block_n = "BLOCK_N" in kernel.configs[0].kwargs
    cfg = default_config(meta.get("BK_PAD", 1), meta["D"], meta["BLOCK_M"], with_block_n, bool(meta.get("CAUSAL", False)))
    if not with_block_n and all(c.num_warps != cfg.num_warps for c in kernel.configs):
        cfg = kernel.configs[0]  # a kernel kept to some warp counts (the per-block dk/dv: _sub_configs)
    return _fewer_stages_until_it_fits(kernel.fn[grid], args, meta, cfg.all_kwargs())


def _fewer_stages_until_it_fits(launch, args, meta, kwargs):
    """``launch(*args, **meta, **kwargs)``, with one stage fewer at a time while Triton raises
    ``OutOfResources`` (raised before the launch, so a retry runs on untouched buffers)."""
    while True:
        try:
            return launch(*args, **meta, **kwargs)
        except OutOfResources:
            if kwargs.get("num_stages", 1) <= 1:
                raise
            kwargs = {**kwargs, "num_stages": kwargs["num_stages"] - 1}


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels take any (b, h, n) strides but need unit stride along head_dim."""
    return t if t.stride(-1) == 1 else t.contiguous()


# rows of one dk/dv program: key blocks under 16 tokens are grouped to fill an MMA tile.
# (Grouping 16-token blocks to one 64-row tile measured no gain on an H100: over the union list,
# 2.2 of a group's 4 blocks are kept per listed query block at 1/32, so the q/dO loads fall to 0.45×
# at 1.8× the products — NOTES.md; the per-block kernel, dkdv_sub_group, avoids the extra products.)
DKDV_GROUP_ROWS = 16


def _tile_sizes(selection: BlockSelection) -> tuple[int, int, int, int]:
    """``BQ``, ``BLOCK_M`` (query rows, a power of two ≥ 16), ``BK``, ``BK_PAD`` (power of two)."""
    bq, bk = selection.query_block_size, selection.block_size
    return bq, max(16, triton.next_power_of_2(bq)), bk, triton.next_power_of_2(bk)


def _group(bk_pad: int, rows: int = DKDV_GROUP_ROWS) -> int:
    """Key blocks per dk/dv program (at most 32: one int32 bit mask per list entry)."""
    return max(1, min(32, rows // bk_pad))


def dkdv_sub_group(bk_pad: int, d: int = 64) -> int:
    """Key blocks per program of the per-block dk/dv kernel (``sparse_attn_bwd_dkdv_sub_kernel``:
    q/dO loaded once per (group, query block) pair, products only for the kept blocks), or 0 for
    the grouped-tile kernel. ``VIDHASH_DKDV_SUB``: ``0`` (default) never; ``1`` for key blocks
    padded to tiles of 16 (9–16 tokens) or 32 (17–32) — 4 blocks of 16 a program at head dim
    ``d`` ≤ 64, else 2 (at d 128 four blocks' accumulators spill: 255 registers and 66 spill
    instructions against 188 and none; ``python -m vidhash.kernels.sass dkdv``), 2 blocks of 32 at d ≤ 64, none at d 128; ``2``
    or ``4``: that many a program wherever it applies (at most 64 keys).
    Off by default until a GPU run says it is faster (kernels/sparse_attention/NOTES.md)."""
    flag = os.environ.get("VIDHASH_DKDV_SUB", "0")
    if flag not in ("0", "1", "2", "4"):
        raise ValueError(f"VIDHASH_DKDV_SUB must be 0, 1, 2 or 4, got {flag!r}")
    if flag == "0" or bk_pad not in (16, 32):
        return 0
    most = 64 // bk_pad
    if flag == "1":
        return most if d <= 64 else (2 if bk_pad == 16 else 0)
    return min(int(flag), most)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # bf16/fp16 dots ignore it


def _descriptor_ok(*tensors: torch.Tensor) -> bool:
    """Whether a TMA descriptor takes each tensor: unit last stride, 16-byte aligned base and strides."""
    for t in tensors:
        size = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(st * size % 16 for st in t.stride()[:-1]):
            return False
    return True


def _descriptors(selection: BlockSelection, **tensors: torch.Tensor) -> list:
    """Host descriptors over ``(b, h, n, ·)`` tensors: one query block (``q``, ``do``) or one key
    block (``k``, ``v``) per load."""
    rows = {"q": selection.query_block_size, "do": selection.query_block_size,
            "k": selection.block_size, "v": selection.block_size}
    return [TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, rows[name], t.shape[-1]])
            for name, t in tensors.items()]


SMEM_LIMIT = 232_448  # bytes of shared memory one program may take on sm_90 (227 KiB)


def _tma_smem(elem: int, bq: int, bk: int, dim: int, backward: bool) -> int:
    """Shared memory of the TMA kernels' first (2-stage) config, the one a launch without the
    autotuner runs: the forward ≈ ``elem · (3·bk + bq) · dim``; the backward the larger of dq (k/v
    tiles double-buffered, ≈ ``elem · (4·bk + 2·bq) · dim``) and dk/dv (q/dO tiles double-buffered,
    ``elem · (2·bk + 4·bq) · dim``). Fitted to ptxas's counts for sm_90 (``kernels/sass.py``): the
    backward within 1 %; the forward an upper bound (196,632 B counted at fp32, bq 32, bk 128, d 128)."""
    if backward:
        return elem * max(4 * bk + 2 * bq, 2 * bk + 4 * bq) * dim
    return elem * (3 * bk + bq) * dim


def _tma_takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection,
               backward: bool = False) -> bool:
    """Whether the TMA forward (``kernel_tma.py``; ``backward``: its dq and dk/dv kernels too) takes
    these inputs: non-causal, key blocks of 64 or 128 tokens, query blocks of a power of two from 16
    to 128, q/k/v a descriptor accepts (unit last stride, 16-byte aligned base and strides), and
    tiles that fit one program's shared memory (:func:`_tma_smem`: only float32 can overflow it —
    at head dim 128 and key blocks of 128 the dq kernel would take 294,920 B)."""
    bq, bk = selection.query_block_size, selection.block_size
    if selection.causal or bk not in (64, 128) or bq not in (16, 32, 64, 128):
        return False
    dim = max(q.shape[-1], v.shape[-1])
    if _tma_smem(q.element_size(), bq, bk, dim, backward) > SMEM_LIMIT:
        return False
    return _descriptor_ok(q, k, v)


def use_tma(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection,
            backward: bool = False) -> bool:
    """The TMA kernels (``kernel_tma.py``) or the pointer kernels: ``VIDHASH_TMA=0`` never, ``=1``
    wherever they take the inputs (the interpreter too: how the CPU tests run them), unset (auto) for
    16-bit inputs on a CUDA device of compute capability ≥ 9 (Hopper) where they take them — forward
    and backward alike (H200, 2026-12-04: fwd+bwd 20.4 → 18.1 ms at N = 131,072 d 64 1/32, 22.9 →
    20.0 ms at wan-mini's training shape; ``scripts/gpu/attention_parts.py --part backward``).
    ``backward``: for the backward's kernels (whose tiles take more shared memory)."""
    flag = os.environ.get("VIDHASH_TMA", "auto")
    if flag == "0" or not _tma_takes(q, k, v, selection, backward):
        return False
    if flag == "1":
        return True
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _major_capability(q.device.index) >= 9


@functools.lru_cache(maxsize=None)
def _major_capability(index: int | None) -> int:
    """The CUDA device's compute capability major (asked once per device: ``use_tma`` runs every launch)."""
    return torch.cuda.get_device_capability(index)[0]


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------
def sparse_attention_forward(q, k, v, selection: BlockSelection, sm_scale: float):
    """Run the forward kernel; returns ``out (b, h, nq, e)`` (q's dtype) and ``lse (b, h, nq)``."""
    b, h, nq, d = q.shape
    nk, e = k.shape[-2], v.shape[-1]
    idx = selection.indices.contiguous()
    bq, block_m, bk, bk_pad = _tile_sizes(selection)
    out = torch.empty(b, h, nq, e, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h, nq, dtype=torch.float32, device=q.device)
    grid = (selection.num_query_blocks, b * h)
    if use_tma(q, k, v, selection):
        descs = _descriptors(selection, q=q, k=k, v=v)
        args = (*descs, idx, out, lse, sm_scale * _LOG2E, *out.stride()[:3], *idx.stride()[:3], h, nq, nk, selection.kept)
        _launch_tma(sparse_attn_fwd_tma_kernel, grid, args, BQ=bq, BK=bk, D=d, E=e, PREC=_precision(q.dtype))
        return out, lse
    _launch(
        sparse_attn_fwd_kernel, grid,
        q, k, v, idx, out, lse,
        sm_scale * _LOG2E,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *idx.stride()[:3],
        h, nq, nk, selection.kept,
        BQ=bq, BLOCK_M=block_m, BK=bk, BK_PAD=bk_pad, D=d, E=e,
        CAUSAL=bool(selection.causal), PREC=_precision(q.dtype),
    )
    return out, lse


def dkdv_order(counts: torch.Tensor) -> torch.Tensor:
    """The order the dk/dv programs start in, given each key block's (group's) query-list length.

    ``VIDHASH_DKDV_ORDER=local`` (default) or ``count``. ``count``: longest lists first (``argsort``
    by descending length), which bounds the tail but scatters the programs running at once over every head and position, so the
    q/dO tiles they re-read rarely hit L2 (31 % on the H100 at N = 131,072, the kernel at 70 % of
    DRAM bandwidth: Nsight Compute, 2026-12-06). ``local``: only the heavy lists (longer than twice
    the mean: sink blocks, blocks every query keeps) first, longest first, then the rest in
    (batch·head, block) order, so neighbouring key blocks, which share most of their query blocks,
    run together: on the H100 at N = 131,072 (d 64, 1/32), forward + backward 17.0–17.3 → 15.3 ms at
    key blocks of 64 and 37.8–39.0 → 35.5–35.7 at 16 (``attention_parts.py --part dkdv-order``).
    Either is a permutation; the gradients do not depend on it (each program owns its
    block). Device ops only: no host sync, so a CUDA graph can capture it."""
    flag = os.environ.get("VIDHASH_DKDV_ORDER", "local")
    if flag not in ("count", "local"):
        raise ValueError(f"VIDHASH_DKDV_ORDER must be count or local, got {flag!r}")
    if flag == "count":
        return torch.argsort(counts, descending=True, stable=True).to(torch.int32)
    c = counts.to(torch.float32)
    key = torch.where(c > 2 * c.mean(), -c, torch.zeros_like(c))
    return torch.argsort(key, stable=True).to(torch.int32)


def transpose_selection(selection: BlockSelection, group: int = 1):
    """Transposed index list for dk/dv: for every (b·h, group of ``group`` consecutive key
    blocks), the query blocks that kept any block of the group.

    Returns ``ptr`` int32 ``(b·h·groups + 1)`` (CSR row starts), ``qlist`` int32 (query blocks,
    ascending per group), ``qbits`` int32 (bit ``i`` set: that query block kept block ``i`` of
    the group) and ``order`` int32 ``(b·h·groups)`` (the order the dk/dv programs start in:
    :func:`dkdv_order`). ``qlist`` and ``qbits`` are as long as the selection has entries
    (``b·h·query blocks·kept``, an upper bound); only ``[ptr[0], ptr[-1])`` is read. One sort on
    the device, then scatters: no ``torch.unique``, no ``bincount``, no host sync (so a CUDA graph
    can capture the backward), no ``query blocks × key blocks`` tensor.
    """
    idx = selection.indices
    b, h, nqb, kept = idx.shape
    ngrp = -(-selection.num_key_blocks // group)
    rows = b * h * ngrp
    if group == 1:
        return _transpose_blocks(idx, rows, ngrp)
    dev = idx.device
    flat = idx.reshape(b * h, nqb * kept).to(torch.int64)
    n = flat.numel()
    bh = torch.arange(b * h, device=dev, dtype=torch.int64).unsqueeze(-1)
    qb = torch.arange(nqb, device=dev, dtype=torch.int64).repeat_interleave(kept)
    grp = torch.div(flat, group, rounding_mode="floor")
    end = rows * nqb  # padding sorts past every (group, query block) key
    key = torch.where(flat >= 0, (bh * ngrp + grp) * nqb + qb, end).flatten()
    bits = torch.where(flat >= 0, torch.bitwise_left_shift(torch.ones_like(flat), flat % group), 0).flatten()
    skey, perm = torch.sort(key)
    valid = skey < end
    first = torch.ones_like(valid)
    first[1:] = skey[1:] != skey[:-1]
    first &= valid
    uid = torch.cumsum(first, 0) - 1  # each sorted entry's place in the list; n: a slot for the rest
    qbits = torch.zeros(n + 1, dtype=torch.int64, device=dev).scatter_add_(0, torch.where(valid, uid, n), bits[perm])
    qlist = torch.zeros(n + 1, dtype=torch.int64, device=dev).scatter_(0, torch.where(first, uid, n), skey % nqb)
    counts = torch.zeros(rows + 1, dtype=torch.int64, device=dev).scatter_add_(
        0, torch.where(first, torch.div(skey, nqb, rounding_mode="floor"), rows), first.to(torch.int64))[:rows]
    ptr = torch.zeros(rows + 1, dtype=torch.int64, device=dev)
    torch.cumsum(counts, 0, out=ptr[1:])
    order = dkdv_order(counts)
    qbits = qbits[:n]
    qbits = torch.where(qbits >= 2**31, qbits - 2**32, qbits).to(torch.int32)  # bit 31 → sign
    return ptr.to(torch.int32), qlist[:n].to(torch.int32), qbits, order


def _transpose_blocks(idx: torch.Tensor, rows: int, nkb: int):
    """``transpose_selection`` with one key block per group: a stable sort of the key-block
    index (a (query block, key block) pair occurs at most once, so no dedupe is needed; padding
    entries sort last, past ``ptr[-1]``)."""
    b, h, nqb, kept = idx.shape
    flat = idx.reshape(b * h, nqb * kept)
    bh = torch.arange(b * h, device=idx.device, dtype=torch.int32).unsqueeze(-1) * nkb
    key = torch.where(flat >= 0, flat + bh, rows).flatten()  # padding sorts last
    _, perm = torch.sort(key, stable=True)
    counts = torch.zeros(rows + 1, dtype=torch.int32, device=idx.device).scatter_add_(
        0, key.to(torch.int64), torch.ones_like(key))[:rows]
    qlist = torch.div(perm % (nqb * kept), kept, rounding_mode="floor").to(torch.int32)
    ptr = torch.zeros(rows + 1, dtype=torch.int32, device=idx.device)
    torch.cumsum(counts, 0, out=ptr[1:])
    return ptr, qlist, torch.ones_like(qlist), dkdv_order(counts)


def sparse_attention_backward(do, q, k, v, out, lse, dlse, selection: BlockSelection, sm_scale: float):
    """dq, dk, dv (the inputs' dtypes); ``dlse`` may be ``None``."""
    b, h, nq, d = q.shape
    nk, e = k.shape[-2], v.shape[-1]
    bq, block_m, bk, bk_pad = _tile_sizes(selection)
    prec = _precision(q.dtype)
    do = _last_dim_contiguous(do)
    delta = torch.empty(b, h, nq, dtype=torch.float32, device=q.device)
    dl = dlse.contiguous().float() if dlse is not None else delta
    sparse_attn_bwd_delta_kernel[(triton.cdiv(nq, 64), b * h)](
        out, do, dl, delta, *out.stride()[:3], *do.stride()[:3], h, nq,
        E=e, HAS_DLSE=dlse is not None, BLOCK_M=64,
    )
    idx = selection.indices.contiguous()
    if use_tma(q, k, v, selection, backward=True) and _descriptor_ok(do):
        dq = torch.empty_like(q)  # the TMA kernels take their outputs' strides apart
        _tma_backward(q, k, v, do, lse, delta, idx, dq, selection, sm_scale, prec)
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        ptr, qlist, _, order = transpose_selection(selection, 1)
        descs = _descriptors(selection, q=q, k=k, v=v, do=do)
        args = (*descs, lse, delta, ptr, qlist, order, dk, dv, sm_scale, sm_scale * _LOG2E, *dk.stride()[:3],
                *dv.stride()[:3], h, nq, nk, selection.num_key_blocks)
        if autotuning():  # QSPLIT is autotuned: each config's pre-hook sets the q/dO descriptors' rows
            sparse_attn_bwd_dkdv_tma_kernel[(order.numel(),)](*args, BQ=bq, BK=bk, D=d, E=e, PREC=prec)
        else:
            split = _dkdv_qsplit(bq)
            for desc in (descs[0], descs[3]):
                desc.block_shape = [1, 1, bq // split, desc.block_shape[-1]]
            _launch_tma(sparse_attn_bwd_dkdv_tma_kernel, (order.numel(),), args, BQ=bq, BK=bk, D=d, E=e, PREC=prec,
                        QSPLIT=split)
        return dq, dk, dv
    # the pointer kernels write each gradient with its input's strides
    (q, dq), (k, dk), (v, dv) = _grad_buffer(q), _grad_buffer(k), _grad_buffer(v)
    _launch(
        sparse_attn_bwd_dq_kernel, (selection.num_query_blocks, b * h),
        q, k, v, idx, do, lse, delta, dq,
        sm_scale, sm_scale * _LOG2E,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *idx.stride()[:3],
        h, nq, nk, selection.kept,
        BQ=bq, BLOCK_M=block_m, BK=bk, BK_PAD=bk_pad, D=d, E=e, CAUSAL=bool(selection.causal), PREC=prec,
    )
    sub = dkdv_sub_group(bk_pad, max(d, e))
    group = sub or _group(bk_pad)
    ptr, qlist, qbits, order = transpose_selection(selection, group)
    _launch(
        sparse_attn_bwd_dkdv_sub_kernel if sub else sparse_attn_bwd_dkdv_kernel, (order.numel(),),
        q, k, v, do, lse, delta, ptr, qlist, qbits, order, dk, dv,
        sm_scale, sm_scale * _LOG2E,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
        h, nq, nk, -(-selection.num_key_blocks // group),
        BQ=bq, BLOCK_M=block_m, BK=bk, BK_SUB=bk_pad, G=group, D=d, E=e, CAUSAL=bool(selection.causal), PREC=prec,
    )
    return dq, dk, dv


def _grad_buffer(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t, an empty tensor with t's strides)`` for a kernel that writes the gradient of ``t`` with
    ``t``'s strides. ``empty_like`` keeps the strides of a dense tensor (any dim order) only: for
    one that is not (a head-dim slice of a fused projection, an expanded batch) the gradient would
    be written out of bounds or over itself, so ``t`` becomes a contiguous copy first."""
    out = torch.empty_like(t)
    if out.stride() == t.stride():
        return t, out
    t = t.contiguous()
    return t, torch.empty_like(t)


def _dkdv_qsplit(bq: int) -> int:
    """Without autotuning (``VIDHASH_AUTOTUNE=0``, the interpreter): the TMA dk/dv kernel's query
    block whole, or in halves with ``VIDHASH_DKDV_QSPLIT=2`` where a half has ≥ 32 rows. (Autotuned,
    the split is a config parameter and this variable is not read.)"""
    split = int(os.environ.get("VIDHASH_DKDV_QSPLIT", "1"))
    if split not in (1, 2):
        raise ValueError(f"VIDHASH_DKDV_QSPLIT must be 1 or 2, got {split}")
    return split if bq >= 64 else 1


def _launch_tma(kernel, grid, args, **meta):
    """Launch a TMA kernel: autotuned, or one config (``VIDHASH_AUTOTUNE=0``, the interpreter), with one
    stage fewer at a time while its tiles do not fit (H100, 2026-12-06: float32 at d 128 asked for
    262,160 B (dq / dk, dv, key blocks of 64) and 327,712 B (forward, key blocks of 128) of 232,448 at 3 stages)."""
    if autotuning():
        return kernel[grid](*args, **meta)
    cfg = {"num_warps": 4 if _INTERPRET or meta["D"] <= 64 else 8, "num_stages": 1 if _INTERPRET else 3}
    return _fewer_stages_until_it_fits(kernel.fn[grid], args, meta, cfg)


def _tma_backward(q, k, v, do, lse, delta, idx, dq, selection: BlockSelection, sm_scale: float, prec: str) -> None:
    """dq on the TMA kernel (into ``dq``, which has ``q``'s strides)."""
    b, h, nq, d = q.shape
    descs = _descriptors(selection, q=q, k=k, v=v, do=do)
    args = (*descs, idx, lse, delta, dq, sm_scale, sm_scale * _LOG2E, *dq.stride()[:3], *idx.stride()[:3],
            h, nq, k.shape[-2], selection.kept)
    _launch_tma(sparse_attn_bwd_dq_tma_kernel, (selection.num_query_blocks, b * h), args,
                BQ=selection.query_block_size, BK=selection.block_size, D=d, E=v.shape[-1], PREC=prec)


class _BlockSparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, selection, sm_scale):
        out, lse = sparse_attention_forward(q, k, v, selection, sm_scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.selection, ctx.sm_scale = selection, sm_scale
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = sparse_attention_backward(dout, q, k, v, out, lse, dlse, ctx.selection, ctx.sm_scale)
        return dq, dk, dv, None, None


# --------------------------------------------------------------------------------------------
# the same as custom ops, for torch.compile: opaque to dynamo, shapes from fake implementations
# --------------------------------------------------------------------------------------------
def _sparse_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, block_size: int,
                    query_block_size: int, causal: bool, sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    selection = BlockSelection(indices, block_size, query_block_size, q.shape[-2], k.shape[-2], causal)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))  # (again: a compiled graph may hand other strides)
    return sparse_attention_forward(q, k, v, selection, sm_scale)


def _sparse_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                     lse: torch.Tensor, dlse: torch.Tensor | None, indices: torch.Tensor, block_size: int,
                     query_block_size: int, causal: bool, sm_scale: float):
    selection = BlockSelection(indices, block_size, query_block_size, q.shape[-2], k.shape[-2], causal)
    return sparse_attention_backward(do, q, k, v, out, lse, dlse, selection, sm_scale)


_forward_op = torch.library.custom_op(
    "vidhash::sparse_attention", _sparse_forward, mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor v, Tensor indices, int block_size, int query_block_size, bool causal, "
           "float sm_scale) -> (Tensor, Tensor)",
)
_backward_op = torch.library.custom_op(
    "vidhash::sparse_attention_backward", _sparse_backward, mutates_args=(),
    schema="(Tensor do, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? dlse, Tensor indices, "
           "int block_size, int query_block_size, bool causal, float sm_scale) -> (Tensor, Tensor, Tensor)",
)


@_forward_op.register_fake
def _(q, k, v, indices, block_size, query_block_size, causal, sm_scale):
    b, h, nq, _ = q.shape
    return q.new_empty(b, h, nq, v.shape[-1]), q.new_empty(b, h, nq, dtype=torch.float32)


@_backward_op.register_fake
def _(do, q, k, v, out, lse, dlse, indices, block_size, query_block_size, causal, sm_scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, indices, block_size, query_block_size, causal, sm_scale = inputs
    ctx.save_for_backward(q, k, v, *output, indices)
    ctx.meta = (block_size, query_block_size, causal, sm_scale)


def _op_backward(ctx, dout, dlse):
    q, k, v, out, lse, indices = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = torch.ops.vidhash.sparse_attention_backward(dout, q, k, v, out, lse, dlse, indices, *ctx.meta)
    return dq, dk, dv, None, None, None, None, None


_forward_op.register_autograd(_op_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------
def block_sparse_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    selection: BlockSelection,
    *,
    scale: float | None = None,
    return_lse: bool = False,
):
    """:func:`naive.block_sparse_attention` on the Triton kernels.

    Exact softmax of each query block over its kept key blocks (``-1`` padding skipped, causal
    bottom-right aligned); ``lse (b, h, nq)`` float32, ``-inf`` for a query that sees no key.
    Differentiable in ``q, k, v`` (and through ``lse``). Takes bf16/fp16/fp32 with head_dim
    64 or 128 and any length (lengths are runtime arguments: no recompilation per length);
    anything else (and a scale ≤ 0) raises ``ValueError``. Tensors need not be contiguous: any (batch, head,
    token) strides are used as they are; a tensor whose head_dim is strided is copied.
    fp32 runs its dots in full fp32 (no tf32).
    """
    _check_inputs(q, k, v, selection)
    sm_scale = resolve_scale(scale, q.shape[-1])
    if not sm_scale > 0 or sm_scale == float("inf"):
        raise ValueError(f"the Triton kernels need a positive finite scale, got {scale!r}")
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    if torch.compiler.is_compiling():  # the custom op: one opaque node of the graph (and of its backward)
        out, lse = torch.ops.vidhash.sparse_attention(q, k, v, selection.indices, selection.block_size,
                                                      selection.query_block_size, bool(selection.causal), sm_scale)
    else:
        out, lse = _BlockSparseAttention.apply(q, k, v, selection, sm_scale)
    return (out, lse) if return_lse else out


def hash_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    density: float = 0.125,
    block_size: int = 64,
    query_block_size: int | None = None,
    local_blocks: int = 1,
    sink_blocks: int = 1,
    causal: bool = False,
    hasher=None,
    scale: float | None = None,
    return_lse: bool = False,
):
    """:func:`vidhash.attention.hash_attention` on the Triton kernels (same arguments, same
    result up to rounding): :func:`select_blocks_triton` then
    :func:`block_sparse_attention_triton`.

    The kernels handle every block size, ``block_size=1`` (per-token selection) included (tested
    under the interpreter; the backward groups 16 one-token blocks per tile), but that size has
    not been tuned or timed on a GPU: ``hash_attention(backend="auto" | "triton")`` runs the
    reference for it on a GPU.
    """
    check_qkv(q, k, v)
    sel = select_blocks_triton(
        q, k, density=density, block_size=block_size, query_block_size=query_block_size,
        local_blocks=local_blocks, sink_blocks=sink_blocks, causal=causal, hasher=hasher,
    )
    return block_sparse_attention_triton(q, k, v, sel, scale=scale, return_lse=return_lse)
