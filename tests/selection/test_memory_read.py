"""The memory read's recall (``vidhash.selection.memory_read``) against brute force, and the probe."""
import math

import pytest
import torch

from vidhash.kernels.memory import naive as memory_naive
from vidhash.memory import HashedMemory
from vidhash.selection.memory_read import MemoryReadStats, probe_memory_reads, read_recall_sums


def _memory(entries=60, heads=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mem = HashedMemory(num_buckets=4, slots=8, heads=heads, head_dim=d)  # 32 entries per head
    k = torch.randn(1, heads, entries, d, generator=g)
    mem.write(k, torch.randn(k.shape, generator=g), 0)
    k2 = k[:, :, :7] + 0.01  # merged / repeated keys give ties in the exact scores
    mem.write(k2, torch.randn(k2.shape, generator=g), 1)
    return mem, torch.randn(1, heads, 9, d, generator=g) * 2


def _brute(mem, q, idx, scale):
    """Per query, loops: exact logits of every valid entry, their softmax, the exact top-k."""
    b, h, n, d = q.shape
    c = mem.capacity
    keys, counts = mem.keys.view(b, h, c, d), mem.counts.view(b, h, c)
    hits, mass, oracle, rows = 0.0, 0.0, 0.0, 0
    for hh in range(h):
        valid = [e for e in range(c) if counts[0, hh, e] > 0]
        for i in range(n):
            logit = {e: float(q[0, hh, i] @ keys[0, hh, e]) * scale + math.log(float(counts[0, hh, e])) for e in valid}
            z = sum(math.exp(v) for v in logit.values())
            kept = [int(e) for e in idx[0, hh, i] if e >= 0]
            best = sorted(valid, key=lambda e: -logit[e])[: idx.shape[-1]]
            hits += len(set(kept) & set(best)) / len(best)
            mass += sum(math.exp(logit[e]) for e in kept) / z
            oracle += sum(math.exp(logit[e]) for e in best) / z
            rows += 1
    return rows, hits, mass, oracle


@pytest.mark.parametrize("top_k", [pytest.param(3, id="H2-N9-D16-k3"), pytest.param(11, id="H2-N9-D16-k11")])
def test_recall_sums_match_brute_force(top_k):
    mem, q = _memory()
    scale = 0.3
    idx = memory_naive.memory_attend(mem.table, q, top_k, hasher=mem.hasher, scale=scale, return_indices=True)[2]
    got = read_recall_sums(mem.table, q, idx, scale).tolist()
    want = _brute(mem, q, idx, scale)
    assert got[0] == want[0]
    assert got[1:] == pytest.approx(want[1:], rel=1e-5)
    # the exact top-k read keeps everything the oracle keeps
    best = torch.topk(torch.matmul(q, mem.keys.view(1, 2, -1, 16).transpose(-1, -2)) * scale
                      + mem.counts.view(1, 2, 1, -1).clamp(min=1).float().log().masked_fill(mem.counts.view(1, 2, 1, -1) <= 0, float("-inf")),
                      top_k, dim=-1).indices
    stats = MemoryReadStats()
    stats.add(mem.table, q, best, scale)
    s = stats.summary()
    assert s["topk_recall"] == pytest.approx(1.0) and s["ratio"] == pytest.approx(1.0) and s["queries"] == 18


def test_empty_memory_counts_no_query():
    mem = HashedMemory(num_buckets=4, slots=2, heads=1, head_dim=8)
    q = torch.randn(1, 1, 5, 8)
    stats = MemoryReadStats()
    stats.add(mem.table, q, torch.full((1, 1, 5, 3), -1))
    assert stats.summary() == {"topk_recall": None, "mass_recall": None, "oracle": None, "ratio": None, "reads": 1, "queries": 0}


def test_probe_sees_top_k_reads_and_changes_nothing():
    mem, q = _memory(seed=3)
    want = mem.attend(q, 5)
    original = HashedMemory.attend
    with probe_memory_reads(max_queries=4) as stats:
        got = mem.attend(q, 5)
        mem.attend(q, None)  # every entry read: no top-k to measure
    assert HashedMemory.attend is original
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    s = stats.summary()
    assert s["reads"] == 1 and s["queries"] == 2 * 3  # 9 queries, every 3rd, two heads
    idx = memory_naive.memory_attend(mem.table, q[:, :, ::3], 5, hasher=mem.hasher, return_indices=True)[2]
    ref = MemoryReadStats()
    ref.add(mem.table, q[:, :, ::3], idx)
    assert s == ref.summary()
    with pytest.raises(ValueError, match="max_queries"):
        with probe_memory_reads(max_queries=0):
            pass


def test_probe_every_nth_read():
    """every=3: the 1st, 4th and 7th top-k reads are measured; reads of every entry do not count."""
    mem, q = _memory(seed=3)
    with probe_memory_reads(max_queries=4, every=3) as stats:
        for _ in range(7):
            mem.attend(q, 5)
            mem.attend(q, None)
    assert stats.summary()["reads"] == 3
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="every"):
            with probe_memory_reads(every=bad):
                pass
