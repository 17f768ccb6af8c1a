"""Bit signatures, packing, Hamming similarity and bucket hashing.

Letters: b batch, h heads, n tokens, d head_dim, m bits, w packed int32 words.

A *signature* is ``n_bits`` sign bits packed little-endian into int32 words: bit ``j`` lives in
word ``j // 32`` at position ``j % 32`` (bit 31 makes the word negative). The similarity of
two signatures is the number of equal bits, ``n_bits - popcount(a ^ b)``, in ``[0, n_bits]``.

Two hashers map ``(..., head_dim)`` vectors to signatures:

* :class:`SimHash` — seeded random hyperplanes (no training). Queries and keys share the
  planes, so similar directions get similar bits (angular LSH).
* :class:`LearnedHash` — HashAttention's recipe: per head, an MLP for queries and one for keys,
  ``tanh`` soft codes while training, ``sign`` with a straight-through gradient otherwise, and
  :meth:`LearnedHash.fit` with weighted BCE against each query's exact top-k keys.

Both expose ``project(x, role)`` (the pre-sign real values), ``forward(x, role)`` (packed
signature) and ``n_bits``/``n_words``; block signatures pool ``project`` over a block.

Buckets: :func:`bucket_index` feeds the LSH code through a keyed integer mixing hash
(LSH decides what groups together, the mixing hash spreads groups uniformly over a fixed
table); :func:`token_bucket` hashes discrete token ids with keyed BLAKE2b.
"""
from __future__ import annotations

import hashlib
import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

MAX_BITS = 256
_MASK32 = 0xFFFFFFFF
_DEFAULT_HASHERS: dict[tuple[int, int, str], "SimHash"] = {}


def _is_int(x) -> bool:
    """An integer (Python's or NumPy's), not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_bits(n_bits: int) -> int:
    if not _is_int(n_bits) or not 1 <= n_bits <= MAX_BITS:
        raise ValueError(f"n_bits must be an int in [1, {MAX_BITS}] (packed into at most {MAX_BITS // 32} int32 words), got {n_bits!r}")
    return int(n_bits)


def num_words(n_bits: int) -> int:
    """int32 words needed to hold ``n_bits`` bits."""
    return (_check_bits(n_bits) + 31) // 32


# --------------------------------------------------------------------------------------------
# packing and popcount
# --------------------------------------------------------------------------------------------
def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a boolean ``(..., m)`` tensor into int32 words ``(..., ceil(m / 32))``."""
    if bits.dtype != torch.bool:
        raise ValueError(f"bits must be a bool tensor, got {bits.dtype}")
    if bits.ndim == 0:
        raise ValueError("bits must have a last dimension of bits")
    m = _check_bits(bits.shape[-1])
    w = (m + 31) // 32
    padded = F.pad(bits.to(torch.int64), (0, w * 32 - m)).reshape(*bits.shape[:-1], w, 32)
    weights = torch.bitwise_left_shift(torch.ones(32, dtype=torch.int64, device=bits.device), torch.arange(32, device=bits.device))
    words = (padded * weights).sum(-1)  # int64 in [0, 2^32)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_bits(words: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: int32 ``(..., w)`` → bool ``(..., n_bits)``."""
    if words.dtype != torch.int32:
        raise ValueError(f"words must be int32, got {words.dtype}")
    if words.shape[-1] * 32 < _check_bits(n_bits):
        raise ValueError(f"{words.shape[-1]} words cannot hold n_bits={n_bits}")
    shifts = torch.arange(32, device=words.device, dtype=torch.int64)
    bits = (words.to(torch.int64).unsqueeze(-1) & _MASK32) >> shifts & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :n_bits].bool()


_POPCOUNT16: dict[torch.device, torch.Tensor] = {}


def _popcount16(device: torch.device) -> torch.Tensor:
    """Set bits of every 16-bit value, as a uint8 lookup table on ``device``."""
    if device not in _POPCOUNT16:
        v = torch.arange(1 << 16, dtype=torch.int64)
        c = torch.zeros_like(v)
        for i in range(16):
            c += (v >> i) & 1
        _POPCOUNT16[device] = c.to(torch.uint8).to(device)
    return _POPCOUNT16[device]


def _halves(x: torch.Tensor) -> torch.Tensor:
    """The two 16-bit halves of each int32 word as int64 indices ``(..., 2)``."""
    return x.contiguous().view(torch.uint16).to(torch.int64).view(*x.shape, 2)


def popcount(x: torch.Tensor) -> torch.Tensor:
    """Number of set bits of each int32 word (as int32), bit 31 included."""
    if x.dtype != torch.int32:
        raise ValueError(f"popcount takes int32 words, got {x.dtype}")
    return _popcount16(x.device)[_halves(x)].sum(-1, dtype=torch.int32)


def hamming_similarity(a: torch.Tensor, b: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Equal bits between every signature of ``a (..., na, w)`` and ``b (..., nb, w)``.

    Returns int32 ``(..., na, nb)`` in ``[0, n_bits]``. Memory is ``na * nb * w`` words: chunk
    the queries for large inputs (the Triton kernels never build this tensor).
    """
    if a.dtype != torch.int32 or b.dtype != torch.int32:
        raise ValueError(f"signatures must be int32, got {a.dtype} and {b.dtype}")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"signature widths differ: {a.shape[-1]} vs {b.shape[-1]} words")
    _check_bits(n_bits)
    # As a matrix product of ±1 bits: dot = equal − different, so equal = (dot + n_bits) / 2.
    # Every value is an integer ≤ 256, exact in float32; far faster than XOR + popcount lookups.
    with torch.autocast(a.device.type, enabled=False):  # keep float32 under a caller's autocast
        dot = torch.matmul(sig_signs(a, n_bits), sig_signs(b, n_bits).transpose(-1, -2))
    return ((dot + n_bits) * 0.5).round().to(torch.int32)


def sig_signs(words: torch.Tensor, n_bits: int) -> torch.Tensor:
    """±1 float32 of the first ``n_bits`` bits of ``words (..., w)`` → ``(..., n_bits)``."""
    if words.shape[-1] * 32 < n_bits:
        raise ValueError(f"{words.shape[-1]} words cannot hold n_bits={n_bits}")
    shifts = torch.arange(32, device=words.device, dtype=torch.int32)
    bits = (words.unsqueeze(-1) >> shifts) & 1  # arithmetic shift, then & 1: bit 31 included
    bits = bits.reshape(*words.shape[:-1], -1)[..., :n_bits]
    return bits.to(torch.float32) * 2 - 1


# --------------------------------------------------------------------------------------------
# bucket hashes
# --------------------------------------------------------------------------------------------
def _mix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def bucket_index(words: torch.Tensor, num_buckets: int, key: int = 0) -> torch.Tensor:
    """Bucket of each signature ``(..., w)`` in ``[0, num_buckets)``, as int64.

    The words are folded one at a time through a keyed murmur3 finaliser, so equal signatures
    always share a bucket and different ones spread uniformly whatever their bit patterns.
    """
    if words.dtype != torch.int32:
        raise ValueError(f"words must be int32 signatures, got {words.dtype}")
    if not isinstance(num_buckets, int) or num_buckets < 1:
        raise ValueError(f"num_buckets must be a positive int, got {num_buckets!r}")
    h = torch.full(words.shape[:-1], (0x9E3779B9 ^ (key & _MASK32)) & _MASK32, dtype=torch.int64, device=words.device)
    for i in range(words.shape[-1]):
        w = words[..., i].to(torch.int64) & _MASK32
        h = _mix32((h ^ w) & _MASK32)
        h = _mix32((h + 0x27D4EB2F + i) & _MASK32)
    return h % num_buckets


def token_bucket(token_ids: torch.Tensor, num_buckets: int, key: bytes | int = 0) -> torch.Tensor:
    """Bucket of discrete token ids by keyed BLAKE2b (cryptographic; stable across runs)."""
    if token_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"token_ids must be an integer tensor, got {token_ids.dtype}")
    if not _is_int(num_buckets) or not 1 <= num_buckets < 2**63:
        raise ValueError(f"num_buckets must be an int in [1, 2**63) (buckets are int64), got {num_buckets!r}")
    num_buckets = int(num_buckets)
    if not isinstance(key, bytes) and (not _is_int(key) or not -2**63 <= key < 2**63):
        raise ValueError(f"key must be bytes or an int in [-2**63, 2**63) (8 bytes), got {key!r}")
    kbytes = key if isinstance(key, bytes) else int(key).to_bytes(8, "little", signed=True)
    if len(kbytes) > 64:
        raise ValueError("BLAKE2b keys are at most 64 bytes")
    uniq, inverse = torch.unique(token_ids.cpu(), return_inverse=True)
    table = [
        int.from_bytes(hashlib.blake2b(int(t).to_bytes(8, "little", signed=True), digest_size=8, key=kbytes).digest(), "little") % num_buckets
        for t in uniq.tolist()
    ]
    return torch.tensor(table, dtype=torch.int64)[inverse].to(token_ids.device)


# --------------------------------------------------------------------------------------------
# hashers
# --------------------------------------------------------------------------------------------
def _check_vectors(x: torch.Tensor, head_dim: int, heads: int | None, name: str = "x") -> None:
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor")
    if x.shape[-1] != head_dim:
        raise ValueError(f"{name} has last dimension {x.shape[-1]}, expected head_dim={head_dim}")
    if heads is not None and heads > 1 and (x.ndim < 3 or x.shape[-3] != heads):
        raise ValueError(f"{name} must be (..., heads={heads}, tokens, head_dim), got {tuple(x.shape)}")


class SimHash(nn.Module):
    """Seeded random-hyperplane signatures (angular LSH).

    ``heads=None`` shares one set of planes across heads; an int gives each head its own, and
    inputs must then be ``(..., heads, tokens, head_dim)``.

    >>> h = SimHash(64, n_bits=32, seed=0)
    >>> h(torch.randn(2, 4, 10, 64)).shape
    torch.Size([2, 4, 10, 1])
    """

    def __init__(self, head_dim: int, n_bits: int = 32, *, heads: int | None = None, seed: int = 0):
        super().__init__()
        if not _is_int(head_dim) or head_dim < 1:
            raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
        if heads is not None and (not _is_int(heads) or heads < 1):
            raise ValueError(f"heads must be None (planes shared by every head) or a positive int, got {heads!r}")
        if not _is_int(seed) or not -2**63 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [-2**63, 2**64) (torch.Generator's range), got {seed!r}")
        head_dim, heads, seed = int(head_dim), None if heads is None else int(heads), int(seed)
        self.head_dim, self.n_bits, self.heads, self.seed = head_dim, _check_bits(n_bits), heads, seed
        g = torch.Generator().manual_seed(seed)
        planes = torch.randn(heads or 1, head_dim, n_bits, generator=g, dtype=torch.float32)
        self.register_buffer("planes", planes)

    def _apply(self, fn, recurse=True):
        """``.to(device)`` moves the planes; ``.to(dtype)`` / ``.half()`` / ``.bfloat16()`` leave them
        float32 — a rounded copy would change signatures for good (a bf16 → float32 round trip
        could not restore them) and keys stored before the cast would no longer match."""
        planes = self.planes
        out = super()._apply(fn, recurse)
        if self.planes.dtype != planes.dtype:
            self.planes = planes.to(self.planes.device)
        return out

    @property
    def n_words(self) -> int:
        return num_words(self.n_bits)

    def project(self, x: torch.Tensor, role: str = "key") -> torch.Tensor:
        """Real projections ``(..., n_bits)`` whose signs are the bits (role is ignored)."""
        _check_vectors(x, self.head_dim, self.heads)
        planes = self.planes.to(x.device, torch.float32)  # (float32 already, unless set by hand)
        if self.heads is None or self.heads == 1:
            return x.float() @ planes[0]
        return torch.einsum("...hnd,hdm->...hnm", x.float(), planes)

    def forward(self, x: torch.Tensor, role: str = "key") -> torch.Tensor:
        return pack_bits(self.project(x, role) > 0)


def default_hasher(head_dim: int, n_bits: int = 32, device: torch.device | str | None = None) -> SimHash:
    """The SimHash block selection uses when none is given (seed 0, shared across heads),
    cached per size and device. Its planes live on ``device`` (default CPU): a CPU hasher used on
    CUDA tensors copies its planes to the GPU at every call, a pageable copy that waits for the
    stream — one host-device synchronisation per attention call (measured on wan-mini, H200)."""
    dev = torch.device("cpu" if device is None else device)
    key = (head_dim, n_bits, str(dev))
    if key not in _DEFAULT_HASHERS:
        _new_default_hasher(key, dev)
    return _DEFAULT_HASHERS[key]


_NOT_IN_GRAPH = ("the default SimHash is drawn with a torch.Generator, which torch.compile cannot trace: under "
                 "fullgraph=True call vidhash.default_hasher(head_dim, n_bits, device) once before compiling, "
                 "or pass hasher=")


def _new_default_hasher(key: tuple[int, int, str], dev: torch.device) -> None:
    _DEFAULT_HASHERS[key] = SimHash(key[0], key[1], seed=0).to(dev)  # same planes, drawn on the CPU


try:  # a graph break under torch.compile (an error naming the fix under fullgraph=True); cached after
    _new_default_hasher = torch.compiler.disable(_new_default_hasher, reason=_NOT_IN_GRAPH)
except TypeError:  # torch without disable(reason=)
    _new_default_hasher = torch.compiler.disable(_new_default_hasher)


class _HeadMLP(nn.Module):
    """``heads`` independent MLPs ``d → hidden → hidden → m`` applied as batched matmuls."""

    def __init__(self, heads: int, d: int, hidden: int, m: int, g: torch.Generator):
        super().__init__()
        dims = [d, hidden, hidden, m]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, o in zip(dims[:-1], dims[1:]):
            self.weights.append(nn.Parameter(torch.randn(heads, i, o, generator=g) / math.sqrt(i)))
            self.biases.append(nn.Parameter(torch.zeros(heads, 1, o)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (..., h, n, d)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.matmul(x, w) + b
            if i < len(self.weights) - 1:
                x = F.silu(x)
        return x


class LearnedHash(nn.Module):
    """HashAttention's learned signatures: per head, an MLP for queries and one for keys.

    In training mode the codes are ``tanh`` (soft); in eval mode ``sign`` with a straight-through
    gradient. Inputs are ``(..., heads, tokens, head_dim)``.

    >>> lh = LearnedHash(64, n_bits=32, heads=4)
    >>> q, k = torch.randn(1, 4, 128, 64), torch.randn(1, 4, 256, 64)
    >>> report = lh.fit(q, k, top_k=16, steps=20)   # weighted BCE vs exact top-16 keys
    >>> lh(q, role="query").shape
    torch.Size([1, 4, 128, 1])
    """

    def __init__(self, head_dim: int, n_bits: int = 32, heads: int = 1, hidden: int = 128, seed: int = 0):
        super().__init__()
        if head_dim < 1 or heads < 1 or hidden < 1:
            raise ValueError(f"head_dim, heads and hidden must be positive, got {head_dim}, {heads}, {hidden}")
        self.head_dim, self.n_bits, self.heads, self.hidden, self.seed = head_dim, _check_bits(n_bits), heads, hidden, seed
        g = torch.Generator().manual_seed(seed)
        self.q_mlp = _HeadMLP(heads, head_dim, hidden, n_bits, g)
        self.k_mlp = _HeadMLP(heads, head_dim, hidden, n_bits, g)

    @property
    def n_words(self) -> int:
        return num_words(self.n_bits)

    def _mlp(self, role: str) -> _HeadMLP:
        if role in ("query", "q"):
            return self.q_mlp
        if role in ("key", "k"):
            return self.k_mlp
        raise ValueError(f"role must be 'query' or 'key', got {role!r}")

    def project(self, x: torch.Tensor, role: str = "key") -> torch.Tensor:
        if x.ndim < 3:
            raise ValueError(f"LearnedHash inputs must be (..., heads, tokens, head_dim), got {tuple(x.shape)}")
        _check_vectors(x, self.head_dim, self.heads)
        mlp = self._mlp(role)
        return mlp(x.to(mlp.weights[0].dtype)).float()  # in the module's dtype (cast with a model), float32 out

    def codes(self, x: torch.Tensor, role: str = "key") -> torch.Tensor:
        """±1 codes: tanh while training, sign with a straight-through gradient otherwise."""
        z = self.project(x, role)
        soft = torch.tanh(z)
        if self.training:
            return soft
        hard = torch.where(z > 0, 1.0, -1.0)
        return soft + (hard - soft).detach()

    def forward(self, x: torch.Tensor, role: str = "key") -> torch.Tensor:
        with torch.no_grad():
            return pack_bits(self.project(x, role) > 0)

    def fit(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        top_k: int = 64,
        steps: int = 200,
        lr: float = 3e-3,
        pos_weight: float = 20.0,
        batch_queries: int = 1024,
        causal: bool = False,
        seed: int = 0,
        progress: bool = False,
    ) -> dict:
        """Fit the MLPs on recorded queries and keys ``(heads, n, d)`` or ``(b, heads, n, d)``.

        Target: for every query, its exact top-``top_k`` keys by ``q·k`` are positives. Logit =
        ``a · (sim − b)`` with ``sim`` the mean product of soft codes and learned ``a, b``; loss =
        BCE with positives weighted by ``pos_weight`` (HashAttention's recipe). Returns recall of
        the exact top-``top_k`` among the top-``top_k`` keys by Hamming similarity, before and
        after, and the final loss.
        """
        if q.ndim == 3:
            q, k = q.unsqueeze(0), k.unsqueeze(0)
        if q.ndim != 4 or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
            raise ValueError(f"q and k must be (batch, heads, n, d) with matching batch/heads/d, got {tuple(q.shape)} and {tuple(k.shape)}")
        nk = k.shape[-2]
        if not 1 <= top_k <= nk:
            raise ValueError(f"top_k must be in [1, {nk}], got {top_k}")
        q, k = q.detach().float(), k.detach().float()
        recall_before = self.topk_recall(q, k, top_k, causal=causal)
        a = nn.Parameter(torch.tensor(10.0, device=q.device))
        b = nn.Parameter(torch.tensor(0.0, device=q.device))
        opt = torch.optim.Adam(list(self.parameters()) + [a, b], lr=lr)
        g = torch.Generator(device="cpu").manual_seed(seed)
        was_training = self.training
        self.train()
        nq = q.shape[-2]
        loss_val = float("nan")
        steps_iter = range(steps)
        if progress:
            steps_iter = tqdm(steps_iter, desc="fit LearnedHash")
        for _ in steps_iter:
            idx = torch.randint(0, nq, (min(batch_queries, nq),), generator=g).to(q.device)
            qb = q[..., idx, :]
            with torch.no_grad():
                s = qb @ k.transpose(-1, -2)
                if causal:
                    s = s.masked_fill(torch.arange(nk, device=q.device) > (idx + nk - nq).unsqueeze(-1), float("-inf"))
                kth = s.topk(top_k, dim=-1).values[..., -1:]
                target = (s >= kth).float()
            cq, ck = self.codes(qb, "query"), self.codes(k, "key")
            sim = cq @ ck.transpose(-1, -2) / self.n_bits
            logits = a * (sim - b)
            loss = F.binary_cross_entropy_with_logits(
                logits, target, pos_weight=torch.tensor(pos_weight, device=q.device), reduction="none"
            )
            if causal:
                loss = loss.masked_fill(torch.isinf(s), 0.0)
            loss = loss.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_val = loss.item()
        self.train(was_training)
        return {"recall_before": recall_before, "recall_after": self.topk_recall(q, k, top_k, causal=causal), "loss": loss_val}

    @torch.no_grad()
    def topk_recall(self, q: torch.Tensor, k: torch.Tensor, top_k: int, *, causal: bool = False, max_queries: int = 2048) -> float:
        """Share of each query's exact top-``top_k`` keys found in its top-``top_k`` by signature."""
        return signature_topk_recall(self, q, k, top_k, causal=causal, max_queries=max_queries)


@torch.no_grad()
def signature_topk_recall(hasher: nn.Module, q: torch.Tensor, k: torch.Tensor, top_k: int, *, causal: bool = False, max_queries: int = 2048) -> float:
    """Recall of the exact top-``top_k`` keys (by ``q·k``) within the top-``top_k`` by Hamming
    similarity of ``hasher``'s signatures (ties broken towards lower key index)."""
    nq, nk = q.shape[-2], k.shape[-2]
    sel = torch.arange(min(nq, max_queries), device=q.device) * max(1, nq // max_queries)
    qs = q[..., sel, :]
    s = qs.float() @ k.float().transpose(-1, -2)
    sim = hamming_similarity(hasher(qs, role="query"), hasher(k, role="key"), hasher.n_bits).to(torch.int64)
    if causal:
        bad = torch.arange(nk, device=q.device) > (sel + nk - nq).unsqueeze(-1)
        s = s.masked_fill(bad, float("-inf"))
        sim = sim.masked_fill(bad, -1)
    kk = min(top_k, nk)
    exact = s.topk(kk, dim=-1).indices
    rank_key = sim * (nk + 1) + (nk - torch.arange(nk, device=q.device))
    approx = rank_key.topk(kk, dim=-1).indices
    hit = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, approx, True).gather(-1, exact)
    valid = torch.isfinite(s.gather(-1, exact))
    return float(hit[valid].float().mean()) if valid.any() else 1.0
