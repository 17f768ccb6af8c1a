"""Public Triton ops of vidhash (``vidhash.kernels.ops``): one import line per op folder; needs triton.

The library reaches them here, through :func:`vidhash.ops.backend.triton_ops`:
``vidhash.attention.hash_attention(..., backend="triton")`` calls :func:`hash_attention` (and, with
``remainder="mean"``, :func:`block_mean_remainder_triton`),
``HashedMemory.write`` / ``attend`` call :func:`memory_write_fifo`, :func:`memory_write_merge`
and :func:`memory_attend`. Each has its reference in its folder's ``naive.py``.
"""
from vidhash.kernels.block_score.ops import select_blocks_codes
from vidhash.kernels.block_select.ops import select_blocks_triton
from vidhash.kernels.memory.ops import memory_attend, memory_select, memory_write_fifo, memory_write_merge
from vidhash.kernels.remainder.ops import block_mean_remainder_triton
from vidhash.kernels.remainder.ops import covers as remainder_kernel_covers
from vidhash.kernels.signature.ops import block_signatures_triton, signatures_triton
from vidhash.kernels.sparse_attention.ops import SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS, block_sparse_attention_triton
from vidhash.kernels.sparse_attention.ops import hash_attention_triton as hash_attention

__all__ = [
    "SUPPORTED_DTYPES", "SUPPORTED_HEAD_DIMS", "block_mean_remainder_triton", "block_signatures_triton",
    "block_sparse_attention_triton", "remainder_kernel_covers",
    "hash_attention", "memory_attend", "memory_select", "memory_write_fifo", "memory_write_merge", "select_blocks_codes",
    "select_blocks_triton",
    "signatures_triton",
]
