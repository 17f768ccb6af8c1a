"""Launcher and public function of the block-mean remainder kernel (forward only).

Letters: b batch, h heads, c query blocks, j key blocks, d head_dim, e value dim.

:func:`block_mean_remainder_triton` — :func:`naive.block_mean_remainder` with the scores, softmax
and value sum in one Triton kernel (no ``queries × key blocks`` tensor in memory); the block means
and the kept-block mask are small torch ops. Non-causal selections, inference (no autograd):
``vidhash.attention.hash_attention`` calls it on the Triton backend when no input needs a gradient
and the selection is not causal, and the reference otherwise. Under ``torch.compile`` it is one
custom op (``vidhash::block_mean_remainder``).
"""
from __future__ import annotations

import torch
import triton

from vidhash.kernels.sparse_attention.ops import SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS, _last_dim_contiguous, _precision, autotuning
from vidhash.ops.checks import BlockSelection, check_qkv, resolve_scale

from .kernel import _INTERPRET, remainder_fwd_kernel
from .naive import block_means, unkept_blocks

_LOG2E = 1.4426950408889634


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection) -> None:
    check_qkv(q, k, v)
    if selection.causal:
        raise ValueError("the remainder kernel takes non-causal selections (the reference takes causal ones)")
    if q.dtype not in SUPPORTED_DTYPES or _dims_unsupported(q, v):
        raise ValueError(f"the remainder kernel takes {[str(t) for t in SUPPORTED_DTYPES]} with head_dim in "
                         f"{SUPPORTED_HEAD_DIMS}, got {q.dtype}, {q.shape[-1]} / {v.shape[-1]}")
    b, h, nq, _ = q.shape
    if selection.num_queries != nq or selection.num_keys != k.shape[-2] or tuple(selection.indices.shape[:2]) != (b, h):
        raise ValueError(f"selection was made for {selection.num_queries} queries / {selection.num_keys} keys / "
                         f"(b, h)={tuple(selection.indices.shape[:2])}, got {nq} / {k.shape[-2]} / {(b, h)}")


def _dims_unsupported(q: torch.Tensor, v: torch.Tensor) -> bool:
    return q.shape[-1] not in SUPPORTED_HEAD_DIMS or v.shape[-1] not in SUPPORTED_HEAD_DIMS


def covers(q: torch.Tensor, v: torch.Tensor, selection: BlockSelection) -> bool:
    """Whether the kernel takes these inputs (else the caller runs the reference)."""
    return not selection.causal and q.dtype in SUPPORTED_DTYPES and not _dims_unsupported(q, v)


def remainder_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, block_size: int,
                      query_block_size: int, sm_scale: float, base_out: torch.Tensor | None = None,
                      base_lse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the kernel; ``out (b, h, nq, e)`` in v's dtype, ``lse (b, h, nq)`` float32 — the remainder
    alone, or merged with ``base_out``/``base_lse`` (the kept blocks' attention) when given."""
    b, h, nq, d = q.shape
    nk, e = k.shape[-2], v.shape[-1]
    sel = BlockSelection(indices, block_size, query_block_size, nq, nk, False)
    q = _last_dim_contiguous(q)
    km, cnt = block_means(k, block_size)
    km = km.to(q.dtype).contiguous()
    vm = block_means(v, block_size)[0].to(v.dtype).contiguous()
    bias = cnt.float().log()
    unkept = unkept_blocks(sel).to(torch.int8).contiguous()
    out = torch.empty(b, h, nq, e, dtype=v.dtype, device=q.device)
    lse = torch.empty(b, h, nq, dtype=torch.float32, device=q.device)
    merge = base_out is not None
    if merge:
        base_out = _last_dim_contiguous(base_out)
        base_lse = base_lse.float().contiguous()
    o_in, lse_in = (base_out, base_lse) if merge else (out, lse)  # unread without MERGE
    grid = (sel.num_query_blocks, b * h)
    args = (q, km, vm, bias, unkept, out, lse, o_in, lse_in, sm_scale * _LOG2E, *q.stride()[:3], *km.stride()[:2],
            *vm.stride()[:2], *out.stride()[:3], *unkept.stride()[:3], *o_in.stride()[:3], h, nq, sel.num_key_blocks)
    meta = dict(BQ=query_block_size, BLOCK_M=max(16, triton.next_power_of_2(query_block_size)), D=d, E=e,
                PREC=_precision(q.dtype), MERGE=merge)
    if autotuning():
        remainder_fwd_kernel[grid](*args, **meta)
    else:
        remainder_fwd_kernel.fn[grid](*args, **meta, BLOCK_N=32 if _INTERPRET else 64, num_warps=4,
                                      num_stages=1 if _INTERPRET else 2)
    return out, lse


_op = torch.library.custom_op(
    "vidhash::block_mean_remainder", remainder_forward, mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor v, Tensor indices, int block_size, int query_block_size, float sm_scale, "
           "Tensor? base_out=None, Tensor? base_lse=None) -> (Tensor, Tensor)",
)


@_op.register_fake
def _(q, k, v, indices, block_size, query_block_size, sm_scale, base_out=None, base_lse=None):
    b, h, nq, _ = q.shape
    return v.new_empty(b, h, nq, v.shape[-1]), q.new_empty(b, h, nq, dtype=torch.float32)


def _describe(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: ({', '.join(type(x).__name__ for x in value)})"
    return type(value).__name__


def block_mean_remainder_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection, *,
                                scale: float | None = None,
                                merge_with: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`naive.block_mean_remainder` on the Triton kernel (non-causal, no gradient; ValueError
    for a causal selection, a dtype or head_dim the kernels do not take, or a scale ≤ 0; TypeError
    for a ``merge_with`` that is not a pair of tensors).

    ``merge_with=(out, lse)``: the kept blocks' attention of the same queries (``out (b, h, nq, e)``,
    ``lse (b, h, nq)``, e.g. ``block_sparse_attention_triton(..., return_lse=True)``); the kernel
    returns it merged with the remainder — ``merge_attention(out, lse, *remainder)`` in the kernel's
    epilogue, in ``out``'s dtype (= v's)."""
    _check(q, k, v, selection)
    sm_scale = resolve_scale(scale, q.shape[-1])
    if not sm_scale > 0 or sm_scale == float("inf"):
        raise ValueError(f"the Triton kernels need a positive finite scale, got {scale!r}")
    base_out = base_lse = None
    if merge_with is not None:
        if not (isinstance(merge_with, (tuple, list)) and len(merge_with) == 2
                and all(isinstance(x, torch.Tensor) for x in merge_with)):
            raise TypeError(f"merge_with must be a pair of tensors (out, lse) or None, got {_describe(merge_with)}")
        base_out, base_lse = merge_with
        b, h, nq, _ = q.shape
        if tuple(base_out.shape) != (b, h, nq, v.shape[-1]) or tuple(base_lse.shape) != (b, h, nq) \
                or base_out.dtype != v.dtype or base_out.device != q.device or base_lse.device != q.device:
            raise ValueError(f"merge_with must be (out {(b, h, nq, v.shape[-1])} in {v.dtype}, lse {(b, h, nq)}) "
                             f"on {q.device}, got {tuple(base_out.shape)} {base_out.dtype}, {tuple(base_lse.shape)}")
    return torch.ops.vidhash.block_mean_remainder(q, k, v, selection.indices.contiguous(), selection.block_size,
                                                  selection.query_block_size, sm_scale, base_out, base_lse)
