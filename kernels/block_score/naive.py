"""Torch reference of the block-score kernel, and the block codes both of them read (no triton).

Letters: b batch, h heads, n tokens, d head_dim, c query blocks, j key blocks, r code width.

Pipeline (shared by :mod:`.ops` and this reference; only step 3 differs):

1. block codes in nats: :func:`pooled_codes` (``√s · mean token`` of every block, so that
   ``code_q · code_k = s · q̄ · k̄``) or a learned scorer's codes;
2. :func:`quantize_codes`: int8 codes, one scale per (batch, head) and role, width padded to
   ``R`` (a power of two ≥ 32); ``shift`` per (batch, head) so that one level (``2^shift``
   integer score units) is at most ``resolution`` nats;
3. :func:`block_score_reference`: per query block, the key blocks of the highest levels (the
   kernel's rules, see ``kernel.py``), ties to the lower index, forced blocks first, ascending,
   ``-1``-padded — integer arithmetic only, so equal to the kernel's indices exactly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vidhash.attention import _forced_and_allowed

RESOLUTION = 1.0 / 16  # nats per level: 256 levels span 16 nats below a row's best free block
MIN_WIDTH = 32  # int8 tl.dot needs K ≥ 32
_CHUNK_ELEMS = 1 << 23


def code_width(r: int) -> int:
    """Padded code width ``R``: a power of two, at least 32."""
    return max(MIN_WIDTH, 1 << max(0, (int(r) - 1).bit_length()))


def block_means(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean token of each block of ``x (b, h, n, d)`` over its real tokens, float32 ``(b, h, nb, d)``;
    sums in float32 straight from ``x``'s dtype (no float32 copy of ``x``)."""
    b, h, n, d = x.shape
    full = n // block_size
    parts = []
    if full:
        parts.append(x[:, :, : full * block_size].reshape(b, h, full, block_size, d).sum(-2, dtype=torch.float32) / block_size)
    if n > full * block_size:
        tail = x[:, :, full * block_size :]
        parts.append(tail.sum(-2, keepdim=True, dtype=torch.float32) / tail.shape[-2])
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def pooled_codes(q: torch.Tensor, k: torch.Tensor, block_size: int, query_block_size: int, scale: float):
    """``pooled``'s block codes ``(b, h, nqb, d)``, ``(b, h, nkb, d)``: ``√s`` times the mean token."""
    root = math.sqrt(scale)
    return block_means(q, query_block_size) * root, block_means(k, block_size) * root


def quantize_codes(cq: torch.Tensor, ck: torch.Tensor, resolution: float = RESOLUTION):
    """int8 codes ``(b, h, ·, R)`` and int32 ``shift (b·h,)`` from float codes (see module docstring).

    Per (batch, head): ``code ≈ int8 · scale`` with ``scale = max|code| / 127``; an integer score
    unit is ``scale_q · scale_k`` nats and ``shift = floor(log2(resolution / unit))`` (≥ 0).
    """
    if not resolution > 0:
        raise ValueError(f"resolution must be positive, got {resolution!r}")
    if cq.shape[:2] != ck.shape[:2] or cq.shape[-1] != ck.shape[-1]:
        raise ValueError(f"query codes {tuple(cq.shape)} and key codes {tuple(ck.shape)} disagree in (b, h) or width")
    width = code_width(cq.shape[-1])

    def q8(x):
        amax = x.float().abs().amax(dim=(-2, -1), keepdim=True).clamp(min=1e-20)
        scale = amax / 127.0
        x8 = torch.round(x.float() / scale).clamp(-127, 127).to(torch.int8)
        return F.pad(x8, (0, width - x.shape[-1])).contiguous(), scale.flatten().double()

    qi, sq = q8(cq)
    ki, sk = q8(ck)
    unit = sq * sk
    shift = torch.floor(torch.log2(resolution / unit)).clamp(min=0, max=24).to(torch.int32)
    return qi, ki, shift


def levels(s: torch.Tensor, free: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Levels in ``[0, 255]`` of integer scores ``s (b, h, c, j)`` (int64) relative to each row's best
    ``free`` score; ``shift (b, h, 1, 1)``."""
    smax = torch.where(free, s, torch.full_like(s, -2147483647)).amax(-1, keepdim=True)
    coarse = (s >> (shift + 4)) - (smax >> (shift + 4)) + 15
    fine = (s >> shift) & 15
    return torch.where(coarse < 0, 0, coarse.clamp(max=15) * 16 + fine)


@torch.no_grad()
def block_score_reference(
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
) -> torch.Tensor:
    """Indices ``(b, h, nqb, kept)`` int32 of the kernel, in torch (chunks of query blocks)."""
    b, h, nqb, _ = qi.shape
    nkb = ki.shape[-2]
    sh = shift.to(qi.device).reshape(b, h, 1, 1).to(torch.int64)
    kf = ki.float()
    out = torch.empty(b, h, nqb, kept, dtype=torch.int32, device=qi.device)
    tie = nkb - torch.arange(nkb, device=qi.device, dtype=torch.int64)
    chunk = max(1, _CHUNK_ELEMS // max(1, b * h * nkb))
    for start in range(0, nqb, chunk):
        rows = torch.arange(start, min(nqb, start + chunk), device=qi.device)
        forced, allowed = _forced_and_allowed(rows, num_queries, num_keys, query_block_size, block_size,
                                              local_blocks, sink_blocks, causal)
        # integer scores, exact in float32 (|s| ≤ R · 127² < 2^24)
        s = torch.matmul(qi[:, :, rows].float(), kf.transpose(-1, -2)).to(torch.int64)
        lvl = torch.where(forced, 256, levels(s, allowed & ~forced, sh))
        rank = torch.where(allowed, lvl * (nkb + 1) + tie, -1)
        top = rank.topk(kept, dim=-1)
        idx = torch.where(top.values >= 0, top.indices, nkb).sort(dim=-1).values
        out[:, :, start : start + rows.numel()] = torch.where(idx == nkb, -1, idx).to(torch.int32)
    return out
