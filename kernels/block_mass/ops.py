"""Launchers and public functions of the block-mass kernels.

:func:`block_mass_triton` — :func:`vidhash.selection.oracle.block_mass` (non-causal, every query
block) in one Triton kernel: ``(mass (b, h, nqb, nkb) float32, counts (b, h, nqb) int64)``, counts
being the queries summed per block (every ``query_stride``-th). Key blocks and the queries summed
per query block (``query_block_size / query_stride``) must be powers of two, key blocks at least 16;
head dims of the attention kernels. Timed against the reference by ``python3
scripts/gpu/attention_parts.py --part mass``.
"""
from __future__ import annotations

import torch
import triton

from vidhash.kernels.sparse_attention.ops import SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS, _last_dim_contiguous, _precision
from vidhash.ops.checks import check_block, check_qkv, resolve_scale

from .kernel import block_mass_kernel, candidate_mass_kernel

_LOG2E = 1.4426950408889634
_ROWS = 64  # queries per program (G query blocks of TQ queries), at least one block's


def _pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def covers(q: torch.Tensor, *, block_size: int, query_block_size: int, query_stride: int = 1) -> bool:
    """Whether the kernel takes these inputs (else the caller runs the reference)."""
    tq = query_block_size // query_stride if query_stride and query_block_size % query_stride == 0 else 0
    return (q.dtype in SUPPORTED_DTYPES and q.shape[-1] in SUPPORTED_HEAD_DIMS and _pow2(block_size) and block_size >= 16
            and block_size <= 128 and _pow2(tq) and tq <= _ROWS)


def _checked(q: torch.Tensor, k: torch.Tensor, block_size: int, query_block_size: int, stride: int, covered: bool,
             name: str, stride_rule: str) -> tuple[int, int]:
    """``(block_size, query_block_size)`` after the shared checks; ValueError naming what ``name`` takes."""
    check_qkv(q, k)
    bk = check_block("block_size", block_size)
    bq = check_block("query_block_size", query_block_size)
    if not covered:
        raise ValueError(f"{name} takes {[str(t) for t in SUPPORTED_DTYPES]}, head_dim in {SUPPORTED_HEAD_DIMS}, "
                         f"key blocks a power of two in [16, 128] and {stride_rule}; got {q.dtype}, {q.shape[-1]}, "
                         f"{bk}, {bq} / {stride}")
    return bk, bq


@torch.no_grad()
def block_mass_triton(q: torch.Tensor, k: torch.Tensor, *, block_size: int, query_block_size: int, query_stride: int = 1,
                      scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact block mass of every query block (see the module docstring); ValueError for inputs the
    kernel does not take (:func:`covers`)."""
    bk, bq = _checked(q, k, block_size, query_block_size, query_stride,
                      covers(q, block_size=block_size, query_block_size=query_block_size, query_stride=query_stride),
                      "block_mass_triton", f"query_block_size / query_stride a power of two ≤ {_ROWS}")
    b, h, nq, d = q.shape
    nk = k.shape[-2]
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    tq = bq // query_stride
    qs = _last_dim_contiguous(q[:, :, ::query_stride])
    k = _last_dim_contiguous(k)
    out = torch.empty(b, h, nqb, nkb, device=q.device, dtype=torch.float32)
    g = max(1, _ROWS // tq)
    sc = resolve_scale(scale, d)
    block_mass_kernel[(triton.cdiv(nqb, g), b * h)](
        qs, k, out, sc * _LOG2E,
        qs.stride(0), qs.stride(1), qs.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        h, qs.shape[-2], nk, nqb, nkb,
        TQ=tq, G=g, BK=bk, D=d, PREC=_precision(q.dtype),
    )
    starts = torch.arange(nqb, device=q.device) * bq
    counts = (torch.clamp(nq - starts, max=bq) + query_stride - 1) // query_stride  # strided queries per block
    return out, counts.expand(b, h, nqb).contiguous()


def covers_candidates(q: torch.Tensor, *, block_size: int, query_block_size: int, stride: int) -> bool:
    """Whether :func:`candidate_mass_triton` takes these inputs (else the caller runs the torch scorer)."""
    return (q.dtype in SUPPORTED_DTYPES and q.shape[-1] in SUPPORTED_HEAD_DIMS and _pow2(block_size)
            and 16 <= block_size <= 128 and stride >= 1 and query_block_size % stride == 0)


@torch.no_grad()
def candidate_mass_triton(q: torch.Tensor, k: torch.Tensor, candidates: torch.Tensor, *, block_size: int,
                          query_block_size: int, stride: int, causal: bool = False, scale: float | None = None,
                          query_blocks: torch.Tensor | None = None) -> torch.Tensor:
    """The ``rescore`` scorer's block mass (``vidhash.selection.scorers.candidate_mass``) in one kernel:
    for every query block, its every ``stride``-th query attends to the keys of its candidate blocks
    ``candidates (b, h, c, take)`` (int, ``-1``: none) only — the query blocks ``query_blocks`` (``c`` of
    them; default every one); returns float32 ``(b, h, c, take)``, the summed softmax probability per
    candidate over those queries. ValueError for inputs it does not take (:func:`covers_candidates`)."""
    bk, bq = _checked(q, k, block_size, query_block_size, stride,
                      covers_candidates(q, block_size=block_size, query_block_size=query_block_size, stride=stride),
                      "candidate_mass_triton", "a stride dividing query_block_size")
    b, h, nq, d = q.shape
    nqb = -(-nq // bq)
    blocks = torch.arange(nqb, device=q.device) if query_blocks is None else query_blocks
    blocks = blocks.to(device=q.device, dtype=torch.int32).contiguous()
    if candidates.shape[:3] != (b, h, blocks.numel()):
        raise ValueError(f"candidates must be (b, h, c, take) = ({b}, {h}, {blocks.numel()}, ·), got {tuple(candidates.shape)}")
    idx = candidates.to(device=q.device, dtype=torch.int32).contiguous()
    take = idx.shape[-1]
    tq = bq // stride
    qs = _last_dim_contiguous(q[:, :, ::stride])
    k = _last_dim_contiguous(k)
    out = torch.empty(b, h, blocks.numel(), take, device=q.device, dtype=torch.float32)
    candidate_mass_kernel[(blocks.numel(), b * h)](
        qs, k, blocks, idx, out, resolve_scale(scale, d) * _LOG2E,
        qs.stride(0), qs.stride(1), qs.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        idx.stride(0), idx.stride(1), idx.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        h, nq, k.shape[-2], take, stride, bq, tq,
        BLOCK_M=max(16, triton.next_power_of_2(tq)), BK=bk, D=d, CAUSAL=bool(causal), PREC=_precision(q.dtype),
    )
    return out
