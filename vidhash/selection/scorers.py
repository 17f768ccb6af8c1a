"""Block-pair scorers: how well a query block is expected to attend to each key block.

Letters: b batch, h heads, n tokens, d head_dim, c query blocks in one chunk, j key blocks,
m sub-blocks (query sub-centroids or key sub-blocks), r code width.

Every scorer maps ``q (b, h, nq, d)``, ``k (b, h, nk, d)`` and a set of query blocks to float32
scores ``(b, h, c, nkb)`` — higher means "keep". :func:`select_blocks_scored` turns scores into a
:class:`~vidhash.attention.BlockSelection` with :func:`vidhash.attention.select_blocks`'s rules
(``kept`` blocks per query block: forced sink/local blocks first, then the highest scores, ties
to the lower block index, never a block the causal mask forbids), so ``scorer="simhash"`` gives
``select_blocks``'s indices exactly.

Scorers (``s`` the softmax scale, ``x̄`` a block's mean over its tokens):

* ``simhash`` — today's: Hamming similarity of the blocks' SimHash signatures;
* ``pooled`` — ``s · q̄ · k̄`` (the coarse stage of MoBA / VSA);
* ``moments`` — second-order estimate ``log E exp(s q·k)`` over a block pair with per-channel
  variances: ``s q̄·k̄ + s²/2 · (E[q²]·Var k + Var q·k̄²)``;
* ``subgrid`` — ``m`` query sub-centroids (means of ``query_block_size / m`` consecutive
  queries) against key sub-blocks of ``sub`` tokens; each sub-centroid's scores normalised over
  all key sub-blocks, then the best cell of a block pair (``reduce="max"``, the kernel's form) or
  the log of the summed softmax probabilities (``"lse"``, an estimate of the block mass);
  ``m=1, sub=block_size`` ranks as ``pooled``;
* ``parent`` — ``pooled`` with each key block's mean blended with its 64-token parent's,
  ``0.9 · parent + 0.1 · own`` (:func:`vidhash.kernels.block_score.naive.parent_key_means`); for key
  blocks that divide 64 (16, 32…) where a 64-token parent is spatially local: on the synthetic
  video-like inputs the own means rank worse than the parents' (``scripts/study_coarse_scores.py``),
  on world-tiny-v3's temporal attention (a parent = a whole frame) better; other block sizes:
  ``pooled`` itself; non-causal only;
* ``prefilter`` — SimHash picks ``factor × kept`` candidates, ``pooled`` ranks them;
* ``rescore`` — ``pooled`` picks ``factor × kept`` candidates (default 4), then every ``stride``-th
  query of each query block (default 8, or the largest divisor of the query block below it)
  attends exactly to the candidates' keys: the summed softmax per candidate block (an estimate of
  the block mass from 1/stride of the queries) ranks them;
* ``learned`` — :class:`vidhash.selection.learned.LearnedBlockScorer` (pass ``scorer=`` the module);
* ``oracle`` — the exact block mass (:func:`vidhash.selection.oracle.block_mass`; for studies).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from vidhash.kernels.block_score.naive import block_means, check_parent, parent_key_means
from vidhash.kernels.block_select.naive import forced_and_allowed, num_kept_blocks
from vidhash.kernels.signature.naive import block_signatures
from vidhash.ops.checks import BlockSelection, check_block, check_qkv, check_selection_args, resolve_scale
from vidhash.hashing import default_hasher, hamming_similarity

from .oracle import block_mass

SCORERS = ("simhash", "pooled", "parent", "moments", "subgrid", "prefilter", "rescore", "oracle")
_CHUNK_ELEMS = 1 << 23
_NOT_CANDIDATE = -1e30  # below any real score, above "not allowed"


# --------------------------------------------------------------------------------------------
# block statistics
# --------------------------------------------------------------------------------------------
def block_moments(x: torch.Tensor, block_size: int, second: bool = False):
    """Per block of ``x (b, h, n, d)``: mean ``(b, h, nb, d)`` over its real tokens (a partial
    last block averages what it has), float32; with ``second`` also the mean of squares."""
    if not second:
        return block_means(x, block_size)
    b, h, n, d = x.shape
    nb = -(-n // block_size)
    xf = F.pad(x.float(), (0, 0, 0, nb * block_size - n))
    cnt = torch.clamp(n - torch.arange(nb, device=x.device) * block_size, max=block_size).float().unsqueeze(-1)
    blocks = rearrange(xf, "b h (j t) d -> b h j t d", t=block_size)
    return blocks.sum(-2) / cnt, blocks.square().sum(-2) / cnt


def block_pool3(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Per block of ``x (b, h, n, d)``: ``[mean, max, min]`` over its real tokens, ``(b, h, nb, 3d)`` float32."""
    b, h, n, d = x.shape
    nb = -(-n // block_size)
    mean = block_moments(x, block_size)
    pad = nb * block_size - n
    xf = x.float()
    hi = F.pad(xf, (0, 0, 0, pad), value=float("-inf")).reshape(b, h, nb, block_size, d).amax(-2)
    lo = F.pad(xf, (0, 0, 0, pad), value=float("inf")).reshape(b, h, nb, block_size, d).amin(-2)
    return torch.cat([mean, hi, lo], dim=-1)


def block_counts(n: int, block_size: int, device=None) -> torch.Tensor:
    """Tokens in each block, float32 ``(nb,)``."""
    nb = -(-n // block_size)
    return torch.clamp(n - torch.arange(nb, device=device) * block_size, max=block_size).float()


def _query_rows(q: torch.Tensor, bq: int, blocks: torch.Tensor, sub: int):
    """Means of ``sub``-token sub-blocks of the query blocks ``blocks``: ``(b, h, c, bq/sub, d)`` and
    their token counts ``(c, bq/sub)`` (0 for sub-blocks past the end)."""
    nq = q.shape[-2]
    m = bq // sub
    pos = (blocks.unsqueeze(-1) * bq + torch.arange(bq, device=q.device))  # (c, bq)
    valid = (pos < nq).float()
    x = q[:, :, pos.clamp(max=nq - 1)].float() * valid.unsqueeze(-1)  # (b, h, c, bq, d)
    cnt = valid.reshape(-1, m, sub).sum(-1)
    sums = x.reshape(*x.shape[:3], m, sub, x.shape[-1]).sum(-2)
    return sums / cnt.clamp(min=1).unsqueeze(-1), cnt


# --------------------------------------------------------------------------------------------
# scorers: (q, k, blocks, ctx) -> (b, h, c, nkb)
# --------------------------------------------------------------------------------------------
class _Ctx:
    """What a scorer needs besides the query blocks, computed once per selection."""

    def __init__(self, q, k, bk, bq, causal, scale, options):
        self.q, self.k, self.bk, self.bq, self.causal = q, k, bk, bq, causal
        self.scale = resolve_scale(scale, q.shape[-1])
        self.options = options
        self.cache = {}

    def get(self, key, fn):
        if key not in self.cache:
            self.cache[key] = fn()
        return self.cache[key]

    def opt(self, name, default):
        return self.options.get(name, default)


def _score_simhash(ctx: _Ctx, blocks):
    hasher = ctx.opt("hasher", None) or default_hasher(ctx.q.shape[-1], device=ctx.q.device)
    q_sig = ctx.get("q_sig", lambda: block_signatures(ctx.q, ctx.bq, hasher, "query"))
    k_sig = ctx.get("k_sig", lambda: block_signatures(ctx.k, ctx.bk, hasher, "key"))
    return hamming_similarity(q_sig[:, :, blocks], k_sig, hasher.n_bits).float()


def _score_pooled(ctx: _Ctx, blocks, keys: str = "k_mean", key_means=block_moments):
    """``s · q̄ · k̄`` of the query blocks ``blocks`` against every key block (``key_means``: the key codes)."""
    qm = ctx.get("q_mean", lambda: block_moments(ctx.q, ctx.bq))
    km = ctx.get(keys, lambda: key_means(ctx.k, ctx.bk))
    return torch.matmul(qm[:, :, blocks], km.transpose(-1, -2)) * ctx.scale


def _score_parent(ctx: _Ctx, blocks):
    check_parent("parent", ctx.causal)
    return _score_pooled(ctx, blocks, "k_parent", parent_key_means)


def _score_moments(ctx: _Ctx, blocks):
    qm, q2 = ctx.get("q_mom", lambda: block_moments(ctx.q, ctx.bq, second=True))
    km, k2 = ctx.get("k_mom", lambda: block_moments(ctx.k, ctx.bk, second=True))
    qm, q2 = qm[:, :, blocks], q2[:, :, blocks]
    s = ctx.scale
    first = torch.matmul(qm, km.transpose(-1, -2)) * s
    var_q, var_k = (q2 - qm.square()).clamp(min=0), (k2 - km.square()).clamp(min=0)
    second = torch.matmul(q2, var_k.transpose(-1, -2)) + torch.matmul(var_q, km.square().transpose(-1, -2))
    return first + 0.5 * s * s * second


def _score_subgrid(ctx: _Ctx, blocks):
    """``m`` query sub-centroids × key sub-blocks of ``sub`` tokens. Per sub-centroid, a log
    distribution over all key sub-blocks: ``reduce="lse"`` the softmax of ``s · c · k̄ + log n``
    (then log of the count-weighted sum over a block pair's cells: an estimate of the block mass),
    ``reduce="max"`` the score minus the sub-centroid's best (then the best cell of the pair:
    integer-friendly, the kernel's form)."""
    m, sub, reduce = ctx.opt("m", 4), ctx.opt("sub", ctx.bk), ctx.opt("reduce", "max")
    if ctx.bq % m or ctx.bk % sub:
        raise ValueError(f"m={m} must divide query_block_size={ctx.bq} and sub={sub} block_size={ctx.bk}")
    if reduce not in ("lse", "max"):
        raise ValueError(f"reduce must be 'lse' or 'max', got {reduce!r}")
    nk = ctx.k.shape[-2]
    nkb, per = -(-nk // ctx.bk), ctx.bk // sub
    cent, cnt = _query_rows(ctx.q, ctx.bq, blocks, ctx.bq // m)  # (b, h, c, m, d), (c, m)
    ks = ctx.get(("k_sub", sub), lambda: block_moments(ctx.k, sub))  # (b, h, nsub, d)
    logn = block_counts(nk, sub, ctx.k.device).log()
    logits = torch.matmul(cent, ks.unsqueeze(2).transpose(-1, -2)) * ctx.scale  # (b, h, c, m, nsub)
    allowed_sub = torch.ones(blocks.numel(), ks.shape[-2], dtype=torch.bool, device=ctx.q.device)
    if ctx.causal:
        _, allowed = forced_and_allowed(blocks, ctx.q.shape[-2], nk, ctx.bq, ctx.bk, 0, 0, True)
        allowed_sub = allowed.repeat_interleave(per, dim=-1)[:, : ks.shape[-2]]
    logits = logits.masked_fill(~allowed_sub.unsqueeze(-2), float("-inf"))
    live = (cnt > 0).unsqueeze(-1)  # (c, m, 1): sub-centroids past the end take no part
    if reduce == "max":
        norm = logits - logits.amax(-1, keepdim=True).nan_to_num(neginf=0.0)
        norm = norm.masked_fill(~live, float("-inf"))
        cells = F.pad(norm, (0, nkb * per - norm.shape[-1]), value=float("-inf"))
        return cells.reshape(*cells.shape[:-1], nkb, per).amax(dim=(-3, -1))
    logp = torch.log_softmax(logits + logn, dim=-1).nan_to_num(nan=float("-inf"))
    logp = logp + torch.where(live, cnt.unsqueeze(-1), 1.0).log().masked_fill(~live, float("-inf"))
    cells = F.pad(logp, (0, nkb * per - logp.shape[-1]), value=float("-inf"))
    return torch.logsumexp(cells.reshape(*cells.shape[:-1], nkb, per), dim=(-3, -1))


def _score_prefilter(ctx: _Ctx, blocks):
    idx = _candidates(ctx, blocks, _score_simhash(ctx, blocks)).long()
    pooled = _score_pooled(ctx, blocks)
    return _scatter_candidates(pooled.shape[-1], idx, pooled.gather(-1, idx.clamp(min=0)))


def _scatter_candidates(nkb: int, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Scores ``(..., nkb)``: ``values`` at the candidate blocks ``idx (..., take)`` (``-1``: none),
    ``_NOT_CANDIDATE`` elsewhere (a padding entry writes to a spare column, never over block 0)."""
    out = torch.full((*idx.shape[:-1], nkb + 1), _NOT_CANDIDATE, device=values.device, dtype=values.dtype)
    return out.scatter_(-1, torch.where(idx >= 0, idx, nkb), values)[..., :nkb]


def _candidates(ctx: _Ctx, blocks, score: torch.Tensor) -> torch.Tensor:
    """The ``factor × kept`` best blocks by ``score`` under the selection rules (forced first),
    int32 ``(b, h, c, take)``, ``-1``-padded."""
    forced, allowed = forced_and_allowed(blocks, ctx.q.shape[-2], ctx.k.shape[-2], ctx.bq, ctx.bk,
                                          ctx.opt("_local", 1), ctx.opt("_sink", 1), ctx.causal)
    return rank_top(score, forced, allowed, min(score.shape[-1], ctx.opt("factor", 4) * ctx.opt("_kept", 1)))


def candidate_mass(q: torch.Tensor, k: torch.Tensor, blocks: torch.Tensor, candidates: torch.Tensor, *,
                   block_size: int, query_block_size: int, stride: int, causal: bool = False,
                   scale: float | None = None) -> torch.Tensor:
    """``rescore``'s block mass in torch (the reference of ``kernels/block_mass``'s
    ``candidate_mass_triton``): for each query block of ``blocks`` (``c``), its every ``stride``-th query
    attends to the keys of its candidate blocks ``candidates (b, h, c, take)`` (``-1``: none) only,
    softmax over them (causal mask kept); float32 ``(b, h, c, take)``, the summed probability per
    candidate. Chunked over query blocks (at most ``_CHUNK_ELEMS``-sized gathers)."""
    b, h, c, take = candidates.shape
    nq, nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    bk, bq = block_size, query_block_size
    sc = resolve_scale(scale, d)
    cand = candidates.long()
    out = torch.empty(b, h, c, take, device=q.device)
    offs_q, offs_k = torch.arange(0, bq, stride, device=q.device), torch.arange(bk, device=q.device)
    step = max(1, _CHUNK_ELEMS // max(1, b * h * take * bk * max(d, offs_q.numel())))  # query blocks a pass
    for i in range(0, c, step):
        part, idx = blocks[i : i + step], cand[:, :, i : i + step]
        qpos = part[:, None] * bq + offs_q  # (c', t)
        kpos = idx[..., None] * bk + offs_k  # (b, h, c', take, bk)
        q_ok = qpos < nq
        k_ok = (idx[..., None] >= 0) & (kpos < nk)
        qs = q[:, :, qpos.clamp(max=nq - 1)].float()  # (b, h, c', t, d)
        flat = kpos.clamp(0, nk - 1).flatten(2)  # (b, h, c'·take·bk)
        ks = torch.gather(k, 2, flat[..., None].expand(-1, -1, -1, d)).float().reshape(b, h, part.numel(), take * bk, d)
        logits = torch.matmul(qs, ks.transpose(-1, -2)) * sc  # (b, h, c', t, take·bk)
        ok = k_ok.flatten(-2)[:, :, :, None, :] & q_ok[None, None, :, :, None]
        if causal:
            ok = ok & (kpos.flatten(-2)[:, :, :, None, :] <= (qpos + nk - nq)[None, None, :, :, None])
        p = torch.softmax(logits.masked_fill(~ok, float("-inf")), dim=-1).nan_to_num(0.0)  # a query without keys: 0
        out[:, :, i : i + step] = p.sum(-2).reshape(b, h, part.numel(), take, bk).sum(-1)
    return out


def _score_rescore(ctx: _Ctx, blocks):
    """Pooled candidates, ranked by the softmax mass every ``stride``-th query gives their keys (the
    kernel on CUDA where it takes the shape, else :func:`candidate_mass`)."""
    stride = ctx.opt("stride", math.gcd(8, ctx.bq))  # every 8th query, or as close as the block allows
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1 or ctx.bq % stride:
        raise ValueError(f"stride must be a positive int dividing query_block_size={ctx.bq}, got {stride!r}")
    cand = _candidates(ctx, blocks, _score_pooled(ctx, blocks))  # (b, h, c, take) int32
    kw = dict(block_size=ctx.bk, query_block_size=ctx.bq, stride=stride, causal=ctx.causal, scale=ctx.scale)
    from vidhash.kernels.block_mass.ops import candidate_mass_triton, covers_candidates

    if ctx.q.is_cuda and covers_candidates(ctx.q, block_size=ctx.bk, query_block_size=ctx.bq, stride=stride):
        mass = candidate_mass_triton(ctx.q, ctx.k, cand, query_blocks=blocks, **kw)
    else:
        mass = candidate_mass(ctx.q, ctx.k, blocks, cand, **kw)
    return _scatter_candidates(-(-ctx.k.shape[-2] // ctx.bk), cand.long(), mass)


def _score_oracle(ctx: _Ctx, blocks):
    mass, _ = block_mass(ctx.q, ctx.k, block_size=ctx.bk, query_block_size=ctx.bq, causal=ctx.causal,
                         scale=ctx.scale, query_blocks=blocks)
    return mass


_SCORE_FNS: dict[str, Callable] = {
    "simhash": _score_simhash, "pooled": _score_pooled, "parent": _score_parent, "moments": _score_moments,
    "subgrid": _score_subgrid,
    "prefilter": _score_prefilter, "rescore": _score_rescore, "oracle": _score_oracle,
}


# --------------------------------------------------------------------------------------------
# top-k with select_blocks' rules
# --------------------------------------------------------------------------------------------
def order_keys(score: torch.Tensor) -> torch.Tensor:
    """int64 keys that sort like ``(score descending, block index ascending)``: the float32 score's
    bits made order-preserving (negatives flipped; ``-0.0`` counted as ``0.0``) in the high 32 bits,
    the complement of the index in the low 32 — so one ``topk`` of the keys is a stable descending
    sort's first ``kept``, exactly. ``±inf`` order as scores do."""
    nkb = score.shape[-1]
    bits = (score.float() + 0.0).contiguous().view(torch.int32)  # + 0.0: -0.0 → 0.0
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    return bits * (1 << 32) + (nkb - 1 - torch.arange(nkb, device=score.device, dtype=torch.int64))


def rank_top(score: torch.Tensor, forced: torch.Tensor, allowed: torch.Tensor, kept: int) -> torch.Tensor:
    """Indices ``(b, h, c, kept)`` int32: forced blocks, then the highest ``score (b, h, c, nkb)``,
    ties to the lower index (a stable sort's order, taken by one ``topk`` of :func:`order_keys`:
    no full sort); ascending, ``-1`` where a row has fewer allowed blocks than ``kept``.
    ``forced``/``allowed`` are ``(c, nkb)``."""
    nkb = score.shape[-1]
    score = score.float()
    score = torch.where(torch.isnan(score), torch.finfo(torch.float32).min, score)  # NaN: last of the allowed, never above a forced block
    rank = torch.where(forced, float("inf"), score)
    rank = torch.where(allowed, rank, float("-inf"))
    order = order_keys(rank).topk(kept, dim=-1, sorted=False).indices
    ok = allowed.expand_as(rank).gather(-1, order)
    idx = torch.where(ok, order, nkb).sort(dim=-1).values
    return torch.where(idx == nkb, -1, idx).to(torch.int32)


def select_from_mass(
    mass: torch.Tensor,
    nq: int,
    nk: int,
    *,
    density: float,
    block_size: int,
    query_block_size: int,
    local_blocks: int = 1,
    sink_blocks: int = 1,
    causal: bool = False,
) -> BlockSelection:
    """The selection a block mass ``mass (b, h, nqb, nkb)`` makes under
    :func:`vidhash.attention.select_blocks`' rules: as many key blocks per query block
    (``num_kept_blocks``), the forced sink / local blocks first, then the heaviest allowed blocks,
    ties to the lower index. With the exact mass of these q, k this is the oracle's selection; with
    the mass of an earlier denoising step (the drop-in's ``reuse_mass``) an estimate that needs no
    scorer."""
    density, bk, bq = check_selection_args(density, block_size, query_block_size, local_blocks, sink_blocks)
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    if mass.dim() != 4 or tuple(mass.shape[2:]) != (nqb, nkb):
        raise ValueError(f"mass must be (b, h, {nqb}, {nkb}) for nq={nq}, nk={nk} and these blocks, got {tuple(mass.shape)}")
    kept = num_kept_blocks(nq, nk, density=density, block_size=bk, query_block_size=bq, local_blocks=local_blocks,
                           sink_blocks=sink_blocks, causal=causal)
    forced, allowed = forced_and_allowed(torch.arange(nqb, device=mass.device), nq, nk, bq, bk, local_blocks,
                                         sink_blocks, causal)
    return BlockSelection(rank_top(mass, forced, allowed, kept), bk, bq, nq, nk, causal)


@torch.no_grad()
def score_blocks(q: torch.Tensor, k: torch.Tensor, scorer="pooled", *, block_size: int = 64,
                 query_block_size: int | None = None, causal: bool = False, scale: float | None = None,
                 query_blocks: torch.Tensor | None = None, **options) -> torch.Tensor:
    """Scores ``(b, h, c, nkb)`` float32 of ``scorer`` (a name of :data:`SCORERS` or a module with
    ``block_scores(q, k, blocks, ...)``) for ``query_blocks`` (default all; all at once).
    ``prefilter`` and ``rescore`` score only their candidates and need ``kept=`` (others ``-1e30``)."""
    check_qkv(q, k)
    bk = check_block("block_size", block_size)
    bq = check_block("query_block_size", query_block_size if query_block_size is not None else block_size)
    if scorer in ("prefilter", "rescore") and "kept" not in options:
        raise ValueError(f"scorer={scorer!r} scores factor × kept candidates only: pass kept= (the blocks a "
                         "selection keeps), or use select_blocks_scored")
    blocks = torch.arange(-(-q.shape[-2] // bq), device=q.device) if query_blocks is None else query_blocks.long()
    options = dict(options)
    if "kept" in options:
        options["_kept"] = options.pop("kept")
    ctx = _Ctx(q, k, bk, bq, causal, scale, options)
    return _scorer_fn(scorer)(ctx, blocks)


def _scorer_fn(scorer) -> Callable:
    if isinstance(scorer, str):
        if scorer not in _SCORE_FNS:
            raise ValueError(f"scorer must be one of {SCORERS} or a LearnedBlockScorer, got {scorer!r}")
        return _SCORE_FNS[scorer]
    if hasattr(scorer, "block_scores"):
        return lambda ctx, blocks: scorer.block_scores(ctx.q, ctx.k, blocks, block_size=ctx.bk,
                                                       query_block_size=ctx.bq, cache=ctx.cache)
    raise ValueError(f"scorer must be one of {SCORERS} or a LearnedBlockScorer, got {type(scorer).__name__}")


@torch.no_grad()
def select_blocks_scored(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    scorer="pooled",
    density: float = 0.125,
    block_size: int = 64,
    query_block_size: int | None = None,
    local_blocks: int = 1,
    sink_blocks: int = 1,
    causal: bool = False,
    scale: float | None = None,
    query_blocks: torch.Tensor | None = None,
    **options,
):
    """:func:`vidhash.attention.select_blocks` with any scorer (see the module docstring).

    Returns a :class:`~vidhash.attention.BlockSelection`; with ``query_blocks`` only those rows
    are selected and the int32 indices ``(b, h, len(query_blocks), kept)`` are returned instead.
    ``options`` go to the scorer (``hasher``; ``m``, ``sub``, ``reduce``; ``factor``; ``stride``).
    """
    check_qkv(q, k)
    density, bk, bq = check_selection_args(density, block_size, query_block_size, local_blocks, sink_blocks)
    fn = _scorer_fn(scorer)
    nq, nk = q.shape[-2], k.shape[-2]
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    kept = num_kept_blocks(nq, nk, density=density, block_size=bk, query_block_size=bq, local_blocks=local_blocks,
                           sink_blocks=sink_blocks, causal=causal)
    ctx = _Ctx(q, k, bk, bq, causal, scale, dict(options, _kept=kept, _local=local_blocks, _sink=sink_blocks))
    blocks = torch.arange(nqb, device=q.device) if query_blocks is None else query_blocks.to(q.device).long()
    b, h = q.shape[:2]
    out = torch.empty(b, h, blocks.numel(), kept, dtype=torch.int32, device=q.device)
    chunk = max(1, _CHUNK_ELEMS // max(1, b * h * nkb * options.get("m", 1) * (bk // options.get("sub", bk))))
    for start in range(0, blocks.numel(), chunk):
        sub = blocks[start : start + chunk]
        forced, allowed = forced_and_allowed(sub, nq, nk, bq, bk, local_blocks, sink_blocks, causal)
        if kept == nkb:  # everything allowed is kept: no scores needed
            score = torch.zeros(b, h, sub.numel(), nkb, device=q.device)
        else:
            score = fn(ctx, sub)
        out[:, :, start : start + sub.numel()] = rank_top(score, forced, allowed, kept)
    if query_blocks is not None:
        return out
    return BlockSelection(out, bk, bq, nq, nk, causal)
