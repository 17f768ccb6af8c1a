"""Launchers and public functions for the signature kernel (references: ``naive.py``).

Letters: b batch, h heads, n tokens, g blocks, d head_dim, k last layer's input width,
m bits, w words.

* :func:`signatures_triton` — ``hasher(x, role)`` for :class:`~vidhash.hashing.SimHash` (planes
  shared or per head) and :class:`~vidhash.hashing.LearnedHash` (the MLP's hidden layers run in
  PyTorch, exactly as the reference runs them; the last layer, the signs and the packing run in
  the kernel).
* :func:`block_signatures_triton` — :func:`naive.block_signatures`.
* :func:`signatures_and_buckets` — key signatures plus HashedMemory's bucket of each
  (:func:`naive.signatures_and_buckets`) in one launch.

Signatures carry no gradient. Bits equal the reference's except where a projection is within
float rounding of 0 (the kernel sums in another order; pooled blocks project the summed
inputs where the reference sums the projections).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton

from vidhash.hashing import LearnedHash, SimHash, num_words

from .kernel import signature_kernel

_MASK32 = 0xFFFFFFFF


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if not t.is_cuda and not interpreting():
            raise ValueError(
                f"the Triton kernels need CUDA tensors (got one on {t.device}); on CPU set TRITON_INTERPRET=1 "
                "or use backend='reference'"
            )


def _last_layer(x: torch.Tensor, hasher, role: str):
    """The input of the hasher's last linear map and that map: ``(inputs, weight (hw, k, m),
    bias (hw, m) | None, per_head)``. ``inputs`` keeps ``x``'s leading shape."""
    if isinstance(hasher, SimHash):
        if x.ndim < 2:
            raise ValueError(f"x must be (..., tokens, head_dim), got {tuple(x.shape)}")
        hasher.project(x[..., :0, :], role)  # the reference's shape and dtype checks
        planes = hasher.planes.to(device=x.device, dtype=torch.float32).contiguous()
        per_head = hasher.heads is not None and hasher.heads > 1
        return x, planes, None, per_head
    if isinstance(hasher, LearnedHash):
        hasher.project(x[..., :0, :], role)  # shape checks (and the role's name)
        mlp = hasher._mlp(role)
        a = x.float()
        with torch.no_grad():
            for w, b in zip(list(mlp.weights)[:-1], list(mlp.biases)[:-1]):
                a = F.silu(torch.matmul(a, w) + b)  # as _HeadMLP.forward does
        w_last = mlp.weights[-1].detach().to(torch.float32).contiguous()
        b_last = mlp.biases[-1].detach().to(torch.float32).reshape(w_last.shape[0], -1).contiguous()
        return a, w_last, b_last, True
    raise ValueError(f"signatures_triton supports SimHash and LearnedHash, got {type(hasher).__name__}")


def _launch(inputs4: torch.Tensor, weight, bias, per_head: bool, n_bits: int, pool: int,
            route: tuple[int, int, int] | None = None):
    """Run the kernel on ``inputs4 (b, h, n, k)``; returns ``(words (b, h, g, w), buckets | None)``."""
    if route is None and torch.compiler.is_compiling():  # one opaque op in the graph (no trace of the launch)
        return torch.ops.vidhash.signatures(inputs4, weight, bias, per_head, n_bits, pool), None
    b, h, n, k = inputs4.shape
    if per_head and weight.shape[0] != h:
        raise ValueError(f"the hasher has {weight.shape[0]} heads, the input {h}")
    nw = num_words(n_bits)
    g = -(-n // pool)
    out = torch.empty(b, h, g, nw, dtype=torch.int32, device=inputs4.device)
    buckets = torch.empty(b, h, g, dtype=torch.int32, device=inputs4.device) if route else out
    route_bits, num_buckets, key = route if route else (0, 1, 0)
    block_k = max(16, triton.next_power_of_2(k))
    block_g = 32 if block_k <= 64 else 16  # register budget of the fp32 (FMA) dot, no spills
    if b * h * g == 0:
        return out, (buckets if route else None)
    grid = (triton.cdiv(g, block_g), b * h)
    signature_kernel[grid](
        inputs4, weight, bias if bias is not None else weight, out, buckets,
        h, n, g, pool, k, n_bits,
        *inputs4.stride(),
        weight.stride(0) if per_head else 0, (bias.stride(0) if (bias is not None and per_head) else 0),
        NW=nw, BLOCK_G=block_g, BLOCK_K=block_k, HAS_BIAS=bias is not None,
        ROUTE_BITS=route_bits, NUM_BUCKETS=num_buckets,
        ROUTE_SEED=(0x9E3779B9 ^ (key & _MASK32)) & _MASK32,
        num_warps=4,
    )
    return out, (buckets if route else None)


def _signatures_kernel(inputs4: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, per_head: bool,
                       n_bits: int, pool: int) -> torch.Tensor:
    bias = bias.contiguous() if bias is not None else None  # (a compiled graph may hand the op other strides)
    return _launch(inputs4, weight.contiguous(), bias, per_head, n_bits, pool)[0]


_signatures_op = torch.library.custom_op(
    "vidhash::signatures", _signatures_kernel, mutates_args=(),
    schema="(Tensor inputs4, Tensor weight, Tensor? bias, bool per_head, int n_bits, int pool) -> Tensor",
)


@_signatures_op.register_fake
def _(inputs4, weight, bias, per_head, n_bits, pool):
    b, h, n, _ = inputs4.shape
    return inputs4.new_empty(b, h, -(-n // pool), num_words(n_bits), dtype=torch.int32)


@torch.no_grad()
def signatures_triton(x: torch.Tensor, hasher, role: str = "key") -> torch.Tensor:
    """``hasher(x, role)`` in one kernel: int32 ``(..., n, w)``.

    SimHash with shared planes takes any ``(..., d)``; per-head planes and LearnedHash take
    ``(..., heads, n, d)``.
    """
    check_device(x)
    inputs, weight, bias, per_head = _last_layer(x, hasher, role)
    k = inputs.shape[-1]
    if per_head:
        h, n = inputs.shape[-3:-1]
        inputs4 = inputs.reshape(-1, h, n, k)
    else:
        inputs4 = inputs.reshape(1, 1, -1, k)
    words, _ = _launch(inputs4, weight, bias, per_head, hasher.n_bits, 1)
    return words.reshape(*x.shape[:-1], -1)


@torch.no_grad()
def block_signatures_triton(x: torch.Tensor, block_size: int, hasher, role: str) -> torch.Tensor:
    """:func:`naive.block_signatures` in one kernel: the sign bits of the sum of each
    block's projections, int32 ``(b, h, ceil(n / block_size), w)``."""
    check_device(x)
    if x.ndim != 4:
        raise ValueError(f"x must be (batch, heads, tokens, head_dim), got {tuple(x.shape)}")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    inputs, weight, bias, per_head = _last_layer(x, hasher, role)
    words, _ = _launch(inputs, weight, bias, per_head, hasher.n_bits, block_size)
    return words


@torch.no_grad()
def signatures_and_buckets(x: torch.Tensor, hasher: SimHash, route_bits: int, num_buckets: int, key: int):
    """Key signatures of ``x (b, h, t, d)`` and the bucket of each (int32 ``(b, h, t)``): the
    first ``route_bits`` bits through :func:`vidhash.hashing.bucket_index` with ``key``."""
    check_device(x)
    inputs, weight, bias, per_head = _last_layer(x, hasher, "key")
    return _launch(inputs, weight, bias, per_head, hasher.n_bits, 1, route=(route_bits, num_buckets, key))
