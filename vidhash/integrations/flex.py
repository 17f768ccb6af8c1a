"""FlexAttention on vidhash's block selections: the blocks vidhash keeps, PyTorch's kernel.

Letters: b batch, h heads, n tokens, d head_dim, i query blocks, j key blocks, k kept blocks.

    sel = vidhash.attention.select_blocks(q, k, density=1 / 8, block_size=64)
    out = flex_block_sparse_attention(q, k, v, sel)   # block_sparse_attention(q, k, v, sel), up to rounding

* :func:`flex_block_mask` — a ``BlockMask`` holding exactly the kept blocks. Every kept block is a
  *full* block (Flex's kernels attend to all of it and never evaluate the mask function), and its
  ``mask_mod`` says the same token by token, for PyTorch's eager implementation, which ignores the
  block lists and applies ``mask_mod`` to every score (without it, eager Flex is dense attention).
* :func:`flex_kernel_options` — Flex's tiles, which must divide the blocks (its default ``BLOCK_N``
  of 128 does not divide a 64-token key block).
* :func:`flex_attention_fn` — ``torch.compile(flex_attention)`` on CUDA (one per process), PyTorch's
  eager ``flex_attention`` elsewhere: an unfused implementation that materialises all ``nq × nk``
  scores, for tests and small inputs.
* :func:`flex_block_sparse_attention` — the three together.

Used by the drop-in's ``backend="flex"`` (:mod:`vidhash.integrations.diffusers`), ``vidhash bench
attention`` and ``vidhash bench dropin``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..ops.checks import BlockSelection

MAX_TILES = (128, 64)
"""Largest Flex tiles used: ``BLOCK_M`` (queries) and ``BLOCK_N`` (keys)."""
MIN_TILE = 16
"""Flex's Triton kernels multiply tiles of at least 16 tokens."""

_COMPILED: dict[str, Callable] = {}


def _kept_blocks(sel: BlockSelection) -> torch.Tensor:
    """``(b, h, i, j)`` bool: whether query block ``i`` keeps key block ``j``."""
    idx = sel.indices.long()
    nkb = sel.num_key_blocks
    kept = torch.zeros(*idx.shape[:-1], nkb + 1, dtype=torch.bool, device=idx.device)
    kept.scatter_(-1, torch.where(idx < 0, nkb, idx), True)  # padding (-1) lands in the extra column
    return kept[..., :nkb].contiguous()


def flex_block_mask(sel: BlockSelection, *, backward: bool = False):
    """A FlexAttention ``BlockMask`` of exactly the blocks ``sel`` keeps (see the module docstring).

    ``backward``: also build the transposed (per key block) lists Flex's backward pass reads;
    a forward pass does not need them."""
    from torch.nn.attention.flex_attention import BlockMask

    if sel.causal:
        raise ValueError("FlexAttention here takes non-causal selections (causal=False): a causal selection's "
                         "diagonal blocks are partly masked")
    idx = sel.indices  # (b, h, i, k), ascending, -1 padded
    num = (idx >= 0).sum(-1, dtype=torch.int32)  # (b, h, i)
    cols = torch.zeros(*idx.shape[:-1], sel.num_key_blocks, dtype=torch.int32, device=idx.device)
    cols[..., : idx.shape[-1]] = idx.clamp(min=0)
    kept = _kept_blocks(sel)
    bq, bk = sel.query_block_size, sel.block_size

    def mask_mod(b, h, q_idx, kv_idx):
        return kept[b, h, q_idx // bq, kv_idx // bk]

    return BlockMask.from_kv_blocks(
        torch.zeros_like(num), cols, full_kv_num_blocks=num, full_kv_indices=cols, BLOCK_SIZE=(bq, bk),
        mask_mod=mask_mod, seq_lengths=(sel.num_queries, sel.num_keys), compute_q_blocks=backward,
    )


def _tile(size: int, cap: int, name: str) -> int:
    """The largest power of two ≤ ``cap`` dividing ``size``; ValueError below :data:`MIN_TILE`."""
    tile = min(cap, size & -size)
    if tile < MIN_TILE:
        raise ValueError(f"FlexAttention's kernels need {name} to be a multiple of {MIN_TILE}, got {size}")
    return tile


def flex_kernel_options(sel: BlockSelection) -> dict:
    """``kernel_options`` whose tiles divide the blocks (``BLOCK_M`` ≤ 128, ``BLOCK_N`` ≤ 64);
    ValueError naming ``query_block_size`` / ``block_size`` when no tile of ≥ 16 tokens does."""
    return {"BLOCK_M": _tile(sel.query_block_size, MAX_TILES[0], "query_block_size"),
            "BLOCK_N": _tile(sel.block_size, MAX_TILES[1], "block_size")}


def flex_attention_fn(device: torch.device | str) -> Callable:
    """``torch.compile(flex_attention, dynamic=False)`` for CUDA (compiled once per process, then
    once per block and tile size), the eager ``flex_attention`` for any other device."""
    from torch.nn.attention.flex_attention import flex_attention

    if torch.device(device).type != "cuda":
        return flex_attention
    if "cuda" not in _COMPILED:
        _COMPILED["cuda"] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED["cuda"]


def flex_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sel: BlockSelection,
    *,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Softmax attention of ``q, k, v (b, h, n, d)`` over the blocks ``sel`` keeps, by FlexAttention
    (:func:`vidhash.attention.block_sparse_attention` up to rounding); with ``return_lse`` also the
    log-sum-exp ``(b, h, nq)`` (natural log, float32). Tested forward only: with gradients on, the
    mask also carries the lists Flex's backward reads, but its backward (CUDA only; its tiles are
    picked by Flex and must divide the blocks) is untested here."""
    from torch.nn.attention.flex_attention import AuxRequest

    if (sel.num_queries, sel.num_keys) != (q.shape[-2], k.shape[-2]):
        raise ValueError(f"the selection is for {sel.num_queries} queries and {sel.num_keys} keys, "
                         f"got {q.shape[-2]} and {k.shape[-2]}")
    backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    mask = flex_block_mask(sel, backward=backward)
    options = flex_kernel_options(sel) if q.is_cuda else None
    aux = AuxRequest(lse=True) if return_lse else None
    out = flex_attention_fn(q.device)(q, k, v, block_mask=mask, scale=scale, kernel_options=options, return_aux=aux)
    if return_lse:
        out, extra = out
        return out, extra.lse.float()
    return out
