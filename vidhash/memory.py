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
:func:`~vidhash.attention.merge_attention`. ``top_k=None`` reads every entry; with capacity for
every token written it equals dense attention over everything written.

**Settings.** :class:`MemorySize` (signatures, buckets, slots, policy) is what a generation
chooses and a state saves; :class:`MemoryConfig` adds the layer's shape; :class:`MemoryRead`
(``top_k``, ``mass_cap``, ``select``) is how a read is done, given per call. Each validates itself.

**Code.** The writes and the top-k read are ops on the memory's tensors (:attr:`HashedMemory.table`):
references in ``kernels/memory/naive.py``, Triton kernels in ``kernels/memory/ops.py``, and a CPU
read over the filled entries only in ``kernels/memory/cpu.py``.
:meth:`HashedMemory.write` and :meth:`HashedMemory.attend` choose between them (``backend=``).

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
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
from torch import nn

from vidhash.kernels.memory import cpu, naive
from vidhash.kernels.signature.naive import route_buckets

from .attention import dense_attention, fused_attention_lse
from .hashing import LearnedHash, SimHash, num_words
from .ops import checks
from .ops.backend import resolve_backend, triton_ops
from .ops.checks import MemoryTable

POLICIES = ("fifo", "merge")
READ_SELECTS = ("candidates", "levels")  # HashedMemory.attend(select=...): the Triton read's two top-k kernels

COMPACT_READ_MIN_CAPACITY = 4096
"""Entries per head from which ``backend="auto"`` reads a CPU memory by the compact read
(:mod:`vidhash.kernels.memory.cpu`: the filled entries only, sparse attention over the selection)
instead of the reference, which scores every entry of the capacity for every query. The two select
the same entries; their outputs differ by float rounding (another summation order), so smaller
memories — every preset sized before 2026-12-03 (2,048 entries and fewer) — keep the reference and
generate bitwise the frames they did."""


def _positive_int(name: str, value, why: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int{why}, got {value!r}")


@dataclass(frozen=True)
class MemorySignature:
    """The signatures a memory compares: ``n_bits`` SimHash bits per key, the planes seeded by
    ``seed`` (a model's memory of layer ``l`` uses ``seed + l``). Training-time selection
    (``vidhash.training.config.SelectionConfig``) signs with the same two settings."""

    n_bits: int = 32
    seed: int = 0

    def __post_init__(self):
        num_words(self.n_bits)  # validates n_bits
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")


@dataclass(frozen=True)
class MemorySize(MemorySignature):
    """What a generation chooses of a memory: its signatures, ``num_buckets × slots`` entries per
    head and the eviction ``policy``. Saved with a ``VidHashState`` (the state's memories are
    built from it); how a memory is *read* is :class:`MemoryRead`, passed per call."""

    num_buckets: int = 256
    slots: int = 16
    policy: str = "fifo"

    def __post_init__(self):
        MemorySignature.__post_init__(self)
        for name in ("num_buckets", "slots"):
            _positive_int(name, getattr(self, name), " (a memory needs capacity)")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")

    @property
    def capacity(self) -> int:
        """Entries per batch element and head."""
        return self.num_buckets * self.slots

    @property
    def size(self) -> MemorySize:
        """The :class:`MemorySize` fields alone (of a subclass instance)."""
        return MemorySize(**{f.name: getattr(self, f.name) for f in fields(MemorySize)})


@dataclass(frozen=True)
class MemoryConfig(MemorySize):
    """Everything that fixes one :class:`HashedMemory`'s size and behaviour: its
    :class:`MemorySize`, the attention layer's ``heads`` × ``head_dim``, the batch and the bits
    that route a key to its bucket (``route_bits``; None: ``log2(num_buckets) + 2``)."""

    heads: int = 1
    head_dim: int = 64
    route_bits: Optional[int] = None
    batch_size: int = 1

    def __post_init__(self):
        MemorySize.__post_init__(self)
        for name in ("heads", "head_dim", "batch_size"):
            _positive_int(name, getattr(self, name), " (a memory needs capacity)")
        if self.route_bits is not None and not 1 <= self.route_bits <= self.n_bits:
            raise ValueError(f"route_bits must be in [1, n_bits={self.n_bits}], got {self.route_bits}")

    @property
    def resolved_route_bits(self) -> int:
        if self.route_bits is not None:
            return self.route_bits
        return min(self.n_bits, max(1, math.ceil(math.log2(self.num_buckets)) + 2))


@dataclass(frozen=True)
class MemoryRead:
    """How a memory is read (per call; never part of a state): each query attends to its
    ``top_k`` most similar entries — None reads every entry — and ``mass_cap > 0`` makes the
    read weigh as at most that many keys (:meth:`HashedMemory.mass_penalty`; 0 = as read).
    ``select``: which Triton kernel finds a CUDA read's top-k (:data:`READ_SELECTS`; the same
    entries either way, so it changes speed only, and the CPU paths ignore it)."""

    top_k: Optional[int] = None
    mass_cap: int = 0
    select: str = "candidates"

    def __post_init__(self):
        if self.top_k is not None:
            _positive_int("top_k", self.top_k, " or None (every entry)")
        if not isinstance(self.mass_cap, int) or isinstance(self.mass_cap, bool) or self.mass_cap < 0:
            raise ValueError(f"mass_cap must be an int ≥ 0 (0 = off), got {self.mass_cap!r}")
        if self.select not in READ_SELECTS:
            raise ValueError(f"select must be one of {READ_SELECTS}, got {self.select!r}")

    @property
    def read(self) -> MemoryRead:
        """The :class:`MemoryRead` fields alone (of a subclass instance)."""
        return MemoryRead(**{f.name: getattr(self, f.name) for f in fields(MemoryRead)})

    def top_k_for(self, capacity: int) -> int | None:
        """Entries each query keeps in a memory of ``capacity`` entries, None for every entry.
        The one place where a ``top_k`` of at least the capacity (every entry selected; how
        presets wrote "read everything" before None) is read as None."""
        return None if self.top_k is None or self.top_k >= capacity else self.top_k


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
        self.config = MemoryConfig(n_bits=n_bits, seed=seed, num_buckets=num_buckets, slots=slots, policy=policy,
                                   heads=heads, head_dim=head_dim, route_bits=route_bits, batch_size=batch_size)
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
        self._read_cache = cpu.ReadCache()  # the compact CPU read's filled entries, while the memory is unchanged

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

    @property
    def table(self) -> MemoryTable:
        """The memory's buffers as the :class:`~vidhash.ops.checks.MemoryTable` its write and
        read ops take (the tensors themselves: the ops update them in place)."""
        return MemoryTable(self.keys, self.values, self.signatures, self.frames, self.counts, self.bucket_writes)

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
        cfg = self.config
        return route_buckets(signatures, cfg.n_bits, self._route_bits, cfg.num_buckets, cfg.seed)

    # ------------------------------------------------------------------ write
    @torch.no_grad()
    def write(self, k: torch.Tensor, v: torch.Tensor, frame_idx: int | torch.Tensor, *, backend: str = "auto") -> None:
        """Store keys ``k`` and values ``v`` ``(b, h, t, d)`` that came from ``frame_idx``
        (an int for all tokens, or a LongTensor ``(t,)``). Floating ``k`` / ``v`` of another dtype
        than the memory's are stored in the memory's dtype (a bf16 model's keys in a float32 memory,
        and the other way round); other dtypes are a ValueError.

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
        fifo = self.config.policy == "fifo"
        if self._backend(backend, "write", k, v) == "triton":
            ops = triton_ops()
            write = ops.memory_write_fifo if fifo else ops.memory_write_merge
        else:
            write = naive.memory_write_fifo if fifo else naive.memory_write_merge
        write(self.table, k, v, frames, hasher=self.hasher, route_bits=self._route_bits, route_key=self.config.seed)

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

    def attend(self, q: torch.Tensor, top_k: int | None = None, *, scale: float | None = None,
               return_indices: bool = False, backend: str = "auto", mass_cap: int = 0, select: str = "candidates"):
        """Attention of ``q (b, h, n, d)`` over its ``top_k`` most similar entries (None: every
        entry); ``top_k``, ``mass_cap`` and ``select`` are a :class:`MemoryRead`.

        Returns ``(out (b, h, n, d), lse (b, h, n))`` with lse in float32 (float64 for
        float64 queries); a query that finds no entry
        (empty memory) gets ``out = 0`` and ``lse = -inf``. Gradients flow to ``q``.
        ``backend``: ``"auto"`` (Triton for CUDA tensors that are not float64; on a CPU the compact
        read of :mod:`vidhash.kernels.memory.cpu` — the same selection, a cost of the filled entries —
        for memories of at least :data:`COMPACT_READ_MIN_CAPACITY` entries when no gradient is
        asked; else the reference), ``"reference"`` or ``"triton"``. Reading every entry (``top_k`` None, or at
        least the capacity: :meth:`MemoryRead.top_k_for`) with ``"auto"`` or ``"reference"`` is
        dense attention over the whole memory, without signatures or top-k — the same result.
        ``mass_cap > 0`` lowers lse by :meth:`mass_penalty` (``out`` is unchanged: it only
        matters once merged with other attention by log-sum-exp); 0 leaves it as read.
        ``select``: how the Triton read finds the top-k — ``"candidates"`` or ``"levels"``
        (:func:`~vidhash.kernels.memory.ops.memory_select_levels`); the same entries, so the other
        paths ignore it.
        """
        self._check(q, "q")
        read = MemoryRead(top_k, mass_cap, select)  # validates the three
        resolve_backend(backend, q, self.keys)  # a bad backend is refused on every path
        if q.shape[-2] == 0:  # no queries: empty outputs
            lse = q.new_zeros(q.shape[:-1], dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
            idx = (q.new_zeros(*q.shape[:-1], read.top_k_for(self.capacity) or self.capacity, dtype=torch.long),)
            return (q.new_zeros(*q.shape[:-1], self.values.shape[-1]), lse, *(idx if return_indices else ()))
        res = self._attend(q, read.top_k_for(self.capacity), scale, return_indices, backend, select)
        if read.mass_cap:
            res = (res[0], res[1] - self.mass_penalty(read.mass_cap, res[1].dtype), *res[2:])
        return res

    def _attend(self, q: torch.Tensor, top_k: int | None, scale: float | None, return_indices: bool, backend: str,
                select: str = "candidates"):
        if top_k is None and not return_indices and backend != "triton":
            # every entry is read: dense attention over the whole memory, without signatures or
            # top-k (the same result; at generation sizes also the fastest on a GPU: 0.145 ms
            # dense against 0.36-0.95 ms selective, BENCHMARKS.md)
            return self._attend_all(q, 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale))
        top_k = self.capacity if top_k is None else top_k
        if self._backend(backend, "attend", q) == "triton":
            q_sig = None
            if not self._kernel_hasher():  # the read kernels take the hasher's own signatures
                with torch.no_grad():
                    q_sig = self.hasher(q, role="query")
            return triton_ops().memory_attend(self.table, q, top_k, hasher=self.hasher, scale=scale,
                                              return_indices=return_indices, q_sig=q_sig, select=select)
        if backend == "auto" and self._compact_read(q):
            return cpu.memory_attend_compact(self.table, q, top_k, hasher=self.hasher, scale=scale,
                                             return_indices=return_indices, cache=self._read_cache)
        return naive.memory_attend(self.table, q, top_k, hasher=self.hasher, scale=scale, return_indices=return_indices)

    def _compact_read(self, q: torch.Tensor) -> bool:
        """``auto`` on a CPU reads through :func:`~vidhash.kernels.memory.cpu.memory_attend_compact`
        (a cost of the filled entries, not of the capacity) when no gradient is asked and the memory
        holds at least :data:`COMPACT_READ_MIN_CAPACITY` entries per head."""
        return (q.device.type == "cpu" and self.capacity >= COMPACT_READ_MIN_CAPACITY
                and not (torch.is_grad_enabled() and q.requires_grad))

    def _attend_all(self, q: torch.Tensor, sc: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``attend`` of every entry: attention over every valid entry, each weighted
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
        chunk = max(1, checks.CHUNK_ELEMS // max(1, b * h * c))
        parts = [dense_attention(q[:, :, s : s + chunk].to(acc), keys, vals, scale=sc, return_lse=True, key_bias=bias)
                 for s in range(0, n, chunk)]
        return torch.cat([o for o, _ in parts], 2).to(q.dtype), torch.cat([l for _, l in parts], 2)
