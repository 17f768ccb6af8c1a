"""Launcher for the block-selection kernel and the public ``select_blocks_triton``
(reference: :func:`naive.select_blocks`).

Letters: b batch, h heads, c query blocks, j key blocks, w packed signature words.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton

from vidhash.hashing import SimHash, default_hasher, pack_bits
from vidhash.kernels.signature.naive import block_signatures
from vidhash.kernels.signature.ops import block_signatures_triton
from vidhash.ops.checks import BlockSelection, check_qkv, check_selection_args

from .kernel import block_select_kernel
from .naive import max_forced_blocks, num_kept_blocks  # noqa: F401  (kept sizes: Python integers, one graph)

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _block_k(nkb: int) -> int:
    """Key blocks scored per inner step: one power of two, at most 1024 (bounded choice)."""
    if _INTERPRET:
        return max(16, min(64, triton.next_power_of_2(nkb)))
    return max(128, min(1024, triton.next_power_of_2(nkb)))


SIGNATURE_METHODS = ("pooled", "kernel", "reference")


def block_signatures_fast(x: torch.Tensor, block_size: int, hasher, role: str, method: str = "auto") -> torch.Tensor:
    """Block signatures ``(b, h, blocks, w)`` int32, three ways:

    * ``"reference"`` — :func:`~vidhash.kernels.signature.naive.block_signatures` (fp32 copy of
      ``x``, project every token, sum the projections of a block);
    * ``"pooled"`` — SimHash only: sum each block of ``x`` in fp32 (one read of ``x``), then
      project the sums (projection is linear);
    * ``"kernel"`` — the signature kernel of ``kernels/signature`` (one pass over ``x``);
    * ``"auto"`` — on CUDA ``"kernel"`` for head_dim ≤ 64 and ``"reference"``
      above, the fastest measured on an H100 (N = 131,072, 12 heads, bf16: q+k signatures
      0.46 / 0.96 / 1.75 ms kernel / pooled / reference at d = 64; 1.42 / 0.89 / 0.85 ms at
      d = 128, N = 32,760); on CPU ``"reference"``.

    ``pooled`` and ``kernel`` sum in another order than the reference: a bit can differ where a
    block's projection is within float rounding of 0.
    """
    if method == "auto":
        method = "kernel" if x.is_cuda and x.shape[-1] <= 64 else "reference"
    if method not in SIGNATURE_METHODS:
        raise ValueError(f"method must be 'auto' or one of {SIGNATURE_METHODS}, got {method!r}")
    if method == "pooled" and isinstance(hasher, SimHash):
        b, h, n, d = x.shape
        nb = -(-n // block_size)
        if nb * block_size != n:
            x = F.pad(x, (0, 0, 0, nb * block_size - n))
        pooled = x.reshape(b, h, nb, block_size, d).sum(-2, dtype=torch.float32)
        return pack_bits(hasher.project(pooled, role) > 0)
    if method == "kernel":
        return block_signatures_triton(x, block_size, hasher, role)
    return block_signatures(x, block_size, hasher, role)


def select_from_signatures(
    q_sig: torch.Tensor,
    k_sig: torch.Tensor,
    *,
    n_bits: int,
    kept: int,
    num_queries: int,
    num_keys: int,
    block_size: int,
    query_block_size: int,
    local_blocks: int,
    sink_blocks: int,
    causal: bool,
) -> torch.Tensor:
    """Run the selection kernel on block signatures ``q_sig (b, h, c, w)``, ``k_sig (b, h, j, w)``.

    Returns int32 indices ``(b, h, c, kept)``, ascending, ``-1``-padded. With ``kept`` equal to
    the number of key blocks no signatures are read (``q_sig``/``k_sig`` may be ``None``).
    """
    bk, bq = block_size, query_block_size
    nqb, nkb = -(-num_queries // bq), -(-num_keys // bk)
    use_sig = kept < nkb
    if use_sig:
        if q_sig.dtype != torch.int32 or k_sig.dtype != torch.int32:
            raise ValueError(f"signatures must be int32, got {q_sig.dtype} and {k_sig.dtype}")
        if q_sig.shape[:2] != k_sig.shape[:2] or q_sig.shape[-1] != k_sig.shape[-1]:
            raise ValueError(f"q_sig {tuple(q_sig.shape)} and k_sig {tuple(k_sig.shape)} disagree in (b, h) or words")
        if q_sig.shape[-2] != nqb or k_sig.shape[-2] != nkb:
            raise ValueError(f"expected {nqb} query-block and {nkb} key-block signatures, got {q_sig.shape[-2]} and {k_sig.shape[-2]}")
        if q_sig.shape[-1] * 32 < n_bits:
            raise ValueError(f"{q_sig.shape[-1]} signature words cannot hold n_bits={n_bits}")
        q_sig, k_sig = q_sig.contiguous(), k_sig.contiguous()
    else:  # signatures not read: (b, h) of whichever is given, one dummy word
        ref = q_sig if q_sig is not None else k_sig
        dummy = torch.zeros(1, 1, 1, 1, dtype=torch.int32, device=ref.device)
        q_sig, k_sig = dummy.expand(ref.shape[0], ref.shape[1], 1, 1), dummy
    args = (q_sig, k_sig, n_bits, kept, num_queries, num_keys, bk, bq, local_blocks, sink_blocks, bool(causal), use_sig)
    if torch.compiler.is_compiling():  # one opaque op in the graph (no trace of the launch)
        return torch.ops.vidhash.block_select(*args)
    return _select_kernel(*args)


def _select_kernel(q_sig: torch.Tensor, k_sig: torch.Tensor, n_bits: int, kept: int, num_queries: int, num_keys: int,
                   block_size: int, query_block_size: int, local_blocks: int, sink_blocks: int, causal: bool,
                   use_sig: bool) -> torch.Tensor:
    """Launch the kernel on checked signatures (``use_sig=False``: dummies, not read)."""
    if use_sig:  # (again: a compiled graph may hand the op other strides)
        q_sig, k_sig = q_sig.contiguous(), k_sig.contiguous()
    b, h, w = q_sig.shape[0], q_sig.shape[1], q_sig.shape[-1] if use_sig else 1
    nqb, nkb = -(-num_queries // query_block_size), -(-num_keys // block_size)
    out = torch.empty(b, h, nqb, kept, dtype=torch.int32, device=q_sig.device)
    block_select_kernel[(nqb, b * h)](
        q_sig, k_sig, out,
        *(q_sig.stride()[:3] if use_sig else (0, 0, 0)),
        *(k_sig.stride()[:3] if use_sig else (0, 0, 0)),
        *out.stride()[:3],
        h, num_queries, num_keys, nkb, kept, query_block_size, block_size, local_blocks, sink_blocks,
        N_BITS=n_bits, W=w, NBINS=triton.next_power_of_2(n_bits + 2),
        CAUSAL=causal, USE_SIG=use_sig, BLOCK_K=_block_k(nkb),
        num_warps=4,
    )
    return out


_select_op = torch.library.custom_op(
    "vidhash::block_select", _select_kernel, mutates_args=(),
    schema="(Tensor q_sig, Tensor k_sig, int n_bits, int kept, int num_queries, int num_keys, int block_size, "
           "int query_block_size, int local_blocks, int sink_blocks, bool causal, bool use_sig) -> Tensor",
)


@_select_op.register_fake
def _(q_sig, k_sig, n_bits, kept, num_queries, num_keys, block_size, query_block_size, local_blocks, sink_blocks,
      causal, use_sig):
    return q_sig.new_empty(q_sig.shape[0], q_sig.shape[1], -(-num_queries // query_block_size), kept, dtype=torch.int32)


@torch.no_grad()
def select_blocks_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    density: float = 0.125,
    block_size: int = 64,
    query_block_size: int | None = None,
    local_blocks: int = 1,
    sink_blocks: int = 1,
    causal: bool = False,
    hasher=None,
    exact_signatures: bool = False,
) -> BlockSelection:
    """:func:`naive.select_blocks` with the top-k done by the Triton kernel.

    Same arguments, same :class:`~vidhash.ops.checks.BlockSelection`. Given the same block
    signatures the indices equal the reference's exactly (ranking by histogram threshold and
    prefix-sum compaction: no sort, no ``query blocks × key blocks`` tensor). On CUDA the block
    signatures are computed in one pass over ``q``/``k`` (:func:`block_signatures_fast`, a bit
    can differ where a block's projection rounds to 0); ``exact_signatures=True`` uses the
    reference's :func:`~vidhash.kernels.signature.naive.block_signatures`.
    """
    check_qkv(q, k)
    density, bk, bq = check_selection_args(density, block_size, query_block_size, local_blocks, sink_blocks)
    hasher = hasher if hasher is not None else default_hasher(q.shape[-1], device=q.device)
    nq, nk = q.shape[-2], k.shape[-2]
    kept = num_kept_blocks(nq, nk, density=density, block_size=bk, query_block_size=bq,
                           local_blocks=local_blocks, sink_blocks=sink_blocks, causal=causal)
    nkb = -(-nk // bk)
    if kept < nkb:
        method = "reference" if exact_signatures else "auto"
        q_sig = block_signatures_fast(q, bq, hasher, "query", method)
        k_sig = block_signatures_fast(k, bk, hasher, "key", method)
    else:
        q_sig, k_sig = q[..., :1, :1], None  # shape (b, h, ...) only
    idx = select_from_signatures(
        q_sig, k_sig, n_bits=hasher.n_bits, kept=kept, num_queries=nq, num_keys=nk,
        block_size=bk, query_block_size=bq, local_blocks=local_blocks, sink_blocks=sink_blocks, causal=causal,
    )
    return BlockSelection(idx, bk, bq, nq, nk, causal)
