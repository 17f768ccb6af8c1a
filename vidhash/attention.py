"""Functional attention: the reference semantics every fast path is tested against.

Letters: b batch, h heads, n tokens (q: nq, k: nk), d head_dim, e value dim,
c query blocks in one chunk, j kept key blocks, r bits, w packed words.

Tensors are ``(batch, heads, tokens, head_dim)``; autograd runs through everything that takes
real-valued inputs (selection itself is discrete and carries no gradient).

* :func:`dense_attention` — exact softmax attention that also returns the log-sum-exp.
* :func:`select_blocks` / :class:`BlockSelection` — per query block, the key blocks to keep:
  sink blocks, local blocks, then the most similar by Hamming similarity of pooled signatures
  (ties go to the lower block index). A compact ``(b, h, query_blocks, kept)`` index list; the
  Triton kernels produce and consume the same list.
* :func:`block_sparse_attention` — exact softmax over the kept blocks only.
* :func:`hash_attention` — the two together; ``density=1.0`` is dense attention.
* :func:`selection_recall` — share of the exact attention mass the kept keys hold.
* :func:`bucket_attention`, :func:`multi_hop_attention`, :func:`merge_attention`.

Causal masks are aligned bottom-right (query ``i`` sees key ``j`` iff ``j <= i + nk - nq``),
as in FlashAttention. No function here builds an ``nq × nk`` tensor unless it computes dense
attention: sparse paths work in chunks of query blocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .hashing import SimHash, bucket_index, hamming_similarity, pack_bits

BACKENDS = ("auto", "reference", "triton")
MAX_BLOCK_SIZE = 128
# Work budget (elements of the largest temporary) for one chunk of the chunked reference paths.
_CHUNK_ELEMS = 1 << 23
_DEFAULT_HASHERS: dict[tuple[int, int], SimHash] = {}


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> None:
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
    if v is not None and v.shape[-2] != k.shape[-2]:
        raise ValueError(f"v has {v.shape[-2]} tokens, k has {k.shape[-2]}")
    if k.shape[-2] < 1:
        raise ValueError("k must hold at least one token")


def _check_density(density: float) -> float:
    if not isinstance(density, (int, float)) or isinstance(density, bool) or not (0.0 < float(density) <= 1.0) or math.isnan(density):
        raise ValueError(f"density must be a number in (0, 1], got {density!r}")
    return float(density)


def _check_block(name: str, size: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_BLOCK_SIZE:
        raise ValueError(f"{name} must be an int in [1, {MAX_BLOCK_SIZE}], got {size!r}")
    return size


def _check_count(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def _acc(x: torch.Tensor) -> torch.Tensor:
    """Accumulation precision of the reference: float64 stays float64, the rest float32."""
    return x if x.dtype == torch.float64 else x.float()


def _scale(scale: float | None, d: int) -> float:
    return 1.0 / math.sqrt(d) if scale is None else float(scale)


# --------------------------------------------------------------------------------------------
# dense attention and the lse merge
# --------------------------------------------------------------------------------------------
def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = False,
    return_lse: bool = False,
    key_bias: torch.Tensor | None = None,
):
    """Exact attention in float32 arithmetic; returns ``out`` (q's dtype) and optionally
    ``lse (b, h, nq)`` in float32 (``-inf`` for a query that sees no key). ``key_bias (b, h, nk)``:
    added to every query's score of that key (a log weight; ``-inf`` leaves the key out)."""
    _check_qkv(q, k, v)
    nq, nk = q.shape[-2], k.shape[-2]
    s = torch.matmul(_acc(q), _acc(k).transpose(-1, -2)) * _scale(scale, q.shape[-1])
    if key_bias is not None:
        s = s + key_bias.to(s.dtype).unsqueeze(-2)
    if causal:
        allowed = torch.arange(nk, device=q.device) <= (torch.arange(nq, device=q.device) + nk - nq).unsqueeze(-1)
        s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.masked_fill(torch.isinf(lse), 0.0).unsqueeze(-1))
    out = torch.matmul(p, _acc(v)).to(q.dtype)
    return (out, lse) if return_lse else out


_EMPTY_LOGIT = -30000.0  # a left-out key's score in the fused path (exp underflows to exactly 0)


def fused_attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                        key_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``dense_attention(q, k, v, scale=scale, return_lse=True, key_bias=key_bias)`` through
    PyTorch's fused attention kernels, which never hold the ``(nq, nk)`` scores: flash attention
    on CUDA for bf16/fp16, memory-efficient attention on CUDA for float32, the CPU flash kernel
    on a CPU. Inference only (the fused kernels give no gradient through lse): with gradients
    needed, or for float64, it calls :func:`dense_attention`.

    ``key_bias (b, h, nk)`` enters as one more channel — 1 in every query, ``bias / scale`` in
    every key — so ``scale · q'·k' = scale · q·k + bias``; a ``-inf`` bias (a key left out)
    becomes a score of −30,000, whose weight is exactly 0. Channels are zero-padded to a
    multiple of 8. In bf16 the bias channel is rounded to 8 bits of mantissa (≈0.4% of the
    bias: 0.01 for a count of 16). A query whose keys are all left out gets ``out = 0`` and
    ``lse = -inf``, as in :func:`dense_attention`. ``out`` has q's dtype, ``lse`` float32.
    """
    _check_qkv(q, k, v)
    sc = _scale(scale, q.shape[-1])
    dt = q.dtype
    cuda_ok = q.is_cuda and dt in (torch.bfloat16, torch.float16, torch.float32)
    cpu_ok = q.device.type == "cpu" and dt in (torch.bfloat16, torch.float32)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if needs_grad or not (cuda_ok or cpu_ok) or q.shape[-1] + 1 > 256:
        return dense_attention(q, k, v, scale=scale, return_lse=True, key_bias=key_bias)
    b, h, n, d = q.shape
    nk = k.shape[-2]
    extra = 0 if key_bias is None else 1
    dp = -(-(d + extra) // 8) * 8
    qa = q.new_zeros(b, h, n, dp)
    qa[..., :d] = q
    ka = q.new_zeros(b, h, nk, dp)
    ka[..., :d] = k
    va = q.new_zeros(b, h, nk, dp)
    va[..., :d] = v
    if key_bias is not None:
        if key_bias.shape != (b, h, nk):
            raise ValueError(f"key_bias must be (b, h, nk) = {(b, h, nk)}, got {tuple(key_bias.shape)}")
        kb = key_bias.float()
        qa[..., d] = 1.0
        ka[..., d] = torch.where(torch.isfinite(kb), kb, _EMPTY_LOGIT) / sc
    if q.is_cuda and dt != torch.float32:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(qa, ka, va, 0.0, False, False, scale=sc)[:2]
    elif q.is_cuda:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(qa, ka, va, None, True, 0.0, False, scale=sc)[:2]
        lse = lse[..., :n]  # padded to a multiple of 32 queries
    else:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qa, ka, va, 0.0, False, scale=sc)[:2]
    out, lse = out[..., :d], lse.float()
    if key_bias is not None:  # rows that saw only left-out keys
        empty = lse < _EMPTY_LOGIT / 2
        lse = lse.masked_fill(empty, float("-inf"))
        out = out.masked_fill(empty.unsqueeze(-1), 0.0)
    return out.contiguous(), lse


def merge_attention(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor):
    """Exact merge of two partial attentions over disjoint key sets.

    ``o`` are ``(..., n, e)``, ``lse`` ``(..., n)``. A side with ``lse = -inf`` (no keys)
    contributes nothing; if both are empty the result is ``0`` with ``lse = -inf``.
    """
    if o1.shape != o2.shape or lse1.shape != lse2.shape or o1.shape[:-1] != lse1.shape:
        raise ValueError(
            f"merge_attention needs o1, o2 of one shape (..., n, e) and lse1, lse2 of shape (..., n); "
            f"got {tuple(o1.shape)}, {tuple(o2.shape)}, {tuple(lse1.shape)}, {tuple(lse2.shape)}"
        )
    l1, l2 = _acc(lse1), _acc(lse2)
    lse = torch.logaddexp(l1, l2)
    safe = lse.masked_fill(torch.isinf(lse), 0.0)
    w1 = torch.exp(l1 - safe).masked_fill(torch.isinf(lse), 0.0)
    w2 = torch.exp(l2 - safe).masked_fill(torch.isinf(lse), 0.0)
    out = w1.unsqueeze(-1) * _acc(o1) + w2.unsqueeze(-1) * _acc(o2)
    return out.to(o1.dtype), lse


# --------------------------------------------------------------------------------------------
# block selection
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


def default_hasher(head_dim: int, n_bits: int = 32) -> SimHash:
    """The SimHash used when none is given (seed 0, shared across heads), cached per size."""
    key = (head_dim, n_bits)
    if key not in _DEFAULT_HASHERS:
        _DEFAULT_HASHERS[key] = SimHash(head_dim, n_bits, seed=0)
    return _DEFAULT_HASHERS[key]


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


def _num_kept(density: float, nkb: int) -> int:
    return max(1, min(nkb, math.ceil(density * nkb - 1e-9)))


def _forced_and_allowed(
    qb_idx: torch.Tensor, nq: int, nk: int, bq: int, bk: int, local_blocks: int, sink_blocks: int, causal: bool
):
    """Masks ``(c, nkb)``: key blocks forced (sink/local) and allowed (causal) for query blocks."""
    nkb = -(-nk // bk)
    off = nk - nq
    q_lo = qb_idx * bq + off  # first query position of each block, in key coordinates
    q_hi = torch.clamp(qb_idx * bq + bq, max=nq) - 1 + off  # last
    kb = torch.arange(nkb, device=qb_idx.device)
    k_lo, k_hi = kb * bk, torch.clamp(kb * bk + bk, max=nk) - 1
    if causal:
        allowed = k_lo.unsqueeze(0) <= q_hi.unsqueeze(-1)
    else:
        allowed = torch.ones(qb_idx.numel(), nkb, dtype=torch.bool, device=qb_idx.device)
    forced = (kb < sink_blocks).unsqueeze(0).expand(qb_idx.numel(), nkb).clone()
    if local_blocks > 0:
        lo = q_lo - (local_blocks - 1) * bk
        hi = q_hi + (0 if causal else (local_blocks - 1) * bk)
        forced |= (k_hi.unsqueeze(0) >= lo.unsqueeze(-1)) & (k_lo.unsqueeze(0) <= hi.unsqueeze(-1))
    return forced & allowed, allowed


def _topk_ascending(rank: torch.Tensor, kept: int) -> torch.Tensor:
    """Indices of the ``kept`` largest ``rank`` values (rank < 0 = not allowed → -1), ascending."""
    top = rank.topk(kept, dim=-1)
    idx = torch.where(top.values >= 0, top.indices, torch.full_like(top.indices, rank.shape[-1]))
    idx = idx.sort(dim=-1).values
    return torch.where(idx == rank.shape[-1], -1, idx).to(torch.int32)


@torch.no_grad()
def select_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    density: float = 0.125,
    block_size: int = 64,
    query_block_size: int | None = None,
    local_blocks: int = 1,
    sink_blocks: int = 1,
    causal: bool = False,
    hasher: nn.Module | None = None,
) -> BlockSelection:
    """Choose the key blocks each query block attends to.

    Every query block keeps ``kept = max(ceil(density * key_blocks), most forced blocks of any
    query block)`` key blocks: first its forced blocks (the first ``sink_blocks``; the key
    blocks overlapping its own positions, widened by ``local_blocks - 1`` blocks before — and,
    non-causal, after — it), then the rest by Hamming similarity of block signatures, ties to
    the lower block index. Causal attention never keeps a block wholly in the future.
    """
    _check_qkv(q, k)
    density = _check_density(density)
    bk = _check_block("block_size", block_size)
    bq = _check_block("query_block_size", query_block_size if query_block_size is not None else block_size)
    _check_count("local_blocks", local_blocks)
    _check_count("sink_blocks", sink_blocks)
    hasher = hasher if hasher is not None else default_hasher(q.shape[-1])
    n_bits = hasher.n_bits
    nq, nk = q.shape[-2], k.shape[-2]
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    b, h = q.shape[:2]

    kept = _num_kept(density, nkb)
    if kept < nkb and (local_blocks or sink_blocks):
        # Budget must cover the largest forced set of any query block.
        all_forced, _ = _forced_and_allowed(torch.arange(nqb, device=q.device), nq, nk, bq, bk, local_blocks, sink_blocks, causal)
        kept = min(nkb, max(kept, int(all_forced.sum(-1).max())))
    if kept == nkb:
        # Everything is kept: no signatures needed.
        _, allowed = _forced_and_allowed(torch.arange(nqb, device=q.device), nq, nk, bq, bk, 0, 0, causal)
        rank = torch.where(allowed, nkb - torch.arange(nkb, device=q.device), -1)
        idx = _topk_ascending(rank, kept).expand(b, h, nqb, kept).contiguous()
        return BlockSelection(idx, bk, bq, nq, nk, causal)

    q_sig = block_signatures(q, bq, hasher, "query")
    k_sig = block_signatures(k, bk, hasher, "key")
    out = torch.empty(b, h, nqb, kept, dtype=torch.int32, device=q.device)
    chunk = max(1, _CHUNK_ELEMS // max(1, b * h * nkb * q_sig.shape[-1]))
    tie = nkb - torch.arange(nkb, device=q.device, dtype=torch.int64)
    for start in range(0, nqb, chunk):
        qb_idx = torch.arange(start, min(nqb, start + chunk), device=q.device)
        forced, allowed = _forced_and_allowed(qb_idx, nq, nk, bq, bk, local_blocks, sink_blocks, causal)
        sim = hamming_similarity(q_sig[:, :, qb_idx], k_sig, n_bits).to(torch.int64)  # (b, h, c, nkb)
        score = torch.where(forced, n_bits + 1, sim)
        rank = torch.where(allowed, score * (nkb + 1) + tie, -1)
        out[:, :, start : start + qb_idx.numel()] = _topk_ascending(rank, kept)
    return BlockSelection(out, bk, bq, nq, nk, causal)


def _kept_tokens(selection: BlockSelection, qb_idx: torch.Tensor, idx: torch.Tensor):
    """Key token indices ``(b, h, c, j * bk)`` for chunk ``qb_idx`` and their validity mask
    ``(b, h, c, bq, j * bk)`` (padding blocks, keys past the end, causal)."""
    bk, bq = selection.block_size, selection.query_block_size
    nq, nk = selection.num_queries, selection.num_keys
    tok = (idx.to(torch.int64).unsqueeze(-1) * bk + torch.arange(bk, device=idx.device)).flatten(-2)
    valid_k = (idx.to(torch.int64).unsqueeze(-1) >= 0).expand(*idx.shape, bk).flatten(-2) & (tok < nk)
    qpos = qb_idx.unsqueeze(-1) * bq + torch.arange(bq, device=idx.device)  # (c, bq)
    valid = valid_k.unsqueeze(-2) & (qpos < nq).unsqueeze(-1)
    if selection.causal:
        valid = valid & (tok.unsqueeze(-2) <= (qpos + nk - nq).unsqueeze(-1))
    return tok.clamp(0, nk - 1), valid


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    selection: BlockSelection,
    *,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Exact softmax attention of each query block over its kept key blocks only."""
    _check_qkv(q, k, v)
    b, h, nq, d = q.shape
    nk, e = k.shape[-2], v.shape[-1]
    if selection.num_queries != nq or selection.num_keys != nk or selection.indices.shape[:2] != (b, h):
        raise ValueError(
            f"selection was made for {selection.num_queries} queries / {selection.num_keys} keys / "
            f"(b, h)={tuple(selection.indices.shape[:2])}, got {nq} / {nk} / {(b, h)}"
        )
    bq, kept, bk = selection.query_block_size, selection.kept, selection.block_size
    nqb = selection.num_query_blocks
    sc = _scale(scale, d)
    qp = F.pad(_acc(q), (0, 0, 0, nqb * bq - nq)).reshape(b, h, nqb, bq, d)
    kf, vf = _acc(k), _acc(v)
    outs, lses = [], []
    chunk = max(1, _CHUNK_ELEMS // max(1, b * h * bq * kept * bk))
    for start in range(0, nqb, chunk):
        qb_idx = torch.arange(start, min(nqb, start + chunk), device=q.device)
        idx = selection.indices[:, :, start : start + qb_idx.numel()]
        tok, valid = _kept_tokens(selection, qb_idx, idx)  # (b, h, c, L), (b, h, c, bq, L)
        c, L = qb_idx.numel(), tok.shape[-1]
        gather = tok.reshape(b, h, c * L, 1)
        kg = torch.gather(kf, 2, gather.expand(b, h, c * L, d)).reshape(b, h, c, L, d)
        vg = torch.gather(vf, 2, gather.expand(b, h, c * L, e)).reshape(b, h, c, L, e)
        s = torch.matmul(qp[:, :, start : start + c], kg.transpose(-1, -2)) * sc  # (b, h, c, bq, L)
        s = s.masked_fill(~valid, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - lse.masked_fill(torch.isinf(lse), 0.0).unsqueeze(-1))
        outs.append(torch.matmul(p, vg))
        lses.append(lse)
    out = torch.cat(outs, dim=2).reshape(b, h, nqb * bq, e)[:, :, :nq].to(q.dtype)
    if not return_lse:
        return out
    return out, torch.cat(lses, dim=2).reshape(b, h, nqb * bq)[:, :, :nq]


# --------------------------------------------------------------------------------------------
# hash attention
# --------------------------------------------------------------------------------------------
def _triton_ops():
    try:
        from vidhash.kernels import ops  # noqa: WPS433 (optional dependency)
    except Exception as err:  # pragma: no cover - depends on the installation
        raise ValueError(f"backend='triton' is unavailable: {err}") from err
    return ops


def _kernels_cover(q: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Triton attention kernels take this head_dim and dtype (else a forced 'triton' raises)."""
    ops = _triton_ops()
    return (q.shape[-1] in ops.SUPPORTED_HEAD_DIMS and v.shape[-1] in ops.SUPPORTED_HEAD_DIMS
            and q.dtype in ops.SUPPORTED_DTYPES)


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """``auto`` → ``triton`` for CUDA tensors when the kernels import, else ``reference``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if all(t.is_cuda for t in tensors):
        try:
            _triton_ops()
            return "triton"
        except ValueError:
            return "reference"
    return "reference"


def hash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    density: float = 0.125,
    block_size: int = 64,
    query_block_size: int | None = None,
    local_blocks: int = 1,
    sink_blocks: int = 1,
    causal: bool = False,
    hasher: nn.Module | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str = "auto",
):
    """Hash attention: each query block attends exactly to the key blocks whose signatures are
    most similar to its own, plus sink and local blocks (see :func:`select_blocks`).

    ``block_size=1`` selects per token (HashAttention's setting). ``density=1.0`` keeps every
    block and equals ``scaled_dot_product_attention``.

    >>> q, k, v = (torch.randn(1, 2, 300, 64) for _ in range(3))
    >>> out = hash_attention(q, k, v, density=0.25, block_size=32)
    >>> out.shape
    torch.Size([1, 2, 300, 64])
    """
    _check_qkv(q, k, v)
    which = resolve_backend(backend, q, k, v)
    if which == "triton" and backend == "auto" and not _kernels_cover(q, v):
        which = "reference"  # auto stays quiet: shapes the kernels do not take run the reference
    if which == "triton":
        return _triton_ops().hash_attention(
            q, k, v, density=density, block_size=block_size, query_block_size=query_block_size,
            local_blocks=local_blocks, sink_blocks=sink_blocks, causal=causal, hasher=hasher,
            scale=scale, return_lse=return_lse,
        )
    sel = select_blocks(
        q, k, density=density, block_size=block_size, query_block_size=query_block_size,
        local_blocks=local_blocks, sink_blocks=sink_blocks, causal=causal, hasher=hasher,
    )
    return block_sparse_attention(q, k, v, sel, scale=scale, return_lse=return_lse)


@torch.no_grad()
def selection_recall(
    q: torch.Tensor,
    k: torch.Tensor,
    selection: BlockSelection,
    *,
    scale: float | None = None,
    max_query_blocks: int | None = None,
) -> float:
    """Mean over queries of the share of exact attention mass held by the kept keys.

    ``max_query_blocks`` evaluates an evenly spaced subset of query blocks (for large inputs).
    1.0 means the selection lost nothing.
    """
    _check_qkv(q, k)
    b, h, nq, d = q.shape
    nk = k.shape[-2]
    bq, bk = selection.query_block_size, selection.block_size
    nqb = selection.num_query_blocks
    blocks = torch.arange(nqb, device=q.device)
    if max_query_blocks is not None and max_query_blocks < nqb:
        blocks = torch.linspace(0, nqb - 1, max_query_blocks, device=q.device).round().long().unique()
    sc = _scale(scale, d)
    total, count = torch.zeros((), dtype=torch.float64, device=q.device), 0
    kf = k.float()
    chunk = max(1, _CHUNK_ELEMS // max(1, b * h * bq * nk))
    for start in range(0, blocks.numel(), chunk):
        qb_idx = blocks[start : start + chunk]
        qpos = (qb_idx.unsqueeze(-1) * bq + torch.arange(bq, device=q.device)).flatten()
        in_range = qpos < nq
        qc = q[:, :, qpos.clamp(max=nq - 1)].float()
        s = torch.matmul(qc, kf.transpose(-1, -2)) * sc  # (b, h, c*bq, nk)
        if selection.causal:
            s = s.masked_fill(torch.arange(nk, device=q.device) > (qpos + nk - nq).unsqueeze(-1), float("-inf"))
        p = torch.softmax(s, dim=-1)
        idx = selection.indices[:, :, qb_idx].to(torch.int64)  # (b, h, c, j)
        kept_blocks = torch.zeros(b, h, qb_idx.numel(), -(-nk // bk) + 1, dtype=torch.bool, device=q.device)
        kept_blocks.scatter_(-1, torch.where(idx < 0, kept_blocks.shape[-1] - 1, idx), True)
        kept_tok = kept_blocks[..., :-1].repeat_interleave(bk, dim=-1)[..., :nk]  # (b, h, c, nk)
        kept_tok = kept_tok.repeat_interleave(bq, dim=2)
        mass = (p * kept_tok).sum(-1)[:, :, in_range]
        mass = mass[torch.isfinite(mass)]
        total += mass.double().sum()
        count += mass.numel()
    return float(total / max(count, 1))


# --------------------------------------------------------------------------------------------
# bucket attention
# --------------------------------------------------------------------------------------------
def bucket_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    num_buckets: int = 64,
    num_tables: int = 4,
    lsh_bits: int | None = None,
    seed: int = 0,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Attention over hashed buckets of keys (non-causal).

    In each of ``num_tables`` tables, keys are routed to one of ``num_buckets`` buckets (a
    SimHash code of ``lsh_bits`` bits, seeded per table, through the keyed mixing hash) and
    aggregated by sum and count. A query reads, in every table, the bucket its own code lands
    in: that bucket acts as one pseudo-key (mean key, mean value) with logit
    ``scale · q·k̄ + log(count)``. Empty buckets are skipped.
    """
    _check_qkv(q, k, v)
    if not isinstance(num_buckets, int) or num_buckets < 1:
        raise ValueError(f"num_buckets must be a positive int, got {num_buckets!r}")
    if not isinstance(num_tables, int) or num_tables < 1:
        raise ValueError(f"num_tables must be a positive int, got {num_tables!r}")
    bits = lsh_bits if lsh_bits is not None else max(1, math.ceil(math.log2(num_buckets)))
    b, h, nq, d = q.shape
    e = v.shape[-1]
    sc = _scale(scale, d)
    logits, values = [], []
    for t in range(num_tables):
        hasher = SimHash(d, bits, seed=seed + 7919 * t)
        kb = bucket_index(hasher(k), num_buckets, key=seed + t)  # (b, h, nk)
        qb = bucket_index(hasher(q), num_buckets, key=seed + t)  # (b, h, nq)
        ksum = torch.zeros(b, h, num_buckets, d, device=q.device).scatter_add(2, kb.unsqueeze(-1).expand(b, h, kb.shape[-1], d), k.float())
        vsum = torch.zeros(b, h, num_buckets, e, device=q.device).scatter_add(2, kb.unsqueeze(-1).expand(b, h, kb.shape[-1], e), v.float())
        cnt = torch.zeros(b, h, num_buckets, device=q.device).scatter_add(2, kb, torch.ones_like(kb, dtype=torch.float32))
        c = cnt.gather(2, qb)  # (b, h, nq)
        kbar = ksum.gather(2, qb.unsqueeze(-1).expand(b, h, nq, d)) / c.clamp(min=1).unsqueeze(-1)
        vbar = vsum.gather(2, qb.unsqueeze(-1).expand(b, h, nq, e)) / c.clamp(min=1).unsqueeze(-1)
        logit = (q.float() * kbar).sum(-1) * sc + torch.log(c)  # log(0) = -inf masks empty buckets
        logits.append(logit)
        values.append(vbar)
    s = torch.stack(logits, dim=-1)  # (b, h, nq, tables)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.masked_fill(torch.isinf(lse), 0.0).unsqueeze(-1))
    out = (p.unsqueeze(-1) * torch.stack(values, dim=-2)).sum(-2).to(q.dtype)
    return (out, lse) if return_lse else out


# --------------------------------------------------------------------------------------------
# multi-hop attention
# --------------------------------------------------------------------------------------------
def multi_hop_attention(
    q: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    *,
    hops: int = 2,
    proj: Callable[[torch.Tensor], torch.Tensor] | Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None,
    attn: Callable[[torch.Tensor], torch.Tensor | tuple] | None = None,
    scale: float | None = None,
    return_all: bool = False,
):
    """``hops`` chained reads: the read of hop ``h``, projected, is the query of hop ``h + 1``.

    ``attn(query)`` does one read (default: dense attention over ``k, v``; pass e.g.
    ``lambda x: memory.attend(x, top_k=8)`` to read a :class:`~vidhash.memory.HashedMemory`;
    a returned ``(out, lse)`` pair is accepted). ``proj`` is one callable applied between every
    hop, a sequence of ``hops - 1`` callables, or ``None`` for the identity.
    """
    if not isinstance(hops, int) or hops < 1:
        raise ValueError(f"hops must be a positive int, got {hops!r}")
    if attn is None:
        if k is None or v is None:
            raise ValueError("multi_hop_attention needs k and v, or an attn callable")
        _check_qkv(q, k, v)

        def attn(x):
            return dense_attention(x, k, v, scale=scale)

    if proj is None:
        projs = [None] * (hops - 1)
    elif callable(proj):
        projs = [proj] * (hops - 1)
    else:
        projs = list(proj)
        if len(projs) != hops - 1:
            raise ValueError(f"proj must hold hops - 1 = {hops - 1} callables, got {len(projs)}")
    reads, x = [], q
    for hop in range(hops):
        r = attn(x)
        r = r[0] if isinstance(r, tuple) else r
        reads.append(r)
        if hop < hops - 1:
            x = r if projs[hop] is None else projs[hop](r)
    return (reads[-1], reads) if return_all else reads[-1]
