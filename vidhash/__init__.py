"""vidhash: long video generation with hash attention.

Core names (reference semantics, CPU and GPU)::

    from vidhash import hash_attention, HashedMemory, SimHash, LearnedHash, merge_attention
"""
from .attention import (
    BlockSelection,
    block_sparse_attention,
    bucket_attention,
    dense_attention,
    hash_attention,
    merge_attention,
    multi_hop_attention,
    select_blocks,
    selection_recall,
)
from .hashing import (
    LearnedHash,
    SimHash,
    bucket_index,
    hamming_similarity,
    pack_bits,
    popcount,
    token_bucket,
    unpack_bits,
)
from .memory import HashedMemory, MemoryConfig

__version__ = "0.1.0"


def enable_hash_attention(transformer, **config):
    """Swap a diffusers video transformer's self-attention for hash attention (see
    :mod:`vidhash.integrations.diffusers`)."""
    from .integrations.diffusers import enable_hash_attention as _enable

    return _enable(transformer, **config)


def disable_hash_attention(transformer):
    """Restore the attention processors :func:`enable_hash_attention` replaced."""
    from .integrations.diffusers import disable_hash_attention as _disable

    return _disable(transformer)


__all__ = [
    "BlockSelection", "HashedMemory", "LearnedHash", "MemoryConfig", "SimHash",
    "block_sparse_attention", "bucket_attention", "bucket_index", "dense_attention",
    "disable_hash_attention", "enable_hash_attention", "hamming_similarity", "hash_attention",
    "merge_attention", "multi_hop_attention", "pack_bits", "popcount", "select_blocks",
    "selection_recall", "token_bucket", "unpack_bits",
]
