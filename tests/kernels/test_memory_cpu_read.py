"""The compact CPU read's fast paths (kernels/memory/cpu.py) against the plain read: the filled
entries kept by a ReadCache while the memory is unchanged, and the query rows split over lanes
(worker threads) — both bitwise the read without them."""
import threading

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


@pytest.fixture
def threads():
    """Set the torch thread count within a test (restored after)."""
    n = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(n)


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


@pytest.mark.parametrize("lanes", [2, 3])
@pytest.mark.parametrize("top_k", [16, 200], ids=["sparse", "dense"])  # dense: top_k ≥ filled entries
def test_read_over_lanes_is_bitwise_the_one_thread_read(threads, monkeypatch, lanes, top_k):
    mem = merge_memory(180)  # 180 filled entries or fewer per head
    q = torch.randn(2, 3, 37, 24, generator=torch.Generator().manual_seed(2))  # 37 rows: uneven parts
    threads(1)
    one = read(mem, q, top_k), read(mem, q, top_k, indices=False)
    threads(lanes)
    runs, real = [], cpu.run_lanes
    monkeypatch.setattr(cpu, "run_lanes", lambda tasks, n: runs.append((len(tasks), n)) or real(tasks, n))
    many = read(mem, q, top_k, cpu.ReadCache()), read(mem, q, top_k, indices=False)
    # 6 heads, split in `lanes` row ranges each when read sparsely, whole when read densely
    assert runs == [(6 * (lanes if top_k == 16 else 1), lanes)] * 2
    assert_bitwise(one[0], many[0])
    assert_bitwise(one[1], many[1])


def test_lanes_leave_the_thread_counts_alone(threads):
    threads(2)
    cpu.run_lanes([lambda: None] * 3, 3)
    cpu.run_lanes([lambda: None] * 3, 2)  # another size: a new pool
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert torch.get_num_threads() == 2 and seen == [2]  # a new thread's default is not the lanes' one


def test_run_lanes_runs_every_task_once_and_raises_the_first_error():
    done = []
    cpu.run_lanes([lambda j=j: done.append(j) for j in range(7)], 2)
    assert sorted(done) == list(range(7))
    done.clear()
    cpu.run_lanes([lambda j=j: done.append((j, threading.current_thread().name)) for j in range(3)], 1)
    assert [j for j, _ in done] == [0, 1, 2] and {name for _, name in done} == {threading.current_thread().name}

    def bad():
        raise ValueError("lane failed")

    with pytest.raises(ValueError, match="lane failed"):
        cpu.run_lanes([lambda: None, bad, lambda: None], 2)
