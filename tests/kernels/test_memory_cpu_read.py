"""The compact CPU read's cache (kernels/memory/cpu.py): the filled entries kept by a ReadCache
while the memory is unchanged give bitwise the read without it, and any change rebuilds them."""
import pytest
import torch

from vidhash import HashedMemory
from vidhash.kernels.memory import cpu


def merge_memory(tokens: int, seed: int = 0) -> HashedMemory:
    """A merge memory of batch 2 × 3 heads (head_dim 24), capacity 512, after ``tokens`` written."""
    g = torch.Generator().manual_seed(seed)
    mem = HashedMemory(64, 8, heads=3, head_dim=24, batch_size=2, policy="merge")
    for f, start in enumerate(range(0, tokens, 29)):
        t = min(29, tokens - start)
        mem.write(torch.randn(2, 3, t, 24, generator=g), torch.randn(2, 3, t, 24, generator=g), f)
    return mem


def read(mem: HashedMemory, q: torch.Tensor, top_k: int, cache=None, indices: bool = True):
    return cpu.memory_attend_compact(mem.table, q, top_k, hasher=mem.hasher, return_indices=indices, cache=cache)


def assert_bitwise(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_cached_read_equals_the_plain_read_through_writes_resets_and_loads():
    mem = merge_memory(150)
    q = torch.randn(2, 3, 7, 24, generator=torch.Generator().manual_seed(1))
    cache = cpu.ReadCache()
    assert_bitwise(read(mem, q, 40, cache), read(mem, q, 40))
    entries = cache.get(mem.table, mem.hasher.n_bits, torch.float32)
    assert_bitwise(read(mem, q, 40, cache), read(mem, q, 40))
    assert cache.get(mem.table, mem.hasher.n_bits, torch.float32) is entries  # unchanged memory: kept
    mem.write(torch.randn(2, 3, 60, 24), torch.randn(2, 3, 60, 24), 9)  # merges and new entries
    assert_bitwise(read(mem, q, 40, cache), read(mem, q, 40))
    assert cache.get(mem.table, mem.hasher.n_bits, torch.float32) is not entries
    other = merge_memory(90, seed=5)
    mem.load_state_dict(other.state_dict())  # copied in place
    assert_bitwise(read(mem, q, 40, cache), read(other, q, 40))
    mem.reset()
    out, lse, idx = read(mem, q, 40, cache)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all() and (idx == -1).all()


def test_cache_sees_a_buffer_replaced_by_another_tensor():
    mem, other = merge_memory(150), merge_memory(150, seed=3)
    q = torch.randn(2, 3, 5, 24)
    cache = cpu.ReadCache()
    read(mem, q, 16, cache)
    mem.keys, mem.values = other.keys.clone(), other.values.clone()  # same versions, other tensors
    mem.signatures, mem.counts = other.signatures.clone(), other.counts.clone()
    assert_bitwise(read(mem, q, 16, cache), read(other, q, 16))


def test_memory_attend_reads_through_its_cache_and_copies_without_it():
    import copy
    import pickle

    mem = HashedMemory(1024, 4, heads=2, head_dim=16)  # 4,096 entries: the compact read
    mem.write(torch.randn(1, 2, 300, 16), torch.randn(1, 2, 300, 16), 0)
    q = torch.randn(1, 2, 5, 16)
    first = mem.attend(q, top_k=8)
    assert mem._read_cache._key is not None
    assert_bitwise(copy.deepcopy(mem).attend(q, top_k=8), first)
    assert copy.deepcopy(mem)._read_cache._key is None
    assert pickle.loads(pickle.dumps(mem))._read_cache._key is None


def test_query_signs_from_the_projection_equal_the_packed_signatures():
    """SimHash and LearnedHash queries are signed from their projection directly; any other hasher
    (here a wrapper) and given ``q_sig`` through the packed words: the same read."""
    from vidhash.hashing import LearnedHash

    class Wrapped:  # a hasher the read does not know: only called
        def __init__(self, inner):
            self.inner, self.n_bits = inner, inner.n_bits

        def __call__(self, x, role="key"):
            return self.inner(x, role=role)

    mem = merge_memory(150)
    q = torch.randn(2, 3, 7, 24)
    for hasher in (mem.hasher, LearnedHash(24, 32, heads=3, hidden=16, seed=1)):
        plain = cpu.memory_attend_compact(mem.table, q, 20, hasher=hasher, return_indices=True)
        assert_bitwise(cpu.memory_attend_compact(mem.table, q, 20, hasher=Wrapped(hasher), return_indices=True), plain)
        given = cpu.memory_attend_compact(mem.table, q, 20, hasher=hasher, return_indices=True,
                                          q_sig=hasher(q, role="query"))
        assert_bitwise(given, plain)


def test_a_memory_made_under_inference_mode_is_read_without_a_cache():
    """Inference tensors have no version counter: every read rebuilds the filled entries (and a
    write in between is seen)."""
    q = torch.randn(2, 3, 5, 24)
    with torch.inference_mode():
        mem = merge_memory(150)
        cache = cpu.ReadCache()
        first = read(mem, q, 16, cache)
        assert_bitwise(first, read(mem, q, 16))
        mem.write(torch.randn(2, 3, 40, 24), torch.randn(2, 3, 40, 24), 9)
        assert_bitwise(read(mem, q, 16, cache), read(mem, q, 16))
        assert cache._key is None


@pytest.mark.parametrize("n_bits,memo_bytes", [(8, None), (8, 3000), (64, None)])
def test_selection_memo_gives_the_plain_read_for_repeated_and_new_signatures(n_bits, memo_bytes, monkeypatch):
    """Reads of an unchanged memory share their selections by query signature (8 bits: many
    repeats; a memo that fills up part-way; 64 bits: not kept): bitwise the read without a cache,
    sorted or not, and a write empties the memo."""
    if memo_bytes is not None:
        monkeypatch.setattr(cpu, "MEMO_BYTES", memo_bytes)
    g = torch.Generator().manual_seed(0)
    mem = HashedMemory(64, 8, heads=3, head_dim=24, batch_size=2, policy="merge", n_bits=n_bits)
    for f in range(6):
        mem.write(torch.randn(2, 3, 29, 24, generator=g), torch.randn(2, 3, 29, 24, generator=g), f)
    cache = cpu.ReadCache()
    for _ in range(3):
        q = torch.randn(2, 3, 30, 24, generator=g)
        q[:, :, 20:] = q[:, :, :10]  # the same signatures within a read too
        for indices in (False, True):
            assert_bitwise(read(mem, q, 20, cache, indices), read(mem, q, 20, indices=indices))
    kept = cache.memo.bytes
    assert (kept > 0) == (n_bits <= 63) and (memo_bytes is None or kept <= memo_bytes)
    mem.write(torch.randn(2, 3, 29, 24, generator=g), torch.randn(2, 3, 29, 24, generator=g), 7)
    assert_bitwise(read(mem, q, 20, cache, False), read(mem, q, 20, indices=False))
    assert cache.memo.bytes <= kept


def test_int8_ranks_give_the_float_ranks_selection(monkeypatch):
    """Ranks from an int8 matmul (int32) and from the float32 addmm are the same integers, and
    topk's order depends on their comparisons only: the same read, sorted or not."""
    mem = merge_memory(150)
    q = torch.randn(2, 3, 9, 24, generator=torch.Generator().manual_seed(4))
    assert cpu._int_mm_works() and cpu.filled_entries(mem.table, 32, torch.float32)[0].k_signs.dtype == torch.int8
    ints = [read(mem, q, 20, indices=i) for i in (True, False)]
    monkeypatch.setattr(cpu, "_int_mm_works", lambda: False)
    assert cpu.filled_entries(mem.table, 32, torch.float32)[0].k_signs.dtype == torch.float32
    for i, got in zip((True, False), ints):
        assert_bitwise(got, read(mem, q, 20, indices=i))


def test_heads_read_together_equal_head_by_head():
    """One sparse read over the joined entries of several heads gives bitwise the per-head reads
    (all heads, and a subset)."""
    mem = merge_memory(200)
    entries = cpu.filled_entries(mem.table, 32, torch.float32)
    g = torch.Generator().manual_seed(5)
    qf = torch.randn(6, 7, 24, generator=g)
    sels = {i: torch.stack([torch.randperm(e.filled.numel(), generator=g)[:10] for _ in range(7)])
            for i, e in enumerate(entries)}
    for heads in (list(sels), [0, 2, 5]):
        picked = {i: sels[i] for i in heads}
        together = torch.zeros(6, 7, 24), torch.full((6, 7), float("-inf"))
        apart = torch.zeros(6, 7, 24), torch.full((6, 7), float("-inf"))
        cpu._read_selected(entries, picked, qf, *together, 0.2)
        cpu._read_selected(list(entries), picked, qf, *apart, 0.2)  # a plain list: head by head
        assert_bitwise(together, apart)
