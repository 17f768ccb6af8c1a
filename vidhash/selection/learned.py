"""Learned block scorer: per-head codes of query and key blocks, fitted to rank key blocks by the
exact attention mass they hold (HashAttention's recipe lifted from tokens to blocks).

Letters: b batch, h heads, n tokens, d head_dim, c query blocks, j key blocks, r code width,
f block features, e hidden width.

A block's code is ``φ(x) (r,)`` per head: ``"linear"`` maps the block's mean token (``r × d``
matrices, initialised so that the score starts as ``pooled``'s ``s · q̄ · k̄``), ``"diag"`` weighs
its channels (``d`` weights per head and role: little to overfit on a short recording),
``"minmax"`` maps ``[mean, max, min]`` of the block, ``"mlp"`` runs a small per-token MLP and
averages its outputs over the block (per-token codes, pooled). Scores:

* ``codes="real"`` — ``φ_q(i) · φ_k(j)``: the same dot product as ``pooled``, so the
  ``kernels/block_score`` kernel runs it at ``pooled``'s cost (codes of width r instead of d);
* ``codes="bits"`` — sign bits of the codes and Hamming similarity: block signatures for the
  existing SimHash selection kernel (``kernels/block_select``);
* a grid (``m`` query sub-centroids × key sub-blocks of ``sub`` tokens, linear real codes): the
  map is applied to the sub-means and a pair scores as in the kernel — each sub-centroid's cell
  scores minus its best over free blocks, the best cell (``subgrid``'s ``reduce="max"`` form,
  trained through the max); the kernel runs it with ``select_blocks_codes(m=, sub=, scorer=)``.

:meth:`LearnedBlockScorer.fit` records the exact block masses ``M[i, j]``
(:func:`vidhash.selection.oracle.block_mass`) of the given activations and minimises, per query
block, the cross-entropy between the mass distribution ``M[i, :] / Σ M[i, :]`` and the softmax of
the scores over key blocks (a listwise ranking loss: the heaviest blocks carry the most weight),
blocks that ``local_blocks`` / ``sink_blocks`` force left out; or (``loss="bce"``) HashAttention's
weighted BCE with the oracle's top-``kept`` blocks as positives. Bits train through ``tanh``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vidhash.kernels.block_select.naive import forced_and_allowed
from vidhash.hashing import hamming_similarity, pack_bits

from .oracle import block_mass, eval_query_blocks


FEATURES = ("linear", "diag", "minmax", "mlp")
_MEAN_MAPS = ("linear", "diag")  # codes are a map of the block's mean token


class LearnedBlockScorer(nn.Module):
    """Per-head learned block codes (see the module docstring).

    >>> scorer = LearnedBlockScorer(64, heads=2)
    >>> q, k = torch.randn(1, 2, 512, 64), torch.randn(1, 2, 512, 64)
    >>> report = scorer.fit(q, k, block_size=32, query_block_size=64, kept=2, steps=5)
    >>> scorer.block_scores(q, k, torch.arange(8), block_size=32, query_block_size=64).shape
    torch.Size([1, 2, 8, 16])
    """

    def __init__(self, head_dim: int, heads: int, *, rank: int | None = None, features: str = "linear",
                 codes: str = "real", hidden: int = 64, scale: float | None = None, m: int = 1,
                 sub: int | None = None, seed: int = 0):
        super().__init__()
        if (m != 1 or sub is not None) and (features not in _MEAN_MAPS or codes != "real"):
            raise ValueError("a grid (m > 1 or sub) needs features='linear' or 'diag' and codes='real' (the kernel's form)")
        if features == "diag" and rank not in (None, head_dim):
            raise ValueError(f"features='diag' has rank head_dim={head_dim}, got rank={rank!r}")
        if not isinstance(m, int) or m < 1 or (sub is not None and (not isinstance(sub, int) or sub < 1)):
            raise ValueError(f"m must be a positive int and sub None or a positive int, got {m!r}, {sub!r}")
        self.m, self.sub = m, sub
        if features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
        if codes not in ("real", "bits"):
            raise ValueError(f"codes must be 'real' or 'bits', got {codes!r}")
        if head_dim < 1 or heads < 1:
            raise ValueError(f"head_dim and heads must be positive, got {head_dim}, {heads}")
        r = head_dim if rank is None else int(rank)
        if not 1 <= r <= 256:
            raise ValueError(f"rank must be in [1, 256], got {rank!r}")
        self.head_dim, self.heads, self.rank, self.features, self.code_kind = head_dim, heads, r, features, codes
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        g = torch.Generator().manual_seed(seed)
        # 1. linear maps start as √s · (first r coordinates): score = s · q̄ · k̄ at init (r = d)
        fin = 3 * head_dim if features == "minmax" else head_dim
        eye = torch.eye(fin, r)
        init = eye.expand(heads, fin, r).clone() * math.sqrt(self.scale)
        if features == "diag":  # one weight per channel: d parameters per head and role
            init = torch.full((heads, head_dim), math.sqrt(self.scale))
        self.wq, self.wk = nn.Parameter(init.clone()), nn.Parameter(init.clone())
        # 2. per-token MLPs (features="mlp"): residual on top of the linear map, zero at init
        if features == "mlp":
            self.hq = nn.Parameter(torch.randn(heads, head_dim, hidden, generator=g) / math.sqrt(head_dim))
            self.hk = nn.Parameter(torch.randn(heads, head_dim, hidden, generator=g) / math.sqrt(head_dim))
            self.oq, self.ok = nn.Parameter(torch.zeros(heads, hidden, r)), nn.Parameter(torch.zeros(heads, hidden, r))
        self.log_temp = nn.Parameter(torch.zeros(()))  # bits: score = exp(log_temp) · 8 · mean(c_q c_k)
        self.bias = nn.Parameter(torch.zeros(()))  # loss="bce": logit = score − bias

    # ----------------------------------------------------------------------------- codes
    def weight(self, role: str) -> torch.Tensor:
        """The map ``(heads, features, r)`` of ``role`` (``"diag"``: the diagonal matrix)."""
        w = self.wq if role == "query" else self.wk
        return torch.diag_embed(w) if self.features == "diag" else w

    def token_codes(self, x: torch.Tensor, role: str) -> torch.Tensor:
        """Per-token real codes ``(b, h, n, r)`` (their block mean is the block's code)."""
        x = x.float()
        z = torch.matmul(x, self.weight(role))
        if self.features == "mlp":
            hw, ow = (self.hq, self.oq) if role == "query" else (self.hk, self.ok)
            z = z + torch.matmul(F.silu(torch.matmul(x, hw)), ow)
        return z

    def block_codes(self, x: torch.Tensor, block_size: int, role: str) -> torch.Tensor:
        """Real codes ``(b, h, nb, r)`` of each block of ``x (b, h, n, d)``: mean of token codes
        over the block's real tokens (for ``"linear"``, the code of the mean token)."""
        from .scorers import block_moments, block_pool3

        if role not in ("query", "key"):
            raise ValueError(f"role must be 'query' or 'key', got {role!r}")
        if x.shape[-3] != self.heads or x.shape[-1] != self.head_dim:
            raise ValueError(f"x must be (b, heads={self.heads}, n, head_dim={self.head_dim}), got {tuple(x.shape)}")
        if self.features in _MEAN_MAPS:
            return torch.matmul(block_moments(x, block_size), self.weight(role))
        if self.features == "minmax":
            return torch.matmul(block_pool3(x, block_size), self.weight(role))
        return block_moments(self.token_codes(x, role), block_size)

    def map_means(self, means: torch.Tensor, role: str) -> torch.Tensor:
        """Codes of mean tokens ``(b, h, nb, d)`` (``features="linear"`` or ``"diag"``): ``means @ W``."""
        if self.features not in _MEAN_MAPS:
            raise ValueError(f"map_means needs features='linear' or 'diag', got {self.features!r}")
        return torch.matmul(means.float(), self.weight(role))

    def signatures(self, x: torch.Tensor, block_size: int, role: str) -> torch.Tensor:
        """Packed sign bits ``(b, h, nb, w)`` int32 of the block codes (``codes="bits"``)."""
        return pack_bits(self.block_codes(x, block_size, role) > 0)

    def pair_scores(self, cq: torch.Tensor, ck: torch.Tensor) -> torch.Tensor:
        """Scores ``(b, h, c, j)`` from real block codes (bits: tanh while training, sign otherwise)."""
        if self.code_kind == "real":
            return torch.matmul(cq, ck.transpose(-1, -2))
        if self.training:
            cq, ck = torch.tanh(cq), torch.tanh(ck)
        else:
            cq, ck = torch.sign(cq), torch.sign(ck)
        return torch.matmul(cq, ck.transpose(-1, -2)) * (8.0 * self.log_temp.exp() / self.rank)

    @torch.no_grad()
    def block_scores(self, q, k, blocks, *, block_size: int, query_block_size: int, cache: dict | None = None):
        """Scores ``(b, h, c, nkb)`` for the query blocks ``blocks`` (the scorer protocol of
        :func:`vidhash.selection.scorers.score_blocks`). Bits: Hamming similarity, exactly."""
        if self.m != 1 or self.sub is not None:
            nq, nk = q.shape[-2], k.shape[-2]
            sq, sk, sub_ok, col_ok = _grid_stats(q, k, blocks, block_size, query_block_size, self.m, self.sub)
            free = torch.ones(blocks.numel(), -(-nk // block_size), dtype=torch.bool, device=q.device)
            cq, ck = torch.matmul(sq, self.weight("query").unsqueeze(1)), torch.matmul(sk, self.weight("key"))
            return _grid_scores(cq, ck, sub_ok, col_ok, free)
        cache = {} if cache is None else cache
        key = ("learned", id(self))
        if key not in cache:
            cache[key] = (self.block_codes(q, query_block_size, "query"), self.block_codes(k, block_size, "key"))
        cq, ck = cache[key]
        cq = cq[:, :, blocks]
        if self.code_kind == "bits":
            return hamming_similarity(pack_bits(cq > 0), pack_bits(ck > 0), self.rank).float()
        return self.pair_scores(cq, ck)

    # ----------------------------------------------------------------------------- fitting
    def fit(self, q: torch.Tensor, k: torch.Tensor, *, block_size: int, query_block_size: int, kept: int,
            causal: bool = False, local_blocks: int = 0, sink_blocks: int = 0, steps: int = 300,
            lr: float = 1e-2, loss: str = "ce", pos_weight: float = 20.0, decay: float = 1e-3,
            max_query_blocks: int | None = 512, held_out: float = 0.25, check_every: int = 10,
            data: dict | None = None) -> dict:
        """Fit on recorded ``q, k (b, h, n, d)`` (any number of clips/steps stacked in ``b``).

        ``kept`` is the budget the scorer will serve (the ``bce`` positives; the kept share).
        ``decay`` pulls the weights towards their pooled initialisation. ``held_out``: the share of
        the recording kept out of the loss — the last batch entries when ``b > 1`` (stack clips in
        order, so that whole clips are held out), else every ``1 / held_out``-th query block; every
        ``check_every`` steps the kept share on them is measured and the best weights are kept
        (early stopping; ``held_out=0``: nothing held out, the last weights). ``data``: what :func:`fit_data` returned for these arguments
        (to fit several scorers on one recording). Returns the kept mass share (``kept`` blocks by
        score over the oracle's, forced blocks left out) on the fitted and held-out blocks, before
        and after, the step kept and the loss.
        """
        if loss not in ("ce", "bce"):
            raise ValueError(f"loss must be 'ce' or 'bce', got {loss!r}")
        if data is None:
            data = fit_data(q, k, block_size=block_size, query_block_size=query_block_size, causal=causal,
                            local_blocks=local_blocks, sink_blocks=sink_blocks, max_query_blocks=max_query_blocks)
        held = _held_out_rows(data["mass"], held_out)
        train_rows = ~held
        share = lambda rows: self._kept_share(data, kept, rows) if bool(rows.any()) else float("nan")
        report = {"kept_share_before": share(train_rows), "held_out_before": share(held)}
        init = {name: p.detach().clone() for name, p in self.named_parameters()}
        best, best_step, best_val = None, 0, report["held_out_before"]
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        was = self.training
        self.train()
        value = float("nan")
        for step in range(1, steps + 1):
            score = self._fit_scores(data)
            obj = (_listwise_ce(score, data, train_rows) if loss == "ce"
                   else _weighted_bce(score - self.bias, data, kept, pos_weight, train_rows))
            reg = sum(((p - init[n]) ** 2).sum() for n, p in self.named_parameters() if n not in ("log_temp", "bias"))
            opt.zero_grad(set_to_none=True)
            (obj + decay * reg).backward()
            opt.step()
            value = float(obj.detach())
            if held_out and (step % check_every == 0 or step == steps):
                val = share(held)
                if val > best_val:
                    best, best_step, best_val = {n: p.detach().clone() for n, p in self.state_dict().items()}, step, val
        if held_out:  # the best weights on the held-out blocks (the initial ones if no step beat them)
            self.load_state_dict(best if best is not None else init, strict=False)
        else:
            best_step = steps
        self.train(was)
        return dict(report, kept_share_after=share(train_rows), held_out_after=share(held), step=best_step, loss=value)

    def _fit_scores(self, data: dict) -> torch.Tensor:
        if self.features == "mlp":  # per-token codes: through the MLP every step
            cq = self.block_codes(data["q"], data["bq"], "query")[:, :, data["blocks"]]
            return self.pair_scores(cq, self.block_codes(data["k"], data["bk"], "key"))
        from .scorers import block_moments, block_pool3

        if self.m != 1 or self.sub is not None:
            key = ("grid", self.m, self.sub)
            if key not in data:
                data[key] = _grid_stats(data["q"], data["k"], data["blocks"], data["bk"], data["bq"], self.m, self.sub)
            sq, sk, sub_ok, col_ok = data[key]
            cq, ck = torch.matmul(sq, self.weight("query").unsqueeze(1)), torch.matmul(sk, self.weight("key"))
            return _grid_scores(cq, ck, sub_ok, col_ok, data["free"])
        pool = block_moments if self.features in _MEAN_MAPS else block_pool3
        key = ("stats", self.features)
        if key not in data:  # block statistics do not depend on the weights: once per recording
            data[key] = (pool(data["q"], data["bq"])[:, :, data["blocks"]], pool(data["k"], data["bk"]))
        sq, sk = data[key]
        return self.pair_scores(torch.matmul(sq, self.weight("query")), torch.matmul(sk, self.weight("key")))

    @torch.no_grad()
    def _kept_share(self, data: dict, kept: int, rows: torch.Tensor) -> float:
        """Mass of the ``kept`` best-scored free blocks over the oracle's, on ``rows (b, 1, c)``."""
        was = self.training
        self.eval()
        score = self._fit_scores(data).masked_fill(~data["free"], float("-inf"))
        self.train(was)
        mass = data["mass"].masked_fill(~data["free"], 0.0)
        kk = min(kept, mass.shape[-1])
        got = mass.gather(-1, score.topk(kk, dim=-1).indices).sum(-1)
        top = mass.topk(kk, dim=-1).values.sum(-1)
        sel = rows.expand_as(got)
        return float(got[sel].sum() / top[sel].sum().clamp(min=1e-30))


def fit_data(q: torch.Tensor, k: torch.Tensor, *, block_size: int, query_block_size: int, causal: bool = False,
             local_blocks: int = 0, sink_blocks: int = 0, max_query_blocks: int | None = 512) -> dict:
    """Training tensors of :meth:`LearnedBlockScorer.fit`: the exact block masses of
    ``max_query_blocks`` evenly spaced query blocks and which key blocks are free to choose
    (allowed and not forced)."""
    bk, bq = block_size, query_block_size
    q, k = q.detach(), k.detach()
    nq, nk = q.shape[-2], k.shape[-2]
    blocks = eval_query_blocks(-(-nq // bq), max_query_blocks, q.device)
    mass, counts = block_mass(q, k, block_size=bk, query_block_size=bq, causal=causal, query_blocks=blocks)
    forced, allowed = forced_and_allowed(blocks, nq, nk, bq, bk, local_blocks, sink_blocks, causal)
    free = (allowed & ~forced).expand_as(mass)
    return {"q": q, "k": k, "bq": bq, "bk": bk, "blocks": blocks, "mass": mass, "free": free}


def _grid_stats(q, k, blocks, bk: int, bq: int, m: int, sub: int | None):
    """Sub-centroid means ``(b, h, c, m, d)`` of the query blocks ``blocks``, key sub-block means
    ``(b, h, nkb·p, d)`` (zero past the end) and which of them exist: ``(c, m)``, ``(nkb·p,)``."""
    from .scorers import _query_rows, block_moments

    sub = bk if sub is None else sub
    if bq % m or bk % sub:
        raise ValueError(f"m={m} must divide query_block_size={bq} and sub={sub} block_size={bk}")
    nkb, p = -(-k.shape[-2] // bk), bk // sub
    sq, cnt = _query_rows(q, bq, blocks, bq // m)
    sk = block_moments(k, sub)
    col_ok = torch.arange(nkb * p, device=k.device) < sk.shape[-2]
    return sq, F.pad(sk, (0, 0, 0, nkb * p - sk.shape[-2])), cnt > 0, col_ok


def _grid_scores(cq, ck, sub_ok, col_ok, free) -> torch.Tensor:
    """The block_score kernel's form in float: each sub-centroid's cell scores minus its best over
    free blocks' cells, the best cell of each block pair. ``cq (b, h, c, m, r)``, ``ck (b, h, j·p, r)``,
    ``free (…, c, j)``; returns ``(b, h, c, j)``."""
    b, h, c, m, _ = cq.shape
    jp = ck.shape[-2]
    j = free.shape[-1]
    cells = torch.matmul(cq, ck.unsqueeze(2).transpose(-1, -2))  # (b, h, c, m, j·p)
    free_cells = free.expand(b, h, c, j).unsqueeze(-2).repeat_interleave(jp // j, dim=-1)  # (b, h, c, 1, j·p)
    ok = sub_ok.unsqueeze(-1) & col_ok
    best = torch.where(free_cells & ok, cells, float("-inf")).amax(-1, keepdim=True)
    best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
    n = torch.where(ok, cells - best, float("-inf"))
    return n.reshape(b, h, c, m, j, jp // j).amax(dim=(3, 5))


def _held_out_rows(mass: torch.Tensor, share: float) -> torch.Tensor:
    """``(b, 1, c)``: the last ``share`` of the batch entries (b > 1) or every ``1/share``-th block."""
    if not 0 <= share < 1:
        raise ValueError(f"held_out must be in [0, 1), got {share!r}")
    b, _, c, _ = mass.shape
    rows = torch.zeros(b, 1, c, dtype=torch.bool, device=mass.device)
    if share == 0:
        return rows
    if b > 1:
        rows[b - max(1, min(b - 1, round(b * share))) :] = True
    else:
        every = max(2, round(1 / share))
        rows[..., every - 1 :: every] = True
    return rows


def _listwise_ce(score: torch.Tensor, data: dict, rows: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the free blocks' mass distribution against the softmax of the scores, mean
    over the query blocks of ``rows (b, 1, c)`` that have any free mass."""
    free = data["free"]
    target = data["mass"].masked_fill(~free, 0.0)
    total = target.sum(-1, keepdim=True)
    use = (total.squeeze(-1) > 0) & rows
    target = target / total.clamp(min=1e-30)
    logp = torch.log_softmax(score.masked_fill(~free, float("-inf")), dim=-1)
    ce = -(target * logp.masked_fill(~free, 0.0)).sum(-1)
    return ce[use].mean() if use.any() else ce.sum() * 0


def _weighted_bce(score: torch.Tensor, data: dict, kept: int, pos_weight: float, rows: torch.Tensor) -> torch.Tensor:
    free = data["free"]
    mass = data["mass"].masked_fill(~free, -1.0)
    kth = mass.topk(min(kept, mass.shape[-1]), dim=-1).values[..., -1:]
    target = ((mass >= kth) & free).float()
    bce = F.binary_cross_entropy_with_logits(score, target, pos_weight=torch.tensor(pos_weight, device=score.device),
                                             reduction="none")
    return bce[free & rows.unsqueeze(-1)].mean()
