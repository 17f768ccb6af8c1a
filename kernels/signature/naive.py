"""Naive PyTorch reference of the signature op (what ``ops.py`` computes in one kernel).

Letters: b batch, h heads, n tokens, g blocks, r bits, w packed words.

* ``hasher(x, role)`` itself (:class:`~vidhash.hashing.SimHash`, :class:`~vidhash.hashing.LearnedHash`)
  is the reference of :func:`~vidhash.kernels.signature.ops.signatures_triton`.
* :func:`block_signatures` — of :func:`~vidhash.kernels.signature.ops.block_signatures_triton`.
* :func:`route_buckets` / :func:`signatures_and_buckets` — of
  :func:`~vidhash.kernels.signature.ops.signatures_and_buckets` (HashedMemory's routing).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidhash.hashing import bucket_index, pack_bits, unpack_bits


def block_signatures(x: torch.Tensor, block_size: int, hasher: nn.Module, role: str) -> torch.Tensor:
    """Signature of each block of ``x (b, h, n, d)``: sign bits of the block's mean projection.

    For SimHash this is the signature of the block's mean vector; ``block_size=1`` gives the
    per-token signatures. Returns int32 ``(b, h, ceil(n / block_size), w)``.
    """
    n = x.shape[-2]
    z = hasher.project(x, role)  # (b, h, n, r) float32
    if block_size > 1:
        nb = -(-n // block_size)
        z = F.pad(z, (0, 0, 0, nb * block_size - n)).reshape(*z.shape[:-2], nb, block_size, z.shape[-1]).sum(-2)
    return pack_bits(z > 0)


def route_buckets(signatures: torch.Tensor, n_bits: int, route_bits: int, num_buckets: int, key: int) -> torch.Tensor:
    """Bucket of each signature ``(..., w)`` → int64 ``(...)``: its first ``route_bits`` bits
    (an LSH code) through the keyed mixing hash :func:`~vidhash.hashing.bucket_index`."""
    code = pack_bits(unpack_bits(signatures, n_bits)[..., :route_bits])
    return bucket_index(code, num_buckets, key=key)


@torch.no_grad()
def signatures_and_buckets(x: torch.Tensor, hasher, route_bits: int, num_buckets: int, key: int):
    """Key signatures of ``x (b, h, t, d)`` (int32 ``(b, h, t, w)``) and the bucket of each
    (int64 ``(b, h, t)``)."""
    sig = hasher(x, role="key")
    return sig, route_buckets(sig, hasher.n_bits, route_bits, num_buckets, key)
