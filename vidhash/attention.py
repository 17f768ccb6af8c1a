"""Functional attention: the library's attention functions and the references they dispatch to.

Letters: b batch, h heads, n tokens (q: nq, k: nk), d head_dim, e value dim, c query blocks
in one chunk.

Tensors are ``(batch, heads, tokens, head_dim)``; autograd runs through everything that takes
real-valued inputs (selection itself is discrete and carries no gradient).

* :func:`dense_attention` — exact softmax attention that also returns the log-sum-exp;
  :func:`fused_attention_lse` the same through PyTorch's fused kernels (inference).
* :func:`merge_attention` — exact merge of two partial attentions by their log-sum-exp.
* :func:`select_blocks` / :class:`BlockSelection` — per query block, the key blocks to keep,
  ranked by a scorer (``scorer=``, :data:`SCORERS` or a learned block scorer; references in
  ``kernels/block_select/naive.py``, ``kernels/block_score/naive.py`` and :mod:`vidhash.selection`).
* :func:`block_sparse_attention` — exact softmax over the kept blocks only (reference in
  ``kernels/sparse_attention/naive.py``).
* :func:`block_mean_remainder` — the unkept key blocks, one mean token each (``remainder="mean"``).
* :func:`hash_attention` — the two together; ``density=1.0`` is dense attention. The one place
  that chooses between the references and the Triton kernels (``backend=``).
* :func:`selection_recall` — share of the exact attention mass the kept keys hold.

Causal masks are aligned bottom-right (query ``i`` sees key ``j`` iff ``j <= i + nk - nq``),
as in FlashAttention. No function here builds an ``nq × nk`` tensor unless it computes dense
attention: sparse paths work in chunks of query blocks.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vidhash.kernels.block_score.naive import select_blocks_codes_reference
from vidhash.kernels.block_select.naive import select_blocks as select_blocks_simhash
from vidhash.kernels.remainder.naive import block_mean_remainder
from vidhash.kernels.signature.naive import block_signatures
from vidhash.kernels.sparse_attention.naive import block_sparse_attention

from .hashing import default_hasher
from .ops import checks
from .ops.backend import resolve_backend, triton_ops
from .ops.checks import BACKENDS, MAX_BLOCK_SIZE, BlockSelection, check_qkv, check_selection, check_selection_args, resolve_scale, upcast

__all__ = [
    "BACKENDS", "MAX_BLOCK_SIZE", "SCORERS", "BlockSelection", "block_signatures", "block_sparse_attention", "default_hasher",
    "dense_attention", "fused_attention_lse", "hash_attention", "merge_attention", "resolve_backend",
    "select_blocks", "selection_recall", "default_scorer", "resolve_scorer", "READS_SIGNATURES",
    "REMAINDERS", "add_remainder", "block_mean_remainder",
]


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
    check_qkv(q, k, v)
    nq, nk = q.shape[-2], k.shape[-2]
    sc = resolve_scale(scale, q.shape[-1])
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, key_bias) if t is not None):
        s = torch.matmul(upcast(q), upcast(k).transpose(-1, -2)) * sc
        if key_bias is not None:
            s = s + key_bias.to(s.dtype).unsqueeze(-2)
        if causal:
            s = s.masked_fill(~_causal_allowed(nq, nk, q.device), float("-inf"))
        lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - lse.masked_fill(torch.isinf(lse), 0.0).unsqueeze(-1))
    else:  # the same values, the score tensor updated in place (no gradient needs it kept)
        s, lse = _scores_inference(q, k, sc, key_bias, causal)
        p = s.sub_(lse.masked_fill(torch.isinf(lse), 0.0).unsqueeze(-1)).exp_()
    out = torch.matmul(p, upcast(v)).to(q.dtype)
    return (out, lse) if return_lse else out


def _causal_allowed(nq: int, nk: int, device) -> torch.Tensor:
    return torch.arange(nk, device=device) <= (torch.arange(nq, device=device) + nk - nq).unsqueeze(-1)


def _scores_inference(q: torch.Tensor, k: torch.Tensor, sc: float, key_bias: torch.Tensor | None, causal: bool):
    """:func:`dense_attention`'s scores ``sc·q·kᵀ (+ key_bias, causal mask)`` and their lse, bitwise
    as it computes them with gradients, in fewer passes over the ``(nq, nk)`` scores: a scale that is
    a power of two multiplies ``q`` before the matmul (exact: every product and partial sum is
    scaled by the same power of two), another one the scores in place."""
    exact = math.frexp(sc)[0] == 0.5
    s = torch.matmul(upcast(q) * sc if exact else upcast(q), upcast(k).transpose(-1, -2))
    if not exact:
        s.mul_(sc)
    if key_bias is not None:  # (not in place: a bias may broadcast the scores to more dimensions)
        s = s + key_bias.to(s.dtype).unsqueeze(-2)
    if causal:
        s.masked_fill_(~_causal_allowed(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    return s, torch.logsumexp(s, dim=-1)


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
    check_qkv(q, k, v)
    sc = resolve_scale(scale, q.shape[-1])
    dt = q.dtype
    cuda_ok = q.is_cuda and dt in (torch.bfloat16, torch.float16, torch.float32)
    cpu_ok = q.device.type == "cpu" and dt in (torch.bfloat16, torch.float32)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    empty = q.shape[-2] == 0 or k.shape[-2] == 0  # (the CPU flash kernel dies of SIGFPE on zero queries)
    if needs_grad or empty or not (cuda_ok or cpu_ok) or q.shape[-1] + 1 > 256:
        return dense_attention(q, k, v, scale=scale, return_lse=True, key_bias=key_bias)
    b, h, n, d = q.shape
    nk = k.shape[-2]
    extra = 0 if key_bias is None else 1
    dp = -(-(d + extra) // 8) * 8
    if dp == d and v.shape[-1] == d:  # nothing to pad or add: the kernels take the tensors as they are
        qa, ka, va = q, k, v
    else:
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
    l1, l2 = upcast(lse1), upcast(lse2)
    lse = torch.logaddexp(l1, l2)
    safe = lse.masked_fill(torch.isinf(lse), 0.0)
    w1 = torch.exp(l1 - safe).masked_fill(torch.isinf(lse), 0.0)
    w2 = torch.exp(l2 - safe).masked_fill(torch.isinf(lse), 0.0)
    out = w1.unsqueeze(-1) * upcast(o1) + w2.unsqueeze(-1) * upcast(o2)
    return out.to(o1.dtype), lse


# --------------------------------------------------------------------------------------------
# the remainder: the key blocks a selection did not keep, one mean token each
# --------------------------------------------------------------------------------------------
REMAINDERS = ("none", "mean")
"""``remainder=`` of :func:`hash_attention` (and the drop-in): what the key blocks a selection
did not keep contribute — ``"none"`` nothing (plain block-sparse attention), ``"mean"`` one token
per unkept block (:func:`block_mean_remainder`)."""


def check_remainder(remainder) -> str:
    """``remainder`` as one of :data:`REMAINDERS` (``None`` is ``"none"``); ValueError otherwise."""
    name = "none" if remainder is None else remainder
    if name not in REMAINDERS:
        raise ValueError(f"remainder must be one of {REMAINDERS} (or None), got {remainder!r}")
    return name


# --------------------------------------------------------------------------------------------
# block selection: which scorer ranks the key blocks, on the references or the kernels
# --------------------------------------------------------------------------------------------
SCORERS = ("simhash", "pooled", "parent", "moments", "subgrid", "prefilter", "rescore")
"""``scorer=`` names of :func:`select_blocks` / :func:`hash_attention` (or pass a
:class:`~vidhash.selection.learned.LearnedBlockScorer`):

* ``"simhash"`` — Hamming similarity of the blocks' SimHash signatures (the default when a
  ``hasher`` is given);
* ``"pooled"`` — ``s · q̄ · k̄`` of the blocks' mean tokens, as int8 block codes (the block-score
  kernel, ``kernels/block_score``; its torch reference gives the same indices); the default
  otherwise (:func:`default_scorer`);
* ``"parent"`` — ``pooled`` with each key block's mean blended with its 64-token parent's
  (``0.9 · parent + 0.1 · own``) for key blocks that divide 64 (others: ``pooled`` itself); the same
  codes and kernel; non-causal only (a parent may hold keys a causal query block cannot see);
* ``"moments"`` — means and per-channel variances (second-order estimate of the block pair's
  ``log E exp(s q·k)``), the same codes and kernel;
* ``"subgrid"`` — ``pooled`` with :data:`SUBGRID_M` query sub-centroids (the means of a quarter of
  the query block each; query blocks a multiple of 4 tokens): each sub-centroid's scores against the key blocks' means, as levels
  below its best free block, and a block pair's best sub-centroid ranks it — a key block that one
  part of the query block wants is not averaged away by the rest. The same codes and kernel
  (``m=4``) on every backend (the float form of :mod:`vidhash.selection.scorers` normalises over
  the forced blocks too: a study form); 4 × the pooled score work. On the trained wan-mini's
  activations with key blocks of 16 it keeps more than ``pooled`` (BENCHMARKS.md, "Block selection");
* ``"prefilter"`` — SimHash keeps 4 × kept candidates, exact pooled scores rank them (torch on
  every backend);
* ``"rescore"`` — pooled scores keep 4 × kept candidates, then every 8th query of each query block
  attends exactly to their keys and the summed softmax per block ranks them (torch on every
  backend, its mass by a Triton kernel on CUDA): at the same count it keeps more (the Wan 1.3B shape:
  0.96 of the oracle's mass against pooled's 0.82), but it reads the keys of 4 × kept blocks twice,
  and pooled at twice the density keeps more still (0.923 vs 0.853) — for a fixed count of blocks.
"""


READS_SIGNATURES = ("simhash", "prefilter")
"""The scorers that read signatures (a ``hasher``: SimHash or learned codes)."""


def default_scorer(signatures_given: bool) -> str:
    """The scorer used when none is named — one rule for :func:`select_blocks`,
    :func:`hash_attention`, the diffusers drop-in and training: ``"simhash"`` when signatures are
    given (a ``hasher``; in the drop-in also ``hashers``, ``n_bits`` or ``seed``), since only the
    scorers of :data:`READS_SIGNATURES` read them; else ``"pooled"``, which kept more attention mass
    than SimHash at every shape measured (synthetic N = 65,536 and 131,072, the Wan 1.3B shape, the
    world model's and the trained wan-mini's activations) for at most 11 % more select + attend time
    (BENCHMARKS.md, "Block selection" and "Drop-in on wan-mini")."""
    return "simhash" if signatures_given else "pooled"


def resolve_scorer(scorer, hasher) -> str | nn.Module:
    """``scorer``, or :func:`default_scorer` for ``None``."""
    return default_scorer(hasher is not None) if scorer is None else scorer


SUBGRID_M = 4
"""Query sub-centroids per query block of ``scorer="subgrid"``."""


def check_subgrid(scorer, block_size: int, query_block_size: int | None) -> None:
    """``scorer="subgrid"`` splits each query block into :data:`SUBGRID_M` runs of queries: its size
    (``query_block_size``, default ``block_size``) must be a multiple of them (ValueError naming it)."""
    if isinstance(scorer, str) and scorer == "subgrid":
        bq = query_block_size if query_block_size is not None else block_size
        if isinstance(bq, int) and bq % SUBGRID_M:
            raise ValueError(f"scorer='subgrid' splits each query block into {SUBGRID_M} runs of queries: "
                             f"query_block_size must be a multiple of {SUBGRID_M}, got {bq}")


def _code_scorer(scorer):
    """``(codes, grid)``: what the block-score codes take for ``scorer`` (``None`` = pooled,
    ``"moments"``, ``"parent"``, the learned module) and its ``m`` / ``sub`` grid, or ``None`` when
    the scorer does not run on block codes."""
    if isinstance(scorer, str):
        if scorer in ("pooled", "subgrid"):
            return None, dict(m=SUBGRID_M if scorer == "subgrid" else 1, sub=None)
        if scorer in ("moments", "parent"):
            return scorer, dict(m=1, sub=None)
        return None
    if isinstance(scorer, nn.Module) and getattr(scorer, "code_kind", None) == "real" \
            and getattr(scorer, "features", None) in ("linear", "diag"):
        return scorer, dict(m=getattr(scorer, "m", 1), sub=getattr(scorer, "sub", None))
    return None


def _check_flag(name: str, value) -> None:
    """A switch (argument ``name``): True or False, not merely truthy (``causal="no"`` would be causal)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_hasher(hasher, q: torch.Tensor) -> None:
    """``hasher``: None or a hasher module (``project()``, ``n_bits``: SimHash, LearnedHash) of q's
    head_dim and heads (one, or as many as q has)."""
    if hasher is None:
        return
    if not isinstance(hasher, nn.Module) or not hasattr(hasher, "project") or not hasattr(hasher, "n_bits"):
        raise ValueError(f"hasher must be a hasher module with project() and n_bits (SimHash, LearnedHash), "
                         f"got {type(hasher).__name__}")
    if getattr(hasher, "head_dim", q.shape[-1]) != q.shape[-1]:
        raise ValueError(f"hasher has head_dim={hasher.head_dim}, q has head_dim {q.shape[-1]}")
    if getattr(hasher, "heads", None) not in (None, 1, q.shape[1]):
        raise ValueError(f"hasher has heads={hasher.heads}, q has {q.shape[1]} heads")


def _check_scorer(scorer, hasher, q: torch.Tensor) -> None:
    """``scorer``: a name of :data:`SCORERS` or a learned block scorer of q's heads and head_dim;
    ``hasher`` only with a scorer that reads signatures."""
    _check_hasher(hasher, q)
    if isinstance(scorer, str):
        if scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {SCORERS} or a LearnedBlockScorer, got {scorer!r}")
        if hasher is not None and scorer not in READS_SIGNATURES:
            raise ValueError(f"hasher is read by scorer='simhash' or 'prefilter' only, got scorer={scorer!r}")
        return
    if not (isinstance(scorer, nn.Module) and hasattr(scorer, "block_scores")):
        raise ValueError(f"scorer must be one of {SCORERS} or a LearnedBlockScorer, got {type(scorer).__name__}")
    if (scorer.heads, scorer.head_dim) != (q.shape[1], q.shape[-1]):
        raise ValueError(f"scorer has {scorer.heads} heads of head_dim {scorer.head_dim}, q has {q.shape[1]} of {q.shape[-1]}")
    if hasher is not None:
        raise ValueError("hasher is read by scorer='simhash' or 'prefilter' only, got a learned scorer")


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
    scorer=None,
    scale: float | None = None,
    backend: str = "auto",
) -> BlockSelection:
    """Choose the key blocks each query block attends to.

    Every query block keeps ``kept = max(ceil(density · key_blocks), most forced blocks of any
    query block)`` key blocks: its forced blocks (the first ``sink_blocks``; the key blocks
    overlapping its own positions, widened by ``local_blocks - 1`` blocks before — and,
    non-causal, after — it), then the highest-scoring rest by ``scorer`` (:data:`SCORERS` or a
    :class:`~vidhash.selection.learned.LearnedBlockScorer`; ``None``: :func:`default_scorer` —
    ``"pooled"``, or ``"simhash"`` when a ``hasher`` is given), ties to the lower block index.
    Causal attention never keeps a block wholly in the future. ``scale`` (default ``1/√d``): the
    softmax scale the code scorers rank in.

    ``backend``: ``"auto"`` (the default, as :func:`hash_attention`'s: the kernels for CUDA
    tensors, the torch references otherwise), ``"reference"`` (the torch references) or
    ``"triton"`` (SimHash: ``select_blocks_triton``; pooled, parent, moments, subgrid and learned
    linear/diag codes: the block-score kernel; same indices as the references given the same signatures /
    codes). ``prefilter`` and the other learned scorers run
    :func:`vidhash.selection.scorers.select_blocks_scored` in torch on every backend.

    ``pooled`` with ``backend="auto"`` on tensors off CUDA ranks by the float block-mean scores
    themselves (:func:`~vidhash.selection.scorers.select_blocks_scored`: one matmul and one exact
    ``topk``, no int8 codes; faster than the level reference on a CPU); on CUDA ``"auto"`` runs the
    block-score kernel's int8 levels, which the whole float call trailed on an H200 (eager 947 vs
    1,261 µs at wan-mini's drop-in shape, 1,384 vs 6,337 at N = 131,072; in a CUDA graph 239 vs 225,
    310 vs 326, 1,343 vs 2,609 — ``scripts/gpu/attention_parts.py --part selection``, 2026-12-04).
    ``"triton"`` / ``"reference"`` keep the int8-level form (its ranks equal within ``1/16`` nat).
    On wan-mini's activations both forms keep the same mass.
    """
    check_qkv(q, k)
    _check_flag("causal", causal)
    scorer = resolve_scorer(scorer, hasher)
    _check_scorer(scorer, hasher, q)
    check_subgrid(scorer, block_size, query_block_size)
    which = resolve_backend(backend, q, k)
    kw = dict(density=density, block_size=block_size, query_block_size=query_block_size,
              local_blocks=local_blocks, sink_blocks=sink_blocks, causal=causal)
    if isinstance(scorer, str) and scorer == "simhash":
        fn = triton_ops().select_blocks_triton if which == "triton" else select_blocks_simhash
        return fn(q, k, hasher=hasher, **kw)
    code_scorer = _code_scorer(scorer)
    if scorer in ("pooled", "parent") and backend == "auto" and which != "triton":  # off CUDA: float scores, exact top-k
        from vidhash.selection.scorers import select_blocks_scored

        return select_blocks_scored(q, k, scorer=scorer, scale=scale, **kw)
    if code_scorer is not None:
        codes, grid = code_scorer
        if which == "triton":
            return triton_ops().select_blocks_codes(q, k, scorer=codes, scale=scale, backend="triton", **grid, **kw)
        return select_blocks_codes_reference(q, k, scorer=codes, scale=scale, **grid, **kw)
    from vidhash.selection.scorers import select_blocks_scored  # torch scorers

    options = {"hasher": hasher} if hasher is not None else {}
    return select_blocks_scored(q, k, scorer=scorer, scale=scale, **kw, **options)


# --------------------------------------------------------------------------------------------
# hash attention: selection + block-sparse attention, on the references or the kernels
# --------------------------------------------------------------------------------------------
def _kernels_cover(q: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Triton attention kernels take this head_dim and dtype (else a forced 'triton' raises)."""
    ops = triton_ops()
    return (q.shape[-1] in ops.SUPPORTED_HEAD_DIMS and v.shape[-1] in ops.SUPPORTED_HEAD_DIMS
            and q.dtype in ops.SUPPORTED_DTYPES)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def add_remainder(out: torch.Tensor, lse: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  selection: BlockSelection, *, scale: float | None = None, backend: str = "auto"):
    """The kept blocks' attention ``(out, lse)`` merged with the block-mean remainder of the same
    selection (``remainder="mean"``): ``merge_attention(out, lse, *block_mean_remainder(...))``.
    On the Triton backend, without gradients and for non-causal selections, one kernel computes the
    remainder and merges it in its epilogue; otherwise the differentiable reference and
    :func:`merge_attention`. Returns ``(out, lse)``."""
    which = resolve_backend(backend, q, k, v)
    if which == "triton" and not _needs_grad(q, k, v, out, lse) and triton_ops().remainder_kernel_covers(q, v, selection) \
            and out.dtype == v.dtype:
        return triton_ops().block_mean_remainder_triton(q, k, v, selection, scale=scale, merge_with=(out, lse))
    return merge_attention(out, lse, *block_mean_remainder(q, k, v, selection, scale=scale))


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
    scorer=None,
    remainder: str | None = None,
    selection: BlockSelection | None = None,
):
    """Hash attention: each query block attends exactly to the key blocks whose signatures are
    most similar to its own, plus sink and local blocks (see :func:`select_blocks`).

    ``remainder``: what the blocks not kept contribute (:data:`REMAINDERS`): ``None``/``"none"``
    nothing; ``"mean"`` one mean token per unkept block (:func:`block_mean_remainder`, merged by
    log-sum-exp), for ``nq × nk / block_size`` more scores — on a trained video model's diffuse
    attention (keys alike within a block) it cut the output's error against dense several-fold at
    the same count; where keys spread within a block the mean tokens weigh next to nothing.

    ``scorer``: how key blocks are ranked (:data:`SCORERS` or a learned block scorer; ``None``:
    :func:`default_scorer` — ``"pooled"``, or ``"simhash"`` when a ``hasher`` is given); any
    scorer but ``"simhash"`` runs :func:`select_blocks` on ``backend`` and then the block-sparse
    attention of that backend (``"simhash"`` runs the fused selection + attention kernels).

    ``block_size=1`` selects per token (HashAttention's setting). ``density=1.0`` keeps every
    block and equals ``scaled_dot_product_attention``.

    ``selection``: a :class:`BlockSelection` made elsewhere (e.g.
    :func:`vidhash.selection.select_from_mass` from an earlier step's exact block mass, the
    drop-in's ``reuse_mass``) to attend to instead of selecting — the selection options, ``scorer``
    and ``hasher`` are then unused; its sizes must be these q, k's (ValueError).

    ``backend``: ``"reference"`` runs :func:`select_blocks` + :func:`block_sparse_attention`;
    ``"triton"`` the kernels (``vidhash.kernels.ops.hash_attention``; ValueError for a head_dim
    or dtype they do not take); ``"auto"`` the kernels for CUDA tensors they take, else the
    reference. On a GPU, ``block_size=1`` runs the reference either way.

    >>> q, k, v = (torch.randn(1, 2, 300, 64) for _ in range(3))
    >>> out = hash_attention(q, k, v, density=0.25, block_size=32)
    >>> out.shape
    torch.Size([1, 2, 300, 64])
    """
    check_qkv(q, k, v)
    _check_flag("causal", causal)
    _check_flag("return_lse", return_lse)
    _check_hasher(hasher, q)
    scorer = resolve_scorer(scorer, hasher)
    which = resolve_backend(backend, q, k, v)
    if q.shape[-2] == 0:  # no queries: empty outputs (after the argument checks)
        check_selection_args(density, block_size, query_block_size, local_blocks, sink_blocks)
        out = q.new_zeros(*q.shape[:-1], v.shape[-1])
        return (out, q.new_zeros(q.shape[:-1], dtype=torch.float32)) if return_lse else out
    if which == "triton" and backend == "auto" and not _kernels_cover(q, v):
        which = "reference"  # auto stays quiet: shapes the kernels do not take run the reference
    if which == "triton" and (block_size if selection is None else selection.block_size) == 1 and q.is_cuda:
        which = "reference"  # per-token selection: the kernels take it, but are not tuned for it on a GPU
    rest = check_remainder(remainder)
    if selection is not None:
        check_selection(selection, q, k)
    if selection is not None or rest != "none" or not (isinstance(scorer, str) and scorer == "simhash"):
        pooled_off_cuda = backend == "auto" and scorer in ("pooled", "parent") and not q.is_cuda
        pick = "auto" if pooled_off_cuda else which  # pooled off CUDA: select_blocks' float top-k
        sel = selection if selection is not None else select_blocks(
            q, k, scorer=scorer, scale=scale, hasher=hasher, backend=pick, density=density, block_size=block_size,
            query_block_size=query_block_size, local_blocks=local_blocks, sink_blocks=sink_blocks, causal=causal)
        attend = triton_ops().block_sparse_attention_triton if which == "triton" else block_sparse_attention
        if rest == "none":
            return attend(q, k, v, sel, scale=scale, return_lse=return_lse)
        out, lse = add_remainder(*attend(q, k, v, sel, scale=scale, return_lse=True), q, k, v, sel, scale=scale,
                                 backend=which)
        return (out, lse) if return_lse else out
    if which == "triton":
        return triton_ops().hash_attention(
            q, k, v, density=density, block_size=block_size, query_block_size=query_block_size,
            local_blocks=local_blocks, sink_blocks=sink_blocks, causal=causal, hasher=hasher,
            scale=scale, return_lse=return_lse,
        )
    sel = select_blocks_simhash(
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
    check_qkv(q, k)
    check_selection(selection, q, k)
    if max_query_blocks is not None and (not isinstance(max_query_blocks, int) or isinstance(max_query_blocks, bool)
                                         or max_query_blocks < 1):
        raise ValueError(f"max_query_blocks must be a positive int or None, got {max_query_blocks}")
    b, h, nq, d = q.shape
    nk = k.shape[-2]
    bq, bk = selection.query_block_size, selection.block_size
    nqb = selection.num_query_blocks
    blocks = torch.arange(nqb, device=q.device)
    if max_query_blocks is not None and max_query_blocks < nqb:
        blocks = torch.linspace(0, nqb - 1, max_query_blocks, device=q.device).round().long().unique()
    sc = resolve_scale(scale, d)
    total, count = torch.zeros((), dtype=torch.float64, device=q.device), 0
    kf = k.float()
    chunk = max(1, checks.CHUNK_ELEMS // max(1, b * h * bq * nk))
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
