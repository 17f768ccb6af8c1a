"""``HashedMemory``: a fixed-size store of keys and values searched by bit signatures.

Letters: b batch, h heads, t tokens written, n queries, u buckets, s slots per bucket,
c = u·s entries, d head_dim, w signature words.

Layout, per batch element and head: ``num_buckets × slots`` entries, each holding a key, a
value, the key's signature, the frame index it came from and a count (0 = empty). Every
buffer is allocated at construction, so ``nbytes`` depends on the configuration only.

**Signatures.** By default ``n_bits`` SimHash bits with per-head planes (seeded by ``seed``,
saved with the memory). ``hasher=`` takes any other hasher with the ``SimHash``/``LearnedHash``
call signature (``hasher(x (b, h, t, d), role="key"|"query") -> int32 (b, h, t, w)`` and an
``n_bits`` attribute), e.g. a model's :class:`~vidhash.hashing.LearnedHash`: it is *borrowed*
(not a submodule: not saved, moved or counted in ``nbytes`` with the memory). An
:class:`UnboundHasher` stands for "the model's learned hasher, bound later": the model binds it
on its first forward (:meth:`HashedMemory.bind_hasher`), and a memory restored from a file checks
that the hasher bound is the one it was written with (:func:`hasher_digest`).

**Routing.** A key's signature is computed once. Its
first ``route_bits`` bits are an LSH code, which the keyed mixing hash
(:func:`~vidhash.hashing.bucket_index`) maps to a bucket: similar keys share a bucket, and
bucket codes spread evenly over the table.

**Eviction** (``policy``):

* ``"fifo"`` — each bucket is a ring of ``slots`` entries; a token written to a full bucket
  replaces that bucket's oldest entry. Tokens of one ``write`` enter in token order.
* ``"merge"`` — a bucket fills in order; once full, a new token is merged into the entry with
  the most similar signature (ties to the lower slot): key and value become the running mean,
  the count grows, the signature is that of the merged key and the frame index the newest.
  Reads weight a merged entry by ``log(count)``, as if it were ``count`` equal keys.

**Reads.** :meth:`HashedMemory.attend` scores all entries by Hamming similarity to the
query's signature, keeps the ``top_k`` best (ties to the lower entry index) and returns exact
softmax attention over them with its log-sum-exp, ready for
:func:`~vidhash.attention.merge_attention`. With capacity for every token written and
``top_k`` ≥ entries, it equals dense attention over everything written.

**Sizing for minutes** (docs/memory.md, ``scripts/memory_retention.py``): keys of one world place
route to one bucket 81–91 % of the time (the tokens carry the world position), so a bucket keeps
the recent views of its places. Without returns, 5 minutes at 8 fps (153,600 tokens per layer)
leaves 13 % of the first place in a 1024×32 FIFO memory and 97 % in a 1024×32 ``merge`` memory of
the same 18 MiB per layer (bf16, 4 heads × 32 dims); ``route_bits`` below log2(num_buckets)
leaves buckets unused and loses nearly everything.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .attention import _triton_ops, dense_attention, fused_attention_lse, resolve_backend
from .hashing import LearnedHash, SimHash, bucket_index, hamming_similarity, num_words, pack_bits, sig_signs, unpack_bits

POLICIES = ("fifo", "merge")
_CHUNK_ELEMS = 1 << 23


@dataclass(frozen=True)
class MemoryConfig:
    """Everything that fixes a memory's size and behaviour."""

    num_buckets: int = 256
    slots: int = 16
    heads: int = 1
    head_dim: int = 64
    n_bits: int = 32
    route_bits: int | None = None
    policy: str = "fifo"
    batch_size: int = 1
    seed: int = 0

    def __post_init__(self):
        for name in ("num_buckets", "slots", "heads", "head_dim", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int (a memory needs capacity), got {value!r}")
        num_words(self.n_bits)  # validates n_bits
        if self.route_bits is not None and not 1 <= self.route_bits <= self.n_bits:
            raise ValueError(f"route_bits must be in [1, n_bits={self.n_bits}], got {self.route_bits}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")

    @property
    def capacity(self) -> int:
        return self.num_buckets * self.slots

    @property
    def resolved_route_bits(self) -> int:
        if self.route_bits is not None:
            return self.route_bits
        return min(self.n_bits, max(1, math.ceil(math.log2(self.num_buckets)) + 2))


def hasher_digest(hasher) -> str:
    """A short fingerprint of a hasher: its class, ``n_bits`` and every tensor of its state
    (16 hex digits). Two hashers with one digest give the same signatures."""
    h = hashlib.sha256(f"{type(hasher).__name__}:{getattr(hasher, 'n_bits', None)}".encode())
    state = hasher.state_dict() if isinstance(hasher, nn.Module) else {}
    for name in sorted(state):
        t = state[name]
        if torch.is_tensor(t):
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class UnboundHasher:
    """Placeholder for a hasher supplied later (a model's learned signatures).

    Computing signatures with it is an error naming what to do; ``expected_digest`` (from a
    saved state) makes :meth:`HashedMemory.bind_hasher` refuse any hasher but the one the
    memory was written with."""

    def __init__(self, n_bits: int, heads: int, head_dim: int, expected_digest: str | None = None):
        self.n_bits, self.heads, self.head_dim = n_bits, heads, head_dim
        self.n_words = num_words(n_bits)
        self.expected_digest = expected_digest

    def __call__(self, x, role: str = "key"):
        raise ValueError(
            "this HashedMemory reads learned signatures that are not bound yet: run the model's forward with "
            "this memory in its context (it binds its LearnedHash), or call memory.bind_hasher(hasher)"
        )

    def __repr__(self) -> str:
        return f"UnboundHasher(n_bits={self.n_bits}, heads={self.heads}, expected_digest={self.expected_digest})"


class HashedMemory(nn.Module):
    """Fixed-capacity hashed key/value memory for one attention layer.

    >>> mem = HashedMemory(num_buckets=64, slots=8, heads=4, head_dim=32)
    >>> k, v = torch.randn(1, 4, 100, 32), torch.randn(1, 4, 100, 32)
    >>> mem.write(k, v, frame_idx=0)
    >>> out, lse = mem.attend(torch.randn(1, 4, 10, 32), top_k=16)
    >>> out.shape, lse.shape
    (torch.Size([1, 4, 10, 32]), torch.Size([1, 4, 10]))
    """

    def __init__(
        self,
        num_buckets: int = 256,
        slots: int = 16,
        heads: int = 1,
        head_dim: int = 64,
        *,
        n_bits: int = 32,
        route_bits: int | None = None,
        policy: str = "fifo",
        batch_size: int = 1,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        hasher=None,
    ):
        super().__init__()
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        self.config = MemoryConfig(num_buckets, slots, heads, head_dim, n_bits, route_bits, policy, batch_size, seed)
        cfg = self.config
        self.hasher_digest: str | None = None  # of a borrowed hasher, once bound
        if hasher is None:
            self.hasher = SimHash(head_dim, n_bits, heads=heads, seed=seed)
        else:
            self._check_hasher(hasher)
            object.__setattr__(self, "hasher", hasher)  # borrowed: not a submodule (not saved or moved with the memory)
        shape = (batch_size, heads, num_buckets, slots)
        w = num_words(n_bits)
        self.register_buffer("keys", torch.zeros(*shape, head_dim, dtype=dtype, device=device))
        self.register_buffer("values", torch.zeros(*shape, head_dim, dtype=dtype, device=device))
        self.register_buffer("signatures", torch.zeros(*shape, w, dtype=torch.int32, device=device))
        self.register_buffer("frames", torch.full(shape, -1, dtype=torch.int64, device=device))
        self.register_buffer("counts", torch.zeros(shape, dtype=torch.int32, device=device))
        self.register_buffer("bucket_writes", torch.zeros(shape[:3], dtype=torch.int64, device=device))
        if isinstance(self.hasher, SimHash) and "hasher" in self._modules:
            self.hasher.planes = self.hasher.planes.to(device)
        elif not isinstance(self.hasher, UnboundHasher):
            self.hasher_digest = hasher_digest(self.hasher)
        self._route_bits = cfg.resolved_route_bits

    # ------------------------------------------------------------------ hashers
    def _check_hasher(self, hasher) -> None:
        cfg = self.config
        if not callable(hasher) or not hasattr(hasher, "n_bits"):
            raise ValueError(f"hasher must be callable as hasher(x, role=...) and have n_bits, got {type(hasher).__name__}")
        if hasher.n_bits != cfg.n_bits:
            raise ValueError(f"the hasher gives {hasher.n_bits}-bit signatures, this memory stores n_bits={cfg.n_bits}")
        heads = getattr(hasher, "heads", None)
        if heads not in (None, 1, cfg.heads):
            raise ValueError(f"the hasher has {heads} heads, this memory {cfg.heads}")
        hd = getattr(hasher, "head_dim", cfg.head_dim)
        if hd != cfg.head_dim:
            raise ValueError(f"the hasher takes head_dim={hd}, this memory holds head_dim={cfg.head_dim}")

    @property
    def owns_hasher(self) -> bool:
        """True for the memory's own seeded SimHash (saved with it), False for a borrowed one."""
        return "hasher" in self._modules

    @property
    def needs_hasher(self) -> bool:
        """True while the hasher is an :class:`UnboundHasher` placeholder."""
        return isinstance(self.hasher, UnboundHasher)

    def bind_hasher(self, hasher) -> None:
        """Use ``hasher`` (borrowed) for every later write and read.

        Allowed in place of an :class:`UnboundHasher` — which, if it carries the digest of the
        hasher a saved memory was written with, must match — or while the memory is empty. A
        memory holding entries signed by another hasher raises ValueError."""
        if hasher is self.hasher:
            return
        self._check_hasher(hasher)
        digest = hasher_digest(hasher)
        current = self.hasher
        if isinstance(current, UnboundHasher):
            if current.expected_digest is not None and current.expected_digest != digest:
                raise ValueError(
                    f"this memory was written with signatures of hasher {current.expected_digest}, the hasher bound now is "
                    f"{digest}: a state saved with other signatures cannot be continued with this model"
                )
        elif bool((self.counts > 0).any()) and digest != (self.hasher_digest or hasher_digest(current)):
            raise ValueError("this memory holds entries signed by another hasher; reset() it before binding a new one")
        if "hasher" in self._modules:
            del self._modules["hasher"]
        object.__setattr__(self, "hasher", hasher)
        self.hasher_digest = digest

    def _kernel_hasher(self) -> bool:
        """The signature kernel covers the hasher (SimHash, LearnedHash in float32)."""
        h = self.hasher
        if isinstance(h, SimHash):
            return True
        return isinstance(h, LearnedHash) and all(p.dtype == torch.float32 for p in h.parameters())

    # ------------------------------------------------------------------ size and bookkeeping
    @property
    def capacity(self) -> int:
        """Entries per batch element and head (``num_buckets × slots``)."""
        return self.config.capacity

    @property
    def nbytes(self) -> int:
        """Bytes of every buffer (the own SimHash planes included; a borrowed hasher belongs to
        its model); fixed by the configuration."""
        return sum(t.numel() * t.element_size() for t in self.buffers())

    def num_entries(self) -> torch.Tensor:
        """Occupied entries ``(b, h)``."""
        return (self.counts > 0).sum((-1, -2))

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the memory (sizes unchanged)."""
        self.keys.zero_()
        self.values.zero_()
        self.signatures.zero_()
        self.frames.fill_(-1)
        self.counts.zero_()
        self.bucket_writes.zero_()

    def get_extra_state(self) -> dict:
        return {"config": asdict(self.config)}

    def set_extra_state(self, state: dict) -> None:
        theirs = state.get("config") if isinstance(state, dict) else None
        if theirs != asdict(self.config):
            raise ValueError(f"state was saved from a HashedMemory with config {theirs}, this one has {asdict(self.config)}")

    # ------------------------------------------------------------------ validation
    def _check(self, x: torch.Tensor, name: str) -> None:
        cfg = self.config
        if not torch.is_tensor(x) or x.ndim != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, tokens, head_dim), got {getattr(x, 'shape', type(x))}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {x.dtype}")
        if tuple(x.shape[:2]) != (cfg.batch_size, cfg.heads) or x.shape[-1] != cfg.head_dim:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}; this memory holds (batch={cfg.batch_size}, heads={cfg.heads}, *, head_dim={cfg.head_dim})"
            )
        if x.device != self.keys.device:
            raise ValueError(f"{name} is on {x.device}, the memory on {self.keys.device}")

    def _backend(self, backend: str, op: str, *tensors: torch.Tensor) -> str:
        """``auto`` → ``triton`` for CUDA tensors when the kernels import and cover the case,
        else ``reference``; a forced ``triton`` that the kernels do not cover is an error.
        Covered: FIFO writes (SimHash or float32 LearnedHash), merge writes with a SimHash hasher
        (the kernel recomputes a merged key's signature; a LearnedHash's MLP stays in PyTorch),
        reads; float32/bfloat16/float16, and float64 for merge writes."""
        which = resolve_backend(backend, *tensors, self.keys)
        if which != "triton":
            return which
        why = None
        merge_write = op == "write" and self.config.policy == "merge"
        dtypes = (torch.float32, torch.bfloat16, torch.float16) + ((torch.float64,) if merge_write else ())
        if op == "write" and not self._kernel_hasher():
            why = f"the signature kernel covers SimHash and float32 LearnedHash, not {type(self.hasher).__name__}"
        elif merge_write and not isinstance(self.hasher, SimHash):
            why = (f"the merge write kernel recomputes merged keys' signatures for SimHash only, not "
                   f"{type(self.hasher).__name__} (policy 'merge' with a learned hasher writes on the reference path)")
        elif any(t.dtype not in dtypes for t in (*tensors, self.keys)):
            why = ("the merge write kernel supports float32, bfloat16, float16 and float64" if merge_write
                   else "the memory kernels support float32, bfloat16 and float16")
        if why is None:
            return "triton"
        if backend == "auto":
            return "reference"
        raise ValueError(f"backend='triton' is unavailable here: {why}; use backend='auto' or 'reference'")

    def route(self, signatures: torch.Tensor) -> torch.Tensor:
        """Bucket of each signature ``(..., w)`` → int64 ``(...)``."""
        code = pack_bits(unpack_bits(signatures, self.config.n_bits)[..., : self._route_bits])
        return bucket_index(code, self.config.num_buckets, key=self.config.seed)

    # ------------------------------------------------------------------ write
    @torch.no_grad()
    def write(self, k: torch.Tensor, v: torch.Tensor, frame_idx: int | torch.Tensor, *, backend: str = "auto") -> None:
        """Store keys ``k`` and values ``v`` ``(b, h, t, d)`` that came from ``frame_idx``
        (an int for all tokens, or a LongTensor ``(t,)``).

        ``backend``: ``"auto"`` (Triton for CUDA tensors — policy ``"fifo"``, or ``"merge"`` with a
        SimHash hasher —, else the reference), ``"reference"`` or ``"triton"``."""
        self._check(k, "k")
        self._check(v, "v")
        if k.shape != v.shape:
            raise ValueError(f"k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
        t = k.shape[-2]
        if t == 0:
            return
        if isinstance(frame_idx, int) and not isinstance(frame_idx, bool):
            frames = torch.full((t,), frame_idx, dtype=torch.int64, device=k.device)
        elif torch.is_tensor(frame_idx) and frame_idx.shape == (t,) and not frame_idx.is_floating_point():
            frames = frame_idx.to(device=k.device, dtype=torch.int64)
        else:
            raise ValueError(f"frame_idx must be an int or an integer tensor of shape ({t},), got {frame_idx!r}")
        if self._backend(backend, "write", k, v) == "triton":
            if self.config.policy == "fifo":
                _triton_ops().memory_write_fifo(self, k, v, frames)
            else:
                from vidhash.kernels.memory.ops import memory_write_merge

                memory_write_merge(self, k, v, frames)
            return
        sig = self.hasher(k, role="key")  # (b, h, t, w)
        bucket = self.route(sig)  # (b, h, t)
        if self.config.policy == "fifo":
            self._write_fifo(k, v, sig, bucket, frames)
        else:
            self._write_merge(k, v, sig, bucket, frames)

    def _bucket_runs(self, bucket: torch.Tensor):
        """Tokens of this write sorted by bucket (stable: token order within a bucket), the number
        of tokens per bucket ``(..., u)``, and where each bucket's run starts in that order."""
        u = self.config.num_buckets
        order = torch.sort(bucket, dim=-1, stable=True).indices
        n_in = torch.zeros(*bucket.shape[:-1], u, dtype=torch.int64, device=bucket.device)
        n_in.scatter_add_(-1, bucket, torch.ones_like(bucket))
        return order, n_in, torch.cumsum(n_in, -1) - n_in

    def _ranks(self, bucket: torch.Tensor):
        """Rank of each token among the tokens of this write routed to its bucket (token
        order), and the number of such tokens per bucket ``(b, h, u)``."""
        order, n_in, start = self._bucket_runs(bucket)
        sorted_b = bucket.gather(-1, order)
        rank_sorted = torch.arange(bucket.shape[-1], device=bucket.device) - start.gather(-1, sorted_b)
        rank = torch.empty_like(rank_sorted).scatter_(-1, order, rank_sorted)
        return rank, n_in

    def _scatter(self, flat_idx: torch.Tensor, keep: torch.Tensor, **values: torch.Tensor) -> None:
        """Write per-token ``values`` into flattened entry ``flat_idx`` where ``keep``."""
        bh = flat_idx.shape[0] * flat_idx.shape[1]
        sel = keep.reshape(-1)
        row = torch.arange(bh, device=flat_idx.device).repeat_interleave(flat_idx.shape[-1])[sel]
        col = flat_idx.reshape(-1)[sel]
        c = self.capacity
        for name, val in values.items():
            buf = getattr(self, name)
            view = buf.view(bh, c, *buf.shape[4:])
            view[row, col] = val.reshape(bh * flat_idx.shape[-1], *val.shape[3:])[sel].to(buf.dtype)

    def _write_fifo(self, k, v, sig, bucket, frames) -> None:
        s = self.config.slots
        rank, n_in = self._ranks(bucket)
        n_tok = n_in.gather(-1, bucket)
        keep = rank >= n_tok - s  # only the last `slots` tokens of a bucket survive this write
        slot = (self.bucket_writes.gather(-1, bucket) + rank) % s
        flat = bucket * s + slot
        b, h, t = bucket.shape
        fr = frames.view(1, 1, t).expand(b, h, t)
        ones = torch.ones(b, h, t, dtype=torch.int32, device=k.device)
        self._scatter(flat, keep, keys=k, values=v, signatures=sig, frames=fr, counts=ones)
        self.bucket_writes += n_in

    def _write_merge(self, k, v, sig, bucket, frames) -> None:
        """Merge-policy write without a device sync per round.

        Tokens of one bucket enter in token order, one per bucket per round (round r = rank r in
        its bucket): a merge changes the entry the next token of that bucket compares against.
        Each round works on dense ``(b·h, P)`` tensors over the buckets that still have a token
        (buckets ordered by tokens received, so those of round r are a prefix of that order):
        gathers, then ``scatter_`` back to the chosen entries — one bucket holds one chosen
        entry, so scatters never collide, and a bucket without a token this round writes its
        entry's own values back. The only host read is the number of active buckets per round
        (one transfer per call)."""
        cfg = self.config
        s, u, d, n_bits = cfg.slots, cfg.num_buckets, k.shape[-1], cfg.n_bits
        b, h, t = bucket.shape
        if t == 0:
            return
        bh, c = b * h, self.capacity
        dev = k.device
        w = sig.shape[-1]
        keys, vals = self.keys.view(bh, c, d), self.values.view(bh, c, d)
        sigs, frs, cnts = self.signatures.view(bh, c, w), self.frames.view(bh, c), self.counts.view(bh, c)
        slot_sigs = self.signatures.view(bh, u, s, w)
        writes = self.bucket_writes.view(bh, u)
        kf, vf, sf = k.reshape(bh, t, d), v.reshape(bh, t, d), sig.reshape(bh, t, w)
        ff = frames.view(1, t).expand(bh, t)
        bf = bucket.reshape(bh, t)
        order, n_in, start = self._bucket_runs(bf)  # tokens by bucket, tokens per bucket, run starts
        # buckets by tokens received, most first: the buckets with a token in round r are a prefix
        n_desc, border = torch.sort(n_in, dim=-1, descending=True, stable=True)
        start_desc = start.gather(-1, border)
        # active[r] = most buckets (over rows) with more than r tokens; one host read for all rounds
        hist = torch.zeros(bh, t + 1, dtype=torch.int64, device=dev).scatter_add_(-1, n_in, torch.ones_like(n_in))
        at_least = hist.flip(-1).cumsum(-1).flip(-1)  # buckets with ≥ j tokens
        active = at_least[:, 1:].amax(0).tolist()  # the one sync: (t,) ints
        acc = torch.float64 if keys.dtype == torch.float64 else torch.float32
        prefer_low = s - torch.arange(s, device=dev)  # ties to the lower slot
        for r, p in enumerate(active):
            if p == 0:
                break
            bsel = border[:, :p]  # (bh, p) buckets of this round
            valid = n_desc[:, :p] > r  # bucket has a token in this round (rows with fewer buckets: False)
            tok = order.gather(-1, (start_desc[:, :p] + r).clamp_(max=t - 1))
            tok_d = tok.unsqueeze(-1).expand(-1, -1, d)
            filled = writes.gather(-1, bsel)
            here = slot_sigs.gather(1, bsel.view(bh, p, 1, 1).expand(-1, -1, s, w))  # (bh, p, s, w)
            tok_sig = sf.gather(1, tok.unsqueeze(-1).expand(-1, -1, w))
            sim = hamming_similarity(tok_sig.unsqueeze(-2), here, n_bits).squeeze(-2)  # (bh, p, s)
            best = (sim.to(torch.int64) * (s + 1) + prefer_low).argmax(-1)
            e = bsel * s + torch.where(filled < s, filled, best)  # (bh, p) entry per bucket
            e_d = e.unsqueeze(-1).expand(-1, -1, d)
            e_w = e.unsqueeze(-1).expand(-1, -1, w)
            old_k, old_v = keys.gather(1, e_d), vals.gather(1, e_d)
            old_s, old_f, old_c = sigs.gather(1, e_w), frs.gather(1, e), cnts.gather(1, e)
            old = old_c.to(acc).unsqueeze(-1)
            new_k = (old_k.to(acc) * old + kf.gather(1, tok_d).to(acc)) / (old + 1)
            new_v = (old_v.to(acc) * old + vf.gather(1, tok_d).to(acc)) / (old + 1)
            sig_new = self.hasher(new_k.to(k.dtype).view(b, h, p, d), role="key").view(bh, p, w)
            vd = valid.unsqueeze(-1)
            keys.scatter_(1, e_d, torch.where(vd, new_k.to(keys.dtype), old_k))
            vals.scatter_(1, e_d, torch.where(vd, new_v.to(vals.dtype), old_v))
            sigs.scatter_(1, e_w, torch.where(vd, sig_new, old_s))
            frs.scatter_(1, e, torch.where(valid, torch.maximum(old_f, ff.gather(1, tok)), old_f))
            cnts.scatter_(1, e, old_c + valid.to(old_c.dtype))
            writes.scatter_add_(1, bsel, valid.to(writes.dtype))

    # ------------------------------------------------------------------ read
    def mass(self) -> torch.Tensor:
        """Tokens the memory stands for, ``(batch, heads)`` float32: the sum of its entries' counts
        (a merged entry counts every token merged into it, so in attention it weighs as that
        many keys)."""
        b, h = self.config.batch_size, self.config.heads
        return self.counts.view(b, h, -1).sum(-1, dtype=torch.float32)

    def mass_penalty(self, mass_cap: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``max(0, log(mass / mass_cap))`` ``(batch, heads, 1)``: subtracted from a read's lse, it
        scales every entry's attention weight by ``mass_cap / mass`` once the memory stands for
        more than ``mass_cap`` tokens, so the memory as a whole never weighs more than
        ``mass_cap`` keys (and the window, read exactly, keeps its share however long the clip).
        Zero for an empty memory. No host sync (CUDA-graph safe)."""
        return (self.mass().to(dtype).log() - math.log(mass_cap)).clamp_min(0.0).unsqueeze(-1)

    def attend(self, q: torch.Tensor, top_k: int, *, scale: float | None = None, return_indices: bool = False,
               backend: str = "auto", mass_cap: int = 0):
        """Attention of ``q (b, h, n, d)`` over its ``top_k`` most similar entries.

        Returns ``(out (b, h, n, d), lse (b, h, n))`` with lse in float32 (float64 for
        float64 queries); a query that finds no entry
        (empty memory) gets ``out = 0`` and ``lse = -inf``. Gradients flow to ``q``.
        ``backend``: ``"auto"`` (Triton for CUDA tensors that are not float64, else the
        reference), ``"reference"`` or ``"triton"``. With ``top_k ≥ capacity`` (every entry
        selected) ``"auto"`` and ``"reference"`` read densely instead — the same result.
        ``mass_cap > 0`` lowers lse by :meth:`mass_penalty` (``out`` is unchanged: it only
        matters once merged with other attention by log-sum-exp); 0 leaves it as read.
        """
        self._check(q, "q")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        if not isinstance(mass_cap, int) or isinstance(mass_cap, bool) or mass_cap < 0:
            raise ValueError(f"mass_cap must be an int ≥ 0 (0 = off), got {mass_cap!r}")
        res = self._attend(q, top_k, scale, return_indices, backend)
        if mass_cap:
            res = (res[0], res[1] - self.mass_penalty(mass_cap, res[1].dtype), *res[2:])
        return res

    def _attend(self, q: torch.Tensor, top_k: int, scale: float | None, return_indices: bool, backend: str):
        if top_k >= self.capacity and not return_indices and backend != "triton":
            # every valid entry is selected: the read is dense attention over the whole memory,
            # without signatures or top-k (the same result; at generation sizes also the fastest
            # on a GPU: 0.145 ms dense against 0.36-0.95 ms selective, BENCHMARKS.md)
            return self._attend_all(q, 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale))
        if self._backend(backend, "attend", q) == "triton":
            q_sig = None
            if not self._kernel_hasher():  # the read kernels take the hasher's own signatures
                with torch.no_grad():
                    q_sig = self.hasher(q, role="query")
            return _triton_ops().memory_attend(self, q, top_k, scale=scale, return_indices=return_indices, q_sig=q_sig)
        b, h, n, d = q.shape
        c = self.capacity
        kk = min(top_k, c)
        sc = 1.0 / math.sqrt(d) if scale is None else float(scale)
        keys, vals = self.keys.view(b, h, c, d), self.values.view(b, h, c, d)
        sigs = self.signatures.view(b, h, c, -1)
        counts = self.counts.view(b, h, c)
        valid = counts > 0
        bias = torch.log(counts.clamp(min=1).float())
        n_bits = self.config.n_bits
        # rank = (equal − different bits + n_bits) · (c + 1) + tie: ordered as the similarity, ties to
        # the lower slot, ≥ 1 for any entry and -1 for an empty slot. The ±1 sign product is the bit
        # agreement (hamming_similarity = (dot + n_bits) / 2), so one matmul and one pass build it, in
        # float32 while every rank is an exact float32 integer (then int32: an integer topk is ~1.5×
        # faster on a CPU), else in float64
        small = (2 * n_bits + 1) * (c + 1) < 1 << 24
        rank_dtype = torch.float32 if small else torch.float64
        with torch.no_grad():
            q_sig = self.hasher(q, role="query")
            k_signs = sig_signs(sigs, n_bits).to(rank_dtype)
            tie = (n_bits * (c + 1) + c - torch.arange(c, device=q.device, dtype=rank_dtype)).masked_fill(~valid, float("-inf"))
        outs, lses, idxs = [], [], []
        chunk = max(1, _CHUNK_ELEMS // max(1, b * h * c))
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        for start in range(0, n, chunk):
            qs = q[:, :, start : start + chunk]
            with torch.no_grad():
                with torch.autocast(q.device.type, enabled=False):
                    dot = torch.matmul(sig_signs(q_sig[:, :, start : start + chunk], n_bits).to(rank_dtype),
                                       k_signs.transpose(-1, -2))
                rank = torch.add(tie.unsqueeze(-2), dot, alpha=c + 1).nan_to_num_(neginf=-1.0)
                top = (rank.to(torch.int32) if small else rank).topk(kk, dim=-1, sorted=return_indices)
                ok = top.values >= 0
                idx = top.indices  # (b, h, m, kk)
            m = qs.shape[-2]
            if kk * 8 >= c:
                # a large share selected: scores against every entry (one matmul) and the selected
                # ones picked out, weights scattered back for one matmul with the values; gathering
                # (m, kk, d) copies of keys and values instead costs far more on a CPU
                s = torch.matmul(qs.to(acc), keys.to(acc).transpose(-1, -2)).gather(-1, idx) * sc
                s = (s + bias.to(acc).gather(-1, idx.reshape(b, h, -1)).reshape(b, h, m, kk)).masked_fill(~ok, float("-inf"))
                vg = None
            else:
                g = idx.reshape(b, h, m * kk, 1)
                kg = torch.gather(keys, 2, g.expand(b, h, m * kk, d)).reshape(b, h, m, kk, d).to(acc)
                vg = torch.gather(vals, 2, g.expand(b, h, m * kk, d)).reshape(b, h, m, kk, d).to(acc)
                s = torch.einsum("bhmd,bhmkd->bhmk", qs.to(acc), kg) * sc + bias.gather(2, idx.reshape(b, h, -1)).reshape(b, h, m, kk).to(acc)
                s = s.masked_fill(~ok, float("-inf"))
            lse = torch.logsumexp(s, dim=-1)
            p = torch.exp(s - lse.masked_fill(torch.isinf(lse), 0.0).unsqueeze(-1))
            if vg is None:  # weights of the selection, back in entry order (indices are distinct; unused ones weigh 0)
                outs.append(torch.matmul(torch.zeros(b, h, m, c, dtype=acc, device=q.device).scatter(-1, idx, p), vals.to(acc)))
            else:
                outs.append(torch.einsum("bhmk,bhmkd->bhmd", p, vg))
            lses.append(lse)
            idxs.append(torch.where(ok, idx, -1))
        out = torch.cat(outs, 2).to(q.dtype)
        lse = torch.cat(lses, 2)
        if return_indices:
            return out, lse, torch.cat(idxs, 2)
        return out, lse

    def _attend_all(self, q: torch.Tensor, sc: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``attend`` with ``top_k ≥ capacity``: attention over every valid entry, each weighted
        by ``log(count)``. Without gradients: PyTorch's fused attention (flash on a GPU; no
        ``(n, c)`` scores held, :func:`fused_attention_lse`); with gradients (or float64):
        ``dense_attention`` in float32, queries in chunks."""
        b, h, n, d = q.shape
        c = self.capacity
        counts = self.counts.view(b, h, c)
        bias = torch.log(counts.clamp(min=1).float()).masked_fill(counts <= 0, float("-inf"))
        if not (torch.is_grad_enabled() and q.requires_grad) and q.dtype != torch.float64:
            return fused_attention_lse(q, self.keys.view(b, h, c, d).to(q.dtype), self.values.view(b, h, c, d).to(q.dtype),
                                       scale=sc, key_bias=bias)
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32  # memory and q may differ in dtype
        keys, vals = self.keys.view(b, h, c, d).to(acc), self.values.view(b, h, c, d).to(acc)
        chunk = max(1, _CHUNK_ELEMS // max(1, b * h * c))
        parts = [dense_attention(q[:, :, s : s + chunk].to(acc), keys, vals, scale=sc, return_lse=True, key_bias=bias)
                 for s in range(0, n, chunk)]
        return torch.cat([o for o, _ in parts], 2).to(q.dtype), torch.cat([l for _, l in parts], 2)
