"""Launcher of the block-score kernel and ``select_blocks_codes`` (pooled / learned block codes).

Letters: b batch, h heads, c query blocks, j key blocks, r code width.

Forward only: selection is discrete. The torch reference of exactly what the kernel computes is
:mod:`.naive` (``backend="reference"``); both read the same int8 codes.
"""
from __future__ import annotations

import os

import torch
import triton

from vidhash.ops.checks import BlockSelection, check_qkv, check_selection_args

from .kernel import block_score_kernel, code_ranges_kernel, quantize_codes_kernel
from .naive import (RESOLUTION, check_codes, check_grid, check_parent, code_width, empty_selection, float_codes,
                    select_blocks_codes_reference)

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
BACKENDS = ("auto", "triton", "reference")
# (block_m, block_n, num_warps) overriding the tile choice (a study's knob: scripts/gpu/attention_parts.py).
TILES: tuple[int, int, int] | None = None
QUANTIZE_PROGRAMS = 256  # programs the quantisation aims for (b·h of them, each splitting its rows)
# The level kernel's ``STORE`` form (kernel.py): the coarse pass writes every pair's level and the later
# passes read them instead of scoring again — same indices; a study's knob until a GPU weighs it
# (offline: scripts and numbers in kernels/NOTES.md). Never above STORE_LEVELS_MAX_BYTES of scratch.
STORE_LEVELS = False
STORE_LEVELS_MAX_BYTES = 256 << 20


def _tiles(nkb: int, m: int, p: int, width: int) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps)``: 16 query blocks per program, key blocks per step so that
    a tile holds ≤ 4,096 cells (≤ 128 blocks); one bounded choice per size (no autotune)."""
    block_m = 16
    if _INTERPRET:
        return block_m, max(1, 16 // p), 4
    low = 16 // p if p < 16 else 1
    block_n = max(low, min(128, 4096 // (block_m * m * p), 16384 // width))  # wide codes: smaller key tiles
    return block_m, min(block_n, max(low, triton.next_power_of_2(nkb))), 4


def _kernel_grid(block_size: int, query_block_size: int, m: int, sub: int | None) -> tuple[int, int]:
    """``(m, p)`` the kernel takes: powers of two (ValueError otherwise)."""
    m, p = check_grid(block_size, query_block_size, m, block_size if sub is None else sub)
    if m & (m - 1) or p & (p - 1):
        raise ValueError(f"the kernel takes powers of two for m and block_size / sub, got m={m}, {p} sub-blocks "
                         "(backend='reference' takes any)")
    return m, p


def select_from_codes(
    qi: torch.Tensor,
    ki: torch.Tensor,
    shift: torch.Tensor,
    *,
    kept: int,
    num_queries: int,
    num_keys: int,
    block_size: int,
    query_block_size: int,
    local_blocks: int,
    sink_blocks: int,
    causal: bool,
    m: int = 1,
    sub: int | None = None,
) -> torch.Tensor:
    """Run the kernel on int8 codes ``qi (b, h, nqb·m, R)``, ``ki (b, h, nkb·p, R)`` and ``shift
    (b·h,)`` (from :func:`.naive.quantize_codes`; ``p = block_size / sub``). Returns int32 indices
    ``(b, h, nqb, kept)``, ascending, ``-1``-padded — equal to :func:`.naive.block_score_reference`'s."""
    m, p = _kernel_grid(block_size, query_block_size, m, sub)
    if qi.dtype != torch.int8 or ki.dtype != torch.int8:
        raise ValueError(f"codes must be int8, got {qi.dtype} and {ki.dtype}")
    if qi.shape[:2] != ki.shape[:2] or qi.shape[-1] != ki.shape[-1]:
        raise ValueError(f"qi {tuple(qi.shape)} and ki {tuple(ki.shape)} disagree in (b, h) or width")
    b, h, rows, width = qi.shape
    nqb, nkb = -(-num_queries // query_block_size), -(-num_keys // block_size)
    if rows != nqb * m or ki.shape[-2] != nkb * p:
        raise ValueError(f"expected {nqb * m} query and {nkb * p} key codes, got {rows} and {ki.shape[-2]}")
    if width & (width - 1) or width < 32:
        raise ValueError(f"code width must be a power of two ≥ 32, got {width}")
    if shift.numel() != b * h:
        raise ValueError(f"shift must hold b·h = {b * h} values, got {shift.numel()}")
    qi, ki = qi.contiguous(), ki.contiguous()
    shift = shift.to(device=qi.device, dtype=torch.int32).contiguous()
    args = (qi, ki, shift, kept, num_queries, num_keys, block_size, query_block_size, local_blocks, sink_blocks,
            bool(causal), m, p)
    if torch.compiler.is_compiling():  # one opaque op in the graph (no trace of the launch)
        return torch.ops.vidhash.block_score_select(*args)
    return _score_kernel(*args)


def _score_kernel(qi: torch.Tensor, ki: torch.Tensor, shift: torch.Tensor, kept: int, num_queries: int, num_keys: int,
                  block_size: int, query_block_size: int, local_blocks: int, sink_blocks: int, causal: bool, m: int,
                  p: int) -> torch.Tensor:
    """Launch the kernel on checked codes."""
    qi, ki, shift = qi.contiguous(), ki.contiguous(), shift.contiguous()  # (again: a compiled graph may hand other strides)
    b, h, _, width = qi.shape
    nqb, nkb = -(-num_queries // query_block_size), -(-num_keys // block_size)
    out = torch.empty(b, h, nqb, kept, dtype=torch.int32, device=qi.device)
    block_m, block_n, warps = TILES or _tiles(nkb, m, p, width)
    if block_n > 128:  # the SWAR counts' 8-bit counters and the emit pass's 16-bit ones hold < 256 blocks a step
        raise ValueError(f"block_n must be at most 128, got {block_n}")
    grid = (triton.cdiv(nqb, block_m), b * h)
    store = STORE_LEVELS and b * h * nqb * nkb * 2 <= STORE_LEVELS_MAX_BYTES
    levels = torch.empty(b * h, nqb, nkb, dtype=torch.int16, device=qi.device) if store else out  # unread without STORE
    block_score_kernel[grid](
        qi, ki, shift, out, levels,
        *qi.stride()[:3], *ki.stride()[:3], *out.stride()[:3], *((nqb * nkb, nkb) if store else (0, 0)),
        h, num_queries, num_keys, nqb, nkb, -(-num_keys // (block_size // p)), kept, query_block_size, block_size,
        local_blocks, sink_blocks,
        R=width, M=m, P=p, CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n, STORE=store,
        num_warps=warps,
    )
    return out


_score_op = torch.library.custom_op(
    "vidhash::block_score_select", _score_kernel, mutates_args=(),
    schema="(Tensor qi, Tensor ki, Tensor shift, int kept, int num_queries, int num_keys, int block_size, "
           "int query_block_size, int local_blocks, int sink_blocks, bool causal, int m, int p) -> Tensor",
)


@_score_op.register_fake
def _(qi, ki, shift, kept, num_queries, num_keys, block_size, query_block_size, local_blocks, sink_blocks, causal, m, p):
    return qi.new_empty(qi.shape[0], qi.shape[1], -(-num_queries // query_block_size), kept, dtype=torch.int32)


def _float32_parts(x: float) -> tuple[float, float, float]:
    """Three float32 values whose float64 sum is ``x`` exactly (a kernel's scalars are float32)."""
    import numpy as np

    hi = float(np.float32(x))
    mid = float(np.float32(x - hi))
    lo = float(np.float32(x - hi - mid))
    if (hi + mid) + lo != x:
        raise ValueError(f"resolution {x!r} does not split into float32 parts")
    return hi, mid, lo


def quantize_codes_triton(cq: torch.Tensor, ck: torch.Tensor, factor: float, rows_q: int, rows_k: int,
                          resolution: float = RESOLUTION) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`.naive.quantize_codes` of ``factor · cq``, ``factor · ck`` (float32 ``(b, h, ·, r)``, zero rows
    appended up to ``rows_q`` / ``rows_k``) in two launches over (batch, head) × row splits — the
    per-channel ranges, then the codes; the same int8 codes and ``shift`` exactly
    (``tests/kernels/test_block_score.py``). Replaces ~20 small torch ops (~0.31 ms eager at N = 131,072
    on an H200, beside 0.14 of block means)."""
    check_codes(cq, ck, resolution)
    if cq.shape[-2] > rows_q or ck.shape[-2] > rows_k:
        raise ValueError(f"rows_q / rows_k ({rows_q}, {rows_k}) below the codes' rows ({cq.shape[-2]}, {ck.shape[-2]})")
    parts = _float32_parts(float(resolution))
    if torch.compiler.is_compiling():  # one opaque op in the graph
        return torch.ops.vidhash.quantize_codes(cq, ck, float(factor), rows_q, rows_k, *parts)
    return _quantize(cq, ck, float(factor), rows_q, rows_k, *parts)


def _quantize(cq: torch.Tensor, ck: torch.Tensor, factor: float, rows_q: int, rows_k: int, res_hi: float,
              res_mid: float, res_lo: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, h, _, r = cq.shape
    width = code_width(r)
    cq = cq.float().reshape(b * h, cq.shape[-2], r)  # a view when it can be (rows and channels strided)
    ck = ck.float().reshape(b * h, ck.shape[-2], r)
    if cq.stride(-1) != 1:
        cq = cq.contiguous()
    if ck.stride(-1) != 1:
        ck = ck.contiguous()
    qi = torch.empty(b, h, rows_q, width, dtype=torch.int8, device=cq.device)
    ki = torch.empty(b, h, rows_k, width, dtype=torch.int8, device=cq.device)
    shift = torch.empty(b * h, dtype=torch.int32, device=cq.device)
    block_rows = max(1, 4096 // width)
    tiles = triton.cdiv(max(rows_q, rows_k), block_rows)
    splits = max(1, min(tiles, triton.cdiv(QUANTIZE_PROGRAMS, b * h)))  # both passes split the rows
    part = torch.empty(b * h, splits, 2, width, dtype=torch.float32, device=cq.device)
    strides = (cq.stride(0), cq.stride(1), ck.stride(0), ck.stride(1))
    code_ranges_kernel[(b * h, splits)](
        cq, ck, part, *strides, cq.shape[1], ck.shape[1], r, factor,
        WIDTH=width, BLOCK_ROWS=block_rows, num_warps=4,
    )
    quantize_codes_kernel[(b * h, splits)](
        cq, ck, part, qi, ki, shift, *strides,
        cq.shape[1], ck.shape[1], rows_q, rows_k, r, factor, res_hi, res_mid, res_lo,
        WIDTH=width, BLOCK_ROWS=block_rows, SPLITS=triton.next_power_of_2(splits), num_warps=4,
    )
    return qi, ki, shift


_quantize_op = torch.library.custom_op(
    "vidhash::quantize_codes", _quantize, mutates_args=(),
    schema="(Tensor cq, Tensor ck, float factor, int rows_q, int rows_k, float res_hi, float res_mid, "
           "float res_lo) -> (Tensor, Tensor, Tensor)",
)


@_quantize_op.register_fake
def _(cq, ck, factor, rows_q, rows_k, res_hi, res_mid, res_lo):
    b, h, _, r = cq.shape
    width = code_width(r)
    return (cq.new_empty(b, h, rows_q, width, dtype=torch.int8), cq.new_empty(b, h, rows_k, width, dtype=torch.int8),
            cq.new_empty(b * h, dtype=torch.int32))


@torch.no_grad()
def select_blocks_codes(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    density: float = 0.125,
    block_size: int = 64,
    query_block_size: int | None = None,
    local_blocks: int = 1,
    sink_blocks: int = 1,
    causal: bool = False,
    scale: float | None = None,
    m: int = 1,
    sub: int | None = None,
    scorer=None,
    resolution: float = RESOLUTION,
    backend: str = "auto",
) -> BlockSelection:
    """Block selection by exact block-code scores, the top-k fused in the kernel
    (``backend="triton"``, the default on CUDA) or in torch (``"reference"``, identical indices).

    Codes: ``pooled`` (default, ``m=1``), ``scorer="parent"`` (key means blended with their 64-token
    parents': ``vidhash.selection``'s ``parent`` up to int8), ``scorer="moments"`` (means and variances, 3d wide:
    ``vidhash.selection``'s ``moments`` exactly up to int8), ``m`` query sub-centroids × key sub-blocks of ``sub``
    tokens (``subgrid``'s ``reduce="max"`` form, see ``kernel.py``), or a
    :class:`~vidhash.selection.learned.LearnedBlockScorer` (``features="linear"`` or ``"diag"``, real codes) whose
    map is applied to the same means. Same arguments and rules as
    :func:`vidhash.attention.select_blocks` (``kept``, forced sink/local blocks, causal) with ties
    between equal *levels* (at most ``resolution`` nats wide) to the lower block index."""
    from vidhash.kernels.block_select.ops import num_kept_blocks

    check_qkv(q, k)
    check_parent(scorer, causal)
    density, bk, bq = check_selection_args(density, block_size, query_block_size, local_blocks, sink_blocks)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    use_kernel = backend == "triton" or (backend == "auto" and q.is_cuda)
    if not use_kernel:
        return select_blocks_codes_reference(q, k, density=density, block_size=bk, query_block_size=bq,
                                             local_blocks=local_blocks, sink_blocks=sink_blocks, causal=causal,
                                             scale=scale, m=m, sub=sub, scorer=scorer, resolution=resolution)
    _kernel_grid(bk, bq, m, sub)  # before any work
    nq, nk = q.shape[-2], k.shape[-2]
    kept = num_kept_blocks(nq, nk, density=density, block_size=bk, query_block_size=bq, local_blocks=local_blocks,
                           sink_blocks=sink_blocks, causal=causal)  # closed form on the host: no device sync
    if nq == 0:
        return empty_selection(q, kept, bk, bq, nk, causal)
    cq, ck, factor, rows_q, rows_k = float_codes(q, k, block_size=bk, query_block_size=bq, scale=scale, m=m, sub=sub,
                                                 scorer=scorer)
    qi, ki, shift = quantize_codes_triton(cq, ck, factor, rows_q, rows_k, resolution)
    idx = select_from_codes(qi, ki, shift, kept=kept, num_queries=nq, num_keys=nk, block_size=bk,
                            query_block_size=bq, local_blocks=local_blocks, sink_blocks=sink_blocks, causal=causal,
                            m=m, sub=sub)
    return BlockSelection(idx, bk, bq, nq, nk, causal)
