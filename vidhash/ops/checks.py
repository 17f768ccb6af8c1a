"""Argument checks and shared types of the attention and memory ops.

One module that the naive references (``kernels/*/naive.py``), the Triton launchers
(``kernels/*/ops.py``) and the library's public functions all import, so that every path
rejects the same arguments with the same ``ValueError``. It imports nothing of vidhash.

Letters: b batch, h heads, u buckets, s slots per bucket, d head_dim, w signature words.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

BACKENDS = ("auto", "reference", "triton")
"""``backend=`` values of the dispatching functions: ``"auto"`` (Triton for CUDA tensors the
kernels cover, else the reference), ``"reference"`` (the naive PyTorch code) or ``"triton"``."""

MAX_BLOCK_SIZE = 128
"""Largest ``block_size`` / ``query_block_size`` of block selection."""

CHUNK_ELEMS = 1 << 23
"""Work budget (elements of the largest temporary) of one chunk of the chunked reference paths.
Read at call time (``checks.CHUNK_ELEMS``), so a test can lower it in one place."""


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else ValueError."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> None:
    """``q``, ``k`` (and ``v``): 4-D ``(batch, heads, tokens, head_dim)`` floating tensors of one
    dtype and device, one ``(batch, heads)``, one head_dim for q and k, as many v as k tokens."""
    names = (("q", q), ("k", k)) + ((("v", v),) if v is not None else ())
    for name, t in names:
        if not torch.is_tensor(t):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, tokens, head_dim), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
    for name, t in names[1:]:
        if t.dtype != q.dtype:
            raise ValueError(f"{name}.dtype {t.dtype} differs from q.dtype {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
        if t.shape[:2] != q.shape[:2]:
            raise ValueError(f"{name} has (batch, heads) {tuple(t.shape[:2])}, q has {tuple(q.shape[:2])}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k has head_dim {k.shape[-1]}, q has {q.shape[-1]}")
    if q.shape[-1] < 1:
        raise ValueError(f"q and k have head_dim 0; it must be at least 1 (shape {tuple(q.shape)})")
    if v is not None and v.shape[-2] != k.shape[-2]:
        raise ValueError(f"v has {v.shape[-2]} tokens, k has {k.shape[-2]}")
    if k.shape[-2] < 1:
        raise ValueError("k must hold at least one token")


def check_density(density: float) -> float:
    """``density`` as a float in (0, 1]."""
    if not isinstance(density, (int, float)) or isinstance(density, bool) or not (0.0 < float(density) <= 1.0) or math.isnan(density):
        raise ValueError(f"density must be a number in (0, 1], got {density!r}")
    return float(density)


def check_block(name: str, size: int) -> int:
    """A block size (argument ``name``): an int in ``[1, MAX_BLOCK_SIZE]``."""
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_BLOCK_SIZE:
        raise ValueError(f"{name} must be an int in [1, {MAX_BLOCK_SIZE}], got {size!r}")
    return size


def check_count(name: str, value: int) -> int:
    """A count (argument ``name``): a non-negative int."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def check_selection_args(density: float, block_size: int, query_block_size: int | None, local_blocks: int,
                         sink_blocks: int) -> tuple[float, int, int]:
    """The block-selection arguments every selection path takes (the references, the kernels,
    the drop-in, a training config): ``(density, block_size, query_block_size)`` checked, the
    query block size defaulting to ``block_size``; ValueError naming the first bad one."""
    density = check_density(density)
    bk = check_block("block_size", block_size)
    bq = check_block("query_block_size", query_block_size if query_block_size is not None else block_size)
    check_count("local_blocks", local_blocks)
    check_count("sink_blocks", sink_blocks)
    return density, bk, bq


# --------------------------------------------------------------------------------------------
# numbers every path computes the same way
# --------------------------------------------------------------------------------------------
def resolve_scale(scale: float | None, d: int) -> float:
    """The softmax scale: ``1 / sqrt(head_dim)`` unless given (then a positive finite number:
    ValueError otherwise)."""
    if scale is None:
        if d < 1:
            raise ValueError(f"head_dim must be at least 1, got {d}")
        return 1.0 / math.sqrt(d)
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return value


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the references' accumulation precision: float64 stays float64, the rest float32."""
    return x if x.dtype == torch.float64 else x.float()


def num_kept(density: float, num_key_blocks: int) -> int:
    """Key blocks a query block keeps at ``density`` before forced blocks: ``ceil(density · n)``
    clamped to ``[1, n]``."""
    return max(1, min(num_key_blocks, math.ceil(density * num_key_blocks - 1e-9)))


# --------------------------------------------------------------------------------------------
# shared types
# --------------------------------------------------------------------------------------------
@dataclass
class BlockSelection:
    """Kept key blocks per query block.

    ``indices`` is int32 ``(b, h, num_query_blocks, kept)``: ascending key-block indices,
    padded with ``-1`` where a query block has fewer allowed blocks (causal). Key block ``j``
    covers keys ``[j * block_size, (j + 1) * block_size)``; query block ``i`` covers queries
    ``[i * query_block_size, ...)``.
    """

    indices: torch.Tensor
    block_size: int
    query_block_size: int
    num_queries: int
    num_keys: int
    causal: bool

    @property
    def num_query_blocks(self) -> int:
        return self.indices.shape[-2]

    @property
    def num_key_blocks(self) -> int:
        return -(-self.num_keys // self.block_size)

    @property
    def kept(self) -> int:
        return self.indices.shape[-1]


class MemoryTable(NamedTuple):
    """The tensors of a hashed memory (``HashedMemory.table``), which its write and read ops
    update and read in place. An entry is a (bucket, slot) pair; ``counts == 0`` marks it empty."""

    keys: torch.Tensor  # (b, h, u, s, d), the memory's dtype
    values: torch.Tensor  # (b, h, u, s, d)
    signatures: torch.Tensor  # (b, h, u, s, w) int32: each stored key's signature
    frames: torch.Tensor  # (b, h, u, s) int64: newest frame merged into the entry (-1: empty)
    counts: torch.Tensor  # (b, h, u, s) int32: tokens the entry stands for
    bucket_writes: torch.Tensor  # (b, h, u) int64: tokens written to each bucket so far

    @property
    def num_buckets(self) -> int:
        return self.keys.shape[2]

    @property
    def slots(self) -> int:
        return self.keys.shape[3]

    @property
    def capacity(self) -> int:
        """Entries per batch element and head (``num_buckets × slots``)."""
        return self.keys.shape[2] * self.keys.shape[3]


def check_selection(selection: BlockSelection, q: torch.Tensor, k: torch.Tensor) -> None:
    """A :class:`BlockSelection` given to attend ``q`` to ``k``: made for their sizes and
    ``(b, h)``, integer ``indices`` of shape ``(b, h, ceil(nq / query_block_size), kept)`` on q's
    device. Entry values are not read (that would synchronise a GPU). ValueError otherwise."""
    if not isinstance(selection, BlockSelection):
        raise ValueError(f"selection must be a BlockSelection, got {type(selection).__name__}")
    b, h, nq = q.shape[:3]
    nk = k.shape[-2]
    idx = selection.indices
    if selection.num_queries != nq or selection.num_keys != nk or tuple(idx.shape[:2]) != (b, h):
        raise ValueError(
            f"selection was made for {selection.num_queries} queries / {selection.num_keys} keys / "
            f"(b, h)={tuple(idx.shape[:2])}, got {nq} / {nk} / {(b, h)}"
        )
    if idx.ndim != 4 or idx.shape[2] != -(-nq // selection.query_block_size) or idx.dtype.is_floating_point \
            or idx.dtype == torch.bool or idx.is_complex():
        raise ValueError(f"selection.indices must be integers (b, h, ceil({nq} / query_block_size "
                         f"{selection.query_block_size}), kept), got {idx.dtype} {tuple(idx.shape)}")
    if idx.device != q.device:
        raise ValueError(f"selection.indices is on {idx.device} but q is on {q.device}")
