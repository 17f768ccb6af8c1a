"""Which implementation a call runs: the naive PyTorch reference or the Triton kernels.

Only the library's dispatching functions import this module (``vidhash.attention.hash_attention``,
``HashedMemory.write`` / ``attend``): it reaches :mod:`vidhash.kernels.ops`, so a module under
``kernels/`` importing it would close an import cycle (tests/test_imports.py fails on that).
"""
from __future__ import annotations

import torch

from .checks import check_backend


def triton_ops():
    """:mod:`vidhash.kernels.ops` (the public Triton functions); ValueError if it cannot import.

    Imported on first use: triton is an optional dependency (no wheel on every platform), and
    ``import vidhash`` must work without it."""
    try:
        from vidhash.kernels import ops  # optional dependency: triton
    except Exception as err:  # pragma: no cover - depends on the installation
        raise ValueError(f"backend='triton' is unavailable: {err}") from err
    return ops


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """``"reference"`` or ``"triton"``: ``auto`` → ``triton`` for CUDA tensors when the kernels
    import, else ``reference``; the other two unchanged. ValueError for anything else."""
    check_backend(backend)
    if backend != "auto":
        return backend
    if all(t.is_cuda for t in tensors):
        try:
            triton_ops()
            return "triton"
        except ValueError:
            return "reference"
    return "reference"
