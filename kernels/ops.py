"""Public Triton ops of vidhash (``vidhash.kernels.ops``): one import line per op folder.

``vidhash.attention.hash_attention(..., backend="triton")`` calls :func:`hash_attention` here.
"""
from vidhash.kernels.block_select.ops import select_blocks_triton
from vidhash.kernels.memory.ops import memory_attend, memory_select, memory_write_fifo, memory_write_merge
from vidhash.kernels.signature.ops import block_signatures_triton, signatures_triton
from vidhash.kernels.sparse_attention.ops import SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS, block_sparse_attention_triton
from vidhash.kernels.sparse_attention.ops import hash_attention_triton as hash_attention

__all__ = [
    "SUPPORTED_DTYPES", "SUPPORTED_HEAD_DIMS", "block_signatures_triton", "block_sparse_attention_triton",
    "hash_attention", "memory_attend", "memory_select", "memory_write_fifo", "memory_write_merge", "select_blocks_triton",
    "signatures_triton",
]
