"""Torch reference of the block-score kernel, and the block codes both of them read (no triton).

Letters: b batch, h heads, n tokens, d head_dim, c query blocks, m sub-centroids of a query
block, j key blocks, p key sub-blocks of a key block, r code width.

Pipeline (shared by :mod:`.ops` and this reference; only step 3 differs):

1. block codes in nats: :func:`subgrid_codes` — ``√s`` times the mean of each of the ``m`` runs
   of ``query_block_size / m`` queries of a query block and of each run of ``sub`` keys of a key
   block (``m = 1, sub = block_size``: ``pooled``, ``code_q · code_k = s · q̄ · k̄``), or a
   learned scorer's codes; :func:`moment_codes` (``moments``: means and variances, 3d wide);
2. :func:`quantize_codes`: int8 codes, one scale per (batch, head) and role, width padded to
   ``R`` (a power of two ≥ 32); ``shift`` per (batch, head) so that one level (``2^shift``
   integer score units) is at most ``resolution`` nats;
3. :func:`block_score_reference`: per query block, the key blocks of the highest levels (the
   kernel's rules, see ``kernel.py``), ties to the lower index, forced blocks first, ascending,
   ``-1``-padded — integer arithmetic only, so equal to the kernel's indices exactly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vidhash.kernels.block_select.naive import forced_and_allowed, num_kept_blocks
from vidhash.ops.checks import BlockSelection, check_qkv, check_selection_args, resolve_scale

RESOLUTION = 1.0 / 16  # nats per level at most: 256 levels span ≥ 16 nats below a row's best
RESOLUTION_RANGE = (1e-20, 1e20)  # the kernel takes it as three float32 parts (exact in this range)
MIN_WIDTH = 32  # int8 tl.dot needs K ≥ 32 (scores stay exact in float32 up to 512 wide: 512 · 127² < 2^24)
_NEG = -(1 << 30)
_CHUNK_ELEMS = 1 << 23


def code_width(r: int) -> int:
    """Padded code width ``R``: a power of two, at least 32."""
    return max(MIN_WIDTH, 1 << max(0, (int(r) - 1).bit_length()))


def block_means(x: torch.Tensor, block_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean token of each run of ``block_size`` tokens of ``x (b, h, n, d)`` (a partial last run:
    over its real tokens), ``(b, h, ceil(n / block_size), d)`` in ``dtype`` (float32 by default);
    sums in ``dtype`` straight from ``x``'s dtype and strides (no float32 copy of ``x``). The one
    block-mean helper of the scorers, the codes and the remainder."""
    b, h, n, d = x.shape
    full = n // block_size
    parts = []
    if full:
        parts.append(x[:, :, : full * block_size].reshape(b, h, full, block_size, d).sum(-2, dtype=dtype) / block_size)
    if n > full * block_size:
        tail = x[:, :, full * block_size :]
        parts.append(tail.sum(-2, keepdim=True, dtype=dtype) / tail.shape[-2])
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


PARENT_TOKENS = 64  # ``parent``: the key means of blocks under 64 tokens lean on their 64-token parent's
PARENT_WEIGHT = 0.9  # its share of each key code (CPU study 2026-12-05, scripts/study_coarse_scores.py)


def parent_key_means(k: torch.Tensor, block_size: int, parent_tokens: int = PARENT_TOKENS,
                     weight: float = PARENT_WEIGHT) -> torch.Tensor:
    """The ``parent`` scorer's key codes before scaling, float32 ``(b, h, nkb, d)``: each key block's
    mean blended with the mean of the ``parent_tokens``-token block holding it,
    ``weight · parent + (1 − weight) · own`` (a ragged last parent: the mean of its real tokens).
    Blocks of ``parent_tokens`` or more (or not dividing it) keep their own mean: the ``pooled`` codes."""
    own = block_means(k, block_size)
    if block_size >= parent_tokens or parent_tokens % block_size:
        return own
    parent = block_means(k, parent_tokens).repeat_interleave(parent_tokens // block_size, dim=2)[:, :, : own.shape[2]]
    return weight * parent + (1.0 - weight) * own


def check_parent(scorer, causal: bool) -> None:
    """``parent`` is non-causal: a 64-token parent may hold keys after a causal query block's last
    position, whose values would then steer which earlier blocks it keeps."""
    if causal and isinstance(scorer, str) and scorer == "parent":
        raise ValueError("scorer='parent' is non-causal (a key block's 64-token parent may hold keys a causal "
                         "query block cannot see): use scorer='pooled' with causal=True")


def check_grid(block_size: int, query_block_size: int, m: int, sub: int) -> tuple[int, int]:
    """``(m, p)``: sub-centroids per query block and key sub-blocks per key block."""
    if not isinstance(m, int) or m < 1 or query_block_size % m:
        raise ValueError(f"m must be a positive int dividing query_block_size={query_block_size}, got {m!r}")
    if not isinstance(sub, int) or sub < 1 or block_size % sub:
        raise ValueError(f"sub must be a positive int dividing block_size={block_size}, got {sub!r}")
    return m, block_size // sub


def subgrid_codes(q: torch.Tensor, k: torch.Tensor, block_size: int, query_block_size: int, scale: float,
                  m: int = 1, sub: int | None = None, project=None):
    """Codes ``(b, h, nqb·m, ·)`` and ``(b, h, nkb·p, ·)`` in nats: ``√s ·`` the mean of each run of
    ``query_block_size / m`` queries and ``sub`` keys (default ``sub = block_size``), runs past the
    end zero. ``project(x, role)`` (a learned scorer's map of mean tokens) replaces ``√s · x``."""
    cq, ck, factor = _subgrid_means(q, k, block_size, query_block_size, scale, m, sub, project)
    m, p = check_grid(block_size, query_block_size, m, block_size if sub is None else sub)
    nqb, nkb = -(-q.shape[-2] // query_block_size), -(-k.shape[-2] // block_size)
    return _pad_rows(cq * factor, nqb * m), _pad_rows(ck * factor, nkb * p)


def _subgrid_means(q, k, block_size, query_block_size, scale, m, sub, project):
    """:func:`subgrid_codes` before its factor and padding: ``(cq, ck, factor)``."""
    sub = block_size if sub is None else sub
    m, _ = check_grid(block_size, query_block_size, m, sub)
    cq, ck = block_means(q, query_block_size // m), block_means(k, sub)
    if project is None:
        return cq, ck, math.sqrt(scale)
    return project(cq, "query"), project(ck, "key"), 1.0


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return F.pad(x, (0, 0, 0, rows - x.shape[-2])) if rows > x.shape[-2] else x


def block_sq_means(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean of the squared tokens of each run of ``block_size`` tokens, float32 ``(b, h, nb, d)``."""
    b, h, n, d = x.shape
    full = n // block_size
    parts = []
    if full:
        head = x[:, :, : full * block_size].reshape(b, h, full, block_size, d).float()
        parts.append(head.square().sum(-2) / block_size)
    if n > full * block_size:
        tail = x[:, :, full * block_size :].float()
        parts.append(tail.square().sum(-2, keepdim=True) / tail.shape[-2])
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def moment_codes(q: torch.Tensor, k: torch.Tensor, block_size: int, query_block_size: int, scale: float):
    """``moments``' codes ``(b, h, nqb, 3d)``, ``(b, h, nkb, 3d)``: with per-channel means ``μ`` and
    variances ``σ²`` of a block, ``[√s μ_q, s/√2 · E[q²], s/√2 · σ²_q] · [√s μ_k, s/√2 · σ²_k, s/√2 · μ_k²]
    = s μ_q·μ_k + s²/2 (E[q²]·σ²_k + σ²_q·μ_k²)``: the second-order estimate of ``log E exp(s q·k)``
    over the block pair (``vidhash.selection.scorers``' ``moments``)."""
    root, half = math.sqrt(scale), scale / math.sqrt(2.0)
    mq, mk = block_means(q, query_block_size), block_means(k, block_size)
    q2, k2 = block_sq_means(q, query_block_size), block_sq_means(k, block_size)
    var_q, var_k = (q2 - mq.square()).clamp(min=0), (k2 - mk.square()).clamp(min=0)
    cq = torch.cat([mq * root, q2 * half, var_q * half], dim=-1)
    ck = torch.cat([mk * root, var_k * half, mk.square() * half], dim=-1)
    return cq, ck


def check_codes(cq: torch.Tensor, ck: torch.Tensor, resolution: float) -> None:
    """Float codes to quantise (both forms): one (b, h) and width, at most 512 wide; resolution > 0."""
    if not RESOLUTION_RANGE[0] <= resolution <= RESOLUTION_RANGE[1]:
        raise ValueError(f"resolution must be in [{RESOLUTION_RANGE[0]:g}, {RESOLUTION_RANGE[1]:g}] nats, got {resolution!r}")
    if cq.shape[:2] != ck.shape[:2] or cq.shape[-1] != ck.shape[-1]:
        raise ValueError(f"query codes {tuple(cq.shape)} and key codes {tuple(ck.shape)} disagree in (b, h) or width")
    if cq.shape[-1] > 512:
        raise ValueError(f"codes are at most 512 wide, got {cq.shape[-1]}")


def quantize_codes(cq: torch.Tensor, ck: torch.Tensor, resolution: float = RESOLUTION, return_unit: bool = False):
    """int8 codes ``(b, h, ·, R)`` and int32 ``shift (b·h,)`` from float codes (see module docstring);
    with ``return_unit`` also ``unit (b·h,)`` float64, the nats of one integer score unit.

    Per (batch, head) and channel, query codes are multiplied and key codes divided by
    ``√(max|k| / max|q|)`` (every dot product unchanged; both sides of a channel then span the same
    range), then ``code ≈ int8 · scale`` with ``scale = max|code| / 127``; an integer score unit is
    ``scale_q · scale_k`` nats and ``shift = floor(log2(resolution / unit))`` (in [0, 24]).
    """
    check_codes(cq, ck, resolution)
    width = code_width(cq.shape[-1])
    cq, ck = cq.float(), ck.float()
    range_q = cq.abs().amax(dim=-2, keepdim=True)  # (b, h, 1, r)
    range_k = ck.abs().amax(dim=-2, keepdim=True)
    both = (range_q > 0) & (range_k > 0)
    # the square root correctly rounded (torch's float32 sqrt on a CPU is not, on ~18 % of inputs; CUDA's is)
    balance = torch.where(both, (range_k / range_q.clamp(min=1e-30)).double().sqrt().float(), torch.ones_like(range_q))
    cq, ck = cq * balance, ck / balance

    def q8(x):
        x = x.float()
        scale = x.abs().amax(dim=(-2, -1), keepdim=True).clamp_(min=1e-20) * (1.0 / 127.0)  # CUDA's "/ 127.0" too
        x8 = torch.round(x / scale).clamp_(-127, 127).to(torch.int8)
        if width > x.shape[-1]:
            x8 = F.pad(x8, (0, width - x.shape[-1]))
        return x8.contiguous(), scale.flatten().double()

    qi, sq = q8(cq)
    ki, sk = q8(ck)
    shift = torch.floor(torch.log2((sq * sk).reciprocal() * resolution)).clamp(min=0, max=24).to(torch.int32)
    return (qi, ki, shift, sq * sk) if return_unit else (qi, ki, shift)


def pair_levels(s: torch.Tensor, cell_ok: torch.Tensor, free_cells: torch.Tensor, m: int, p: int,
                shift: torch.Tensor) -> torch.Tensor:
    """Levels ``(b, h, c, j)`` in [0, 255] from int64 cell scores ``s (b, h, c·m, j·p)``: each
    sub-centroid normalised by its best free cell, the best cell of each pair, ``2^shift`` per level."""
    smax = torch.where(free_cells & cell_ok, s, _NEG).amax(-1, keepdim=True)
    n = torch.where(cell_ok, s - smax, _NEG)
    b, h, cm, jp = n.shape
    n = n.reshape(b, h, cm // m, m, jp // p, p).amax(dim=(3, 5))
    return torch.clamp(255 + (n >> shift), min=0)


@torch.no_grad()
def block_score_reference(
    qi: torch.Tensor,
    ki: torch.Tensor,
    shift: torch.Tensor,
    *,
    kept: int,
    num_queries: int,
    num_keys: int,
    block_size: int,
    query_block_size: int,
    local_blocks: int,
    sink_blocks: int,
    causal: bool,
    m: int = 1,
    sub: int | None = None,
) -> torch.Tensor:
    """Indices ``(b, h, nqb, kept)`` int32 of the kernel, in torch (chunks of query blocks)."""
    m, p = check_grid(block_size, query_block_size, m, block_size if sub is None else sub)
    b, h = qi.shape[:2]
    nqb, nkb = -(-num_queries // query_block_size), -(-num_keys // block_size)
    nsub = -(-num_keys // (block_size // p))
    sh = shift.to(qi.device).reshape(b, h, 1, 1).to(torch.int64)
    kf = ki.float()
    col_ok = torch.arange(nkb * p, device=qi.device) < nsub
    out = torch.empty(b, h, nqb, kept, dtype=torch.int32, device=qi.device)
    tie = nkb - torch.arange(nkb, device=qi.device, dtype=torch.int64)
    chunk = max(1, _CHUNK_ELEMS // max(1, b * h * nkb * m * p))
    for start in range(0, nqb, chunk):
        rows = torch.arange(start, min(nqb, start + chunk), device=qi.device)
        c = rows.numel()
        forced, allowed = forced_and_allowed(rows, num_queries, num_keys, query_block_size, block_size,
                                              local_blocks, sink_blocks, causal)
        # 1. integer cell scores, exact in float32 (|s| ≤ R · 127² < 2^24)
        s = torch.matmul(qi[:, :, start * m : (start + c) * m].float(), kf.transpose(-1, -2)).to(torch.int64)
        run = torch.arange(m, device=qi.device)
        sub_ok = ((rows.unsqueeze(-1) * query_block_size + run * (query_block_size // m)) < num_queries).flatten()
        free_cells = (allowed & ~forced)[:, None, :, None].expand(c, m, nkb, p).reshape(c * m, nkb * p)
        # 2. levels, forced blocks above all, ties to the lower index
        lvl = pair_levels(s, sub_ok[:, None] & col_ok[None, :], free_cells, m, p, sh)
        lvl = torch.where(forced, 256, lvl)
        rank = torch.where(allowed, lvl * (nkb + 1) + tie, -1)
        top = rank.topk(kept, dim=-1)
        idx = torch.where(top.values >= 0, top.indices, nkb).sort(dim=-1).values
        out[:, :, start : start + c] = torch.where(idx == nkb, -1, idx).to(torch.int32)
    return out


# --------------------------------------------------------------------------------------------
# the whole selection in torch: codes, kept, reference top-k
# --------------------------------------------------------------------------------------------
def float_codes(q: torch.Tensor, k: torch.Tensor, *, block_size: int, query_block_size: int, scale: float | None,
                m: int = 1, sub: int | None = None, scorer=None):
    """A code scorer's float codes before quantisation, as ``(cq, ck, factor, rows_q, rows_k)``: the
    codes in nats are ``factor ·`` ``cq (b, h, ≤ rows_q, r)`` and ``ck`` with zero rows appended up
    to ``rows_q = nqb·m`` and ``rows_k = nkb·p`` (the factor is ``√s`` for pooled / sub-grid means,
    1 for learned and moments codes). :func:`selection_codes` finishes them in torch, the Triton
    path (``ops.quantize_codes_triton``) in two launches — the same int8 codes."""
    project = None
    if scorer in ("moments", "parent"):
        if m != 1 or sub not in (None, block_size):
            raise ValueError(f"scorer={scorer!r} takes m=1 and no sub-blocks")
    elif scorer is not None:
        if getattr(scorer, "code_kind", None) != "real" or getattr(scorer, "features", None) not in ("linear", "diag"):
            raise ValueError("scorer must be None (pooled), 'moments', 'parent' or a LearnedBlockScorer with codes='real', "
                             "features 'linear' or 'diag'")
        project = scorer.map_means
    sc = resolve_scale(scale, q.shape[-1])
    sub_size = block_size if sub is None else sub
    m, p = check_grid(block_size, query_block_size, m, sub_size)
    rows_q, rows_k = -(-q.shape[-2] // query_block_size) * m, -(-k.shape[-2] // block_size) * p
    if scorer == "moments":
        cq, ck = moment_codes(q, k, block_size, query_block_size, sc)
        return cq, ck, 1.0, rows_q, rows_k
    if scorer == "parent":
        return block_means(q, query_block_size), parent_key_means(k, block_size), math.sqrt(sc), rows_q, rows_k
    cq, ck, factor = _subgrid_means(q, k, block_size, query_block_size, sc, m, sub, project)
    return cq, ck, factor, rows_q, rows_k


def selection_codes(q: torch.Tensor, k: torch.Tensor, *, block_size: int, query_block_size: int, scale: float | None,
                    m: int = 1, sub: int | None = None, scorer=None, resolution: float = RESOLUTION):
    """int8 codes ``(qi, ki, shift)`` of a code scorer (see :func:`select_blocks_codes_reference`)."""
    cq, ck, factor, rows_q, rows_k = float_codes(q, k, block_size=block_size, query_block_size=query_block_size,
                                                 scale=scale, m=m, sub=sub, scorer=scorer)
    return quantize_codes(_pad_rows(cq * factor, rows_q), _pad_rows(ck * factor, rows_k), resolution)


def empty_selection(q: torch.Tensor, kept: int, bk: int, bq: int, nk: int, causal: bool) -> BlockSelection:
    """The selection of no queries: ``(b, h, 0, kept)`` indices."""
    return BlockSelection(torch.empty(*q.shape[:2], 0, kept, dtype=torch.int32, device=q.device), bk, bq, 0, nk, causal)


@torch.no_grad()
def select_blocks_codes_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    density: float = 0.125,
    block_size: int = 64,
    query_block_size: int | None = None,
    local_blocks: int = 1,
    sink_blocks: int = 1,
    causal: bool = False,
    scale: float | None = None,
    m: int = 1,
    sub: int | None = None,
    scorer=None,
    resolution: float = RESOLUTION,
) -> BlockSelection:
    """:func:`vidhash.kernels.block_score.ops.select_blocks_codes` in torch (no triton): the same
    codes (``scorer`` None = pooled, ``"moments"``, ``"parent"`` or a learned scorer with real
    linear/diag codes), the same ``kept``, :func:`block_score_reference`'s indices (equal to the kernel's)."""
    check_qkv(q, k)
    check_parent(scorer, causal)
    density, bk, bq = check_selection_args(density, block_size, query_block_size, local_blocks, sink_blocks)
    nq, nk = q.shape[-2], k.shape[-2]
    kept = num_kept_blocks(nq, nk, density=density, block_size=bk, query_block_size=bq, local_blocks=local_blocks,
                           sink_blocks=sink_blocks, causal=causal)
    if nq == 0:  # no query block: nothing to score (an empty selection, as the float path gives)
        check_grid(bk, bq, m, bk if sub is None else sub)
        return empty_selection(q, kept, bk, bq, nk, causal)
    qi, ki, shift = selection_codes(q, k, block_size=bk, query_block_size=bq, scale=scale, m=m, sub=sub,
                                    scorer=scorer, resolution=resolution)
    idx = block_score_reference(qi, ki, shift, kept=kept, num_queries=nq, num_keys=nk, block_size=bk,
                                query_block_size=bq, local_blocks=local_blocks, sink_blocks=sink_blocks,
                                causal=causal, m=m, sub=sub)
    return BlockSelection(idx, bk, bq, nq, nk, causal)
