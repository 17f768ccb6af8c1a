"""The merge-policy write (``naive.merge_insert`` in kernels/memory) without a device sync per round.

``reference_write_merge`` is the per-round ``nonzero`` version it replaced, copied verbatim
(with its ``_ranks``): the new write must leave bit-identical buffers."""
import collections
import statistics
import time
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vidhash import HashedMemory
from vidhash.hashing import LearnedHash, hamming_similarity
from vidhash.kernels.memory.naive import bucket_ranks, merge_insert
from vidhash.memory import UnboundHasher

BUFFERS = ("keys", "values", "signatures", "frames", "counts", "bucket_writes")


# ------------------------------------------------------------------ the replaced version, verbatim
@torch.no_grad()
def reference_write_merge(self, k, v, sig, bucket, frames) -> None:
    s, c = self.config.slots, self.capacity
    b, h, t = bucket.shape
    rank, _ = bucket_ranks(bucket, self.config.num_buckets)  # unchanged by the rewrite (FIFO uses it too)
    bh = b * h
    keys, vals = self.keys.view(bh, c, -1), self.values.view(bh, c, -1)
    sigs, frs, cnts = self.signatures.view(bh, c, -1), self.frames.view(bh, c), self.counts.view(bh, c)
    writes = self.bucket_writes.view(bh, -1)
    kf, vf, sf = k.reshape(bh, t, -1), v.reshape(bh, t, -1), sig.reshape(bh, t, -1)
    bf, rf = bucket.reshape(bh, t), rank.reshape(bh, t)
    for r in range(int(rank.max()) + 1):  # one token per bucket per round: no conflicts
        row, tok = torch.nonzero(rf == r, as_tuple=True)
        bkt = bf[row, tok]
        filled = writes[row, bkt]
        entries = bkt.unsqueeze(-1) * s + torch.arange(s, device=k.device)  # (m, s)
        sim = hamming_similarity(sf[row, tok].unsqueeze(-2), sigs[row.unsqueeze(-1), entries], self.config.n_bits).squeeze(-2)
        best = (sim.to(torch.int64) * (s + 1) + (s - torch.arange(s, device=k.device))).argmax(-1)
        slot = torch.where(filled < s, filled, best)
        e = bkt * s + slot
        acc = torch.float64 if keys.dtype == torch.float64 else torch.float32
        old = cnts[row, e].to(acc).unsqueeze(-1)
        new_k = (keys[row, e].to(acc) * old + kf[row, tok].to(acc)) / (old + 1)
        new_v = (vals[row, e].to(acc) * old + vf[row, tok].to(acc)) / (old + 1)
        keys[row, e] = new_k.to(keys.dtype)
        vals[row, e] = new_v.to(vals.dtype)
        sig_new = self.hasher(new_k.to(k.dtype).view(-1, 1, 1, k.shape[-1]).expand(-1, h, 1, -1), role="key")
        head = row % h
        sigs[row, e] = sig_new[torch.arange(row.numel(), device=k.device), head, 0]
        frs[row, e] = torch.maximum(frs[row, e], frames[tok])
        cnts[row, e] += 1
        writes[row, bkt] += 1


@torch.no_grad()
def reference_write(mem, k, v, frame_idx):
    """``HashedMemory.write`` for policy "merge" (reference backend) with the old merge."""
    t = k.shape[-2]
    if t == 0:
        return
    if isinstance(frame_idx, int):
        frames = torch.full((t,), frame_idx, dtype=torch.int64, device=k.device)
    else:
        frames = frame_idx.to(device=k.device, dtype=torch.int64)
    sig = mem.hasher(k, role="key")
    reference_write_merge(mem, k, v, sig, mem.route(sig), frames)


# ------------------------------------------------------------------ helpers
def _bits(x):
    if x.dtype == torch.float64:
        return x.view(torch.int64)
    if x.dtype in (torch.float32,):
        return x.view(torch.int32)
    if x.dtype in (torch.bfloat16, torch.float16):
        return x.view(torch.int16)
    return x


def assert_same_buffers(a, b):
    for name in BUFFERS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.equal(_bits(x), _bits(y)), f"{name} differs"


def _pair(hasher="simhash", **kw):
    cfg = dict(num_buckets=8, slots=4, heads=3, head_dim=16, batch_size=2, policy="merge", dtype=torch.float64)
    cfg.update(kw)
    if hasher == "learned":
        lh = LearnedHash(cfg["head_dim"], cfg.get("n_bits", 32), heads=cfg["heads"], hidden=16, seed=5).eval()
        return HashedMemory(**cfg, hasher=lh), HashedMemory(**cfg, hasher=lh)
    if hasher == "bound":  # bound after construction (a model's learned signatures)
        lh = LearnedHash(cfg["head_dim"], cfg.get("n_bits", 32), heads=cfg["heads"], hidden=16, seed=6).eval()
        pair = [HashedMemory(**cfg, hasher=UnboundHasher(cfg.get("n_bits", 32), cfg["heads"], cfg["head_dim"])) for _ in range(2)]
        for m in pair:
            m.bind_hasher(lh)
        return tuple(pair)
    return HashedMemory(**cfg), HashedMemory(**cfg)


def _writes(mem_new, mem_ref, writes):
    for k, v, f in writes:
        mem_new.write(k, v, f)
        reference_write(mem_ref, k, v, f)
        assert_same_buffers(mem_new, mem_ref)


def _clustered(b, h, t, d, n_centres, dtype, noise=0.05, g=None):
    """Tokens near a few centres: many land in one bucket (many rounds in one write)."""
    centres = torch.randn(b, h, n_centres, d, generator=g, dtype=torch.float64)
    pick = torch.randint(n_centres, (t,), generator=g)
    x = centres[:, :, pick] + noise * torch.randn(b, h, t, d, generator=g, dtype=torch.float64)
    return x.to(dtype)


# ------------------------------------------------------------------ bit-identical to the reference
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("hasher", ["simhash", "learned", "bound"])
def test_merge_write_matches_reference(dtype, hasher):
    g = torch.Generator().manual_seed(1)
    new, ref = _pair(hasher, dtype=dtype)
    writes = []
    for i, t in enumerate([5, 40, 1, 90, 33, 7, 120]):  # 32 entries: later writes overflow heavily
        k, v = torch.randn(2, 3, t, 16, generator=g, dtype=dtype), torch.randn(2, 3, t, 16, generator=g, dtype=dtype)
        f = i if i % 2 else torch.randint(0, 50, (t,), generator=g)  # int and per-token frames (max frame kept)
        writes.append((k, v, f))
    _writes(new, ref, writes)
    assert int(new.counts.max()) > 5  # merges happened


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("hasher", ["simhash", "learned"])
def test_merge_write_many_rounds(dtype, hasher):
    """Most tokens of a write in one or two buckets: dozens of rounds, a bucket merged into repeatedly."""
    g = torch.Generator().manual_seed(2)
    new, ref = _pair(hasher, dtype=dtype, num_buckets=16, slots=4)
    writes = []
    for i in range(4):
        k = _clustered(2, 3, 80, 16, 2, dtype, g=g)
        writes.append((k, torch.randn(2, 3, 80, 16, generator=g, dtype=dtype), i))
    _, n_in = bucket_ranks(new.route(new.hasher(writes[0][0])), new.config.num_buckets)
    assert int(n_in.max()) >= 30  # many rounds
    _writes(new, ref, writes)


def test_merge_write_single_bucket_and_single_slot():
    g = torch.Generator().manual_seed(3)
    for nb, s in [(1, 1), (1, 3), (2, 1)]:
        new, ref = _pair(num_buckets=nb, slots=s, batch_size=1, heads=1)
        writes = [(torch.randn(1, 1, t, 16, generator=g, dtype=torch.float64),
                   torch.randn(1, 1, t, 16, generator=g, dtype=torch.float64), i) for i, t in enumerate([1, 4, 9])]
        _writes(new, ref, writes)


def test_merge_write_bf16_into_float32_memory():
    g = torch.Generator().manual_seed(4)
    new, ref = _pair(dtype=torch.float32)
    writes = [(torch.randn(2, 3, t, 16, generator=g).bfloat16(), torch.randn(2, 3, t, 16, generator=g).bfloat16(), i)
              for i, t in enumerate([20, 64, 64, 3])]
    _writes(new, ref, writes)


def test_merge_write_bf16_memory():
    g = torch.Generator().manual_seed(5)
    new, ref = _pair(dtype=torch.bfloat16)
    writes = [(torch.randn(2, 3, t, 16, generator=g).bfloat16(), torch.randn(2, 3, t, 16, generator=g).bfloat16(), i)
              for i, t in enumerate([20, 64, 64])]
    _writes(new, ref, writes)


def test_merge_write_fewer_tokens_than_buckets_and_empty():
    g = torch.Generator().manual_seed(6)
    new, ref = _pair(num_buckets=64, slots=2)
    writes = [(torch.randn(2, 3, t, 16, generator=g, dtype=torch.float64),
               torch.randn(2, 3, t, 16, generator=g, dtype=torch.float64), i) for i, t in enumerate([3, 0, 10, 0, 50, 100, 2])]
    _writes(new, ref, writes)
    before = {n: getattr(new, n).clone() for n in BUFFERS}
    empty = torch.zeros(2, 3, 0, 16, dtype=torch.float64)
    new.write(empty, empty, 7)
    merge_insert(new.table, empty, empty, torch.zeros(2, 3, 0, 1, dtype=torch.int32), torch.zeros(2, 3, 0, dtype=torch.int64),
                 torch.zeros(0, dtype=torch.int64), new.hasher)  # directly too
    for n in BUFFERS:
        assert torch.equal(before[n], getattr(new, n))


def test_merge_write_world_model_shape():
    """The world model's memory shape (its preset's size until 2026-12-03): 3 heads × 64 dims, 128 buckets × 16 slots, 4 frames × 64 tokens."""
    g = torch.Generator().manual_seed(7)
    new, ref = _pair(num_buckets=128, slots=16, heads=3, head_dim=64, batch_size=1, dtype=torch.float32)
    writes = []
    for i in range(12):  # 3072 tokens into 2048 entries
        k = _clustered(1, 3, 256, 64, 24, torch.float32, noise=0.3, g=g)
        writes.append((k, torch.randn(1, 3, 256, 64, generator=g), torch.arange(4 * i, 4 * i + 4).repeat_interleave(64)))
    _writes(new, ref, writes)
    assert bool((new.counts > 1).any())


def test_fifo_untouched():
    g = torch.Generator().manual_seed(8)
    a = HashedMemory(8, 4, 3, 16, batch_size=2, policy="fifo", dtype=torch.float64)
    k = torch.randn(2, 3, 70, 16, generator=g, dtype=torch.float64)
    a.write(k, k, 0)
    assert int(a.bucket_writes.sum()) == 2 * 3 * 70 and int(a.counts.max()) == 1


# ------------------------------------------------------------------ no syncs inside the rounds
HOST_READS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "argwhere")


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            idx = args[1]
            if any(i is not None and i.dtype == torch.bool for i in idx):
                self.ops["bool_index"] += 1
        if name == "repeat_interleave" and torch.is_tensor(args[0]) and args[0].dtype != torch.bool and len(args) == 1:
            self.ops["repeat_interleave_counts"] += 1
        return func(*args, **(kwargs or {}))


def test_merge_write_has_one_host_read(monkeypatch):
    """No nonzero, boolean-mask indexing or scalar read per round: one host read per write
    (the active buckets of every round, as one ``tolist``)."""
    g = torch.Generator().manual_seed(9)
    mem = HashedMemory(16, 4, 3, 16, batch_size=2, policy="merge", dtype=torch.float32)
    k = _clustered(2, 3, 100, 16, 3, torch.float32, g=g)
    _, n_in = bucket_ranks(mem.route(mem.hasher(k)), mem.config.num_buckets)
    assert int(n_in.max()) > 10  # many rounds
    reads = collections.Counter()

    def counting(name, orig):
        def f(self, *a, **kw):
            reads[name] += 1
            return orig(self, *a, **kw)
        return f

    for name in ("item", "tolist", "numpy", "__int__", "__index__", "__bool__", "__float__", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))

    def forbidden(*a, **kw):
        raise AssertionError("torch.nonzero during a merge write")

    monkeypatch.setattr(torch, "nonzero", forbidden)
    monkeypatch.setattr(torch.Tensor, "nonzero", forbidden)
    with _Ops() as mode:
        mem.write(k, k, 0)
    monkeypatch.undo()
    assert {n: c for n, c in mode.ops.items() if n in HOST_READS + ("bool_index", "repeat_interleave_counts")} == {}
    assert sum(reads.values()) <= 1, reads
    assert int(mem.counts.max()) > 1

    # the old version is caught by the same checks (they can see what they guard against)
    with _Ops() as mode:
        reference_write(HashedMemory(16, 4, 3, 16, batch_size=2, policy="merge"), k, k, 0)
    assert mode.ops["nonzero"] > 10 and mode.ops["bool_index"] + mode.ops["_local_scalar_dense"] > 0


@pytest.mark.gpu
def test_merge_write_one_sync_on_cuda():
    """On CUDA: at most one synchronizing call per merge write (torch's sync debug mode)."""
    g = torch.Generator().manual_seed(10)
    mem = HashedMemory(128, 16, 3, 64, policy="merge", device="cuda")
    ref = HashedMemory(128, 16, 3, 64, policy="merge", device="cuda")
    for i in range(10):
        k = _clustered(1, 3, 256, 64, 24, torch.float32, noise=0.3, g=g).cuda()
        mem.write(k, k, i)  # warm-up and fill
        reference_write(ref, k, k, i)
    k = _clustered(1, 3, 256, 64, 24, torch.float32, noise=0.3, g=g).cuda()
    sig = mem.hasher(k, role="key")
    bucket, frames = mem.route(sig), torch.full((256,), 10, dtype=torch.int64, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            merge_insert(mem.table, k, k, sig, bucket, frames, mem.hasher)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= 1, [str(w.message) for w in syncs]
    reference_write_merge(ref, k, k, sig, bucket, frames)
    for name in ("frames", "counts", "bucket_writes"):
        assert torch.equal(getattr(mem, name), getattr(ref, name)), name


# ------------------------------------------------------------------ timing (CPU), not a test
def time_merge_write(write, repeats=21, seed=0):
    """Median seconds of one merge write at the world model's shape into a full memory."""
    g = torch.Generator().manual_seed(seed)
    mem = HashedMemory(128, 16, 3, 64, policy="merge", dtype=torch.float32)
    for i in range(12):
        k = _clustered(1, 3, 256, 64, 24, torch.float32, noise=0.3, g=g)
        mem.write(k, torch.randn(1, 3, 256, 64, generator=g), i)
    state = {n: getattr(mem, n).clone() for n in BUFFERS}
    k = _clustered(1, 3, 256, 64, 24, torch.float32, noise=0.3, g=g)
    v = torch.randn(1, 3, 256, 64, generator=g)
    times = []
    for _ in range(repeats):
        for n in BUFFERS:
            getattr(mem, n).copy_(state[n])
        t0 = time.perf_counter()
        write(mem, k, v, 12)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    for name, fn in [("reference (per-round nonzero)", reference_write), ("new (dense rounds)", lambda m, k, v, f: m.write(k, v, f))]:
        print(f"{name}: {time_merge_write(fn) * 1e3:.2f} ms")
