import math

import pytest
import torch

from vidhash import HashedMemory, dense_attention, merge_attention
from vidhash.hashing import LearnedHash, hamming_similarity
from vidhash.memory import UnboundHasher, hasher_digest


def rel_err(a, b):
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm().clamp(min=1e-30))


def make(policy="fifo", **kw):
    cfg = dict(num_buckets=32, slots=8, heads=3, head_dim=40, batch_size=2, policy=policy, dtype=torch.float64)
    cfg.update(kw)
    return HashedMemory(**cfg)


def write_frames(mem, frames, tokens=23):
    """Writes ``frames`` random frames of ``tokens`` keys/values; returns them (lists per frame)."""
    ks, vs = [], []
    for f in range(frames):
        k, v = torch.randn(2, 3, tokens, 40, dtype=torch.float64), torch.randn(2, 3, tokens, 40, dtype=torch.float64)
        mem.write(k, v, frame_idx=f)
        ks.append(k)
        vs.append(v)
    return ks, vs


@pytest.mark.parametrize("policy", ["fifo", "merge"])
def test_attend_equals_dense_when_everything_fits(policy):
    torch.manual_seed(0)
    mem = make(policy, num_buckets=64, slots=32)
    ks, vs = write_frames(mem, 4)
    assert (mem.num_entries() == 92).all(), "nothing may be evicted or merged when capacity suffices"
    q = torch.randn(2, 3, 11, 40, dtype=torch.float64, requires_grad=True)
    out, lse = mem.attend(q, top_k=mem.capacity)
    ref, ref_lse = dense_attention(q, torch.cat(ks, 2), torch.cat(vs, 2), return_lse=True)
    assert rel_err(out, ref) < 1e-12 and rel_err(lse, ref_lse) < 1e-12
    g = torch.randn_like(out)
    (gq,) = torch.autograd.grad((out * g).sum(), q)
    (gref,) = torch.autograd.grad((ref * g).sum(), q)
    assert rel_err(gq, gref) < 1e-10


@pytest.mark.parametrize("policy", ["fifo", "merge"])
def test_reading_every_entry_is_the_dense_path_and_equals_top_k_selection(policy):
    """top_k ≥ capacity takes the dense read (no signatures, no top-k); it must equal the
    selective read of every entry (return_indices keeps that path), merged counts and empty
    slots included, with gradients."""
    torch.manual_seed(5)
    mem = make(policy, num_buckets=4, slots=8)  # 32 entries: the 3 × 23-token writes overflow (evict or merge)
    for f in range(3):
        mem.write(torch.randn(2, 3, 23, 40, dtype=torch.float64), torch.randn(2, 3, 23, 40, dtype=torch.float64), f)
    if policy == "merge":
        assert int(mem.counts.max()) > 1  # merged entries: their log(count) weight is part of the read
    q = torch.randn(2, 3, 9, 40, dtype=torch.float64, requires_grad=True)
    out, lse = mem.attend(q, top_k=mem.capacity, scale=0.3)
    sel, sel_lse, idx = mem.attend(q, top_k=mem.capacity, scale=0.3, return_indices=True)
    assert rel_err(out, sel) < 1e-12 and rel_err(lse, sel_lse) < 1e-12
    g = torch.randn_like(out)
    (g1,) = torch.autograd.grad((out * g).sum(), q)
    (g2,) = torch.autograd.grad((sel * g).sum(), q)
    assert rel_err(g1, g2) < 1e-10
    # half-empty memory: empty slots take no weight
    fresh = make(policy, num_buckets=64, slots=8)
    fresh.write(torch.randn(2, 3, 5, 40, dtype=torch.float64), torch.randn(2, 3, 5, 40, dtype=torch.float64), 0)
    a, la = fresh.attend(q, top_k=10_000)
    b, lb, _ = fresh.attend(q, top_k=fresh.capacity, return_indices=True)
    assert rel_err(a, b) < 1e-12 and rel_err(la, lb) < 1e-12


def test_window_plus_memory_merge_equals_full_history():
    """Contract 1: memory read merged with an exact window == full attention over history."""
    torch.manual_seed(1)
    mem = make(num_buckets=64, slots=16, batch_size=1)
    old_k, old_v = torch.randn(1, 3, 50, 40, dtype=torch.float64), torch.randn(1, 3, 50, 40, dtype=torch.float64)
    win_k, win_v = torch.randn(1, 3, 20, 40, dtype=torch.float64), torch.randn(1, 3, 20, 40, dtype=torch.float64)
    mem.write(old_k, old_v, torch.arange(50))
    q = torch.randn(1, 3, 7, 40, dtype=torch.float64)
    o1, l1 = dense_attention(q, win_k, win_v, return_lse=True)
    o2, l2 = mem.attend(q, top_k=10_000)
    out, _ = merge_attention(o1, l1, o2, l2)
    ref = dense_attention(q, torch.cat([old_k, win_k], 2), torch.cat([old_v, win_v], 2))
    assert rel_err(out, ref) < 1e-12


@pytest.mark.parametrize("policy", ["fifo", "merge"])
def test_dense_read_without_gradients_takes_the_fused_kernel_and_agrees(policy):
    """At inference (no gradients) the every-entry read runs PyTorch's fused attention with the
    log-count weight as an extra channel; it must agree with the selective read of every entry."""
    torch.manual_seed(6)
    mem = make(policy, num_buckets=4, slots=8, dtype=torch.float32)
    for f in range(3):
        mem.write(torch.randn(2, 3, 23, 40), torch.randn(2, 3, 23, 40), f)
    q = torch.randn(2, 3, 9, 40)
    with torch.no_grad():
        out, lse = mem.attend(q, top_k=mem.capacity, scale=0.3)
        sel, sel_lse, _ = mem.attend(q, top_k=mem.capacity, scale=0.3, return_indices=True)
    assert rel_err(out, sel) < 1e-5 and (lse - sel_lse).abs().max() < 1e-4
    empty = make(policy, num_buckets=4, slots=8, dtype=torch.float32)
    with torch.no_grad():
        out, lse = empty.attend(q, top_k=empty.capacity)
    assert (out == 0).all() and torch.isneginf(lse).all()


def test_empty_memory_reads_nothing():
    mem = make()
    out, lse = mem.attend(torch.randn(2, 3, 5, 40, dtype=torch.float64), top_k=4)
    assert (out == 0).all() and torch.isneginf(lse).all()


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("num_buckets", [16, 32768], ids=["float32-rank", "float64-rank"])
def test_top_k_selects_by_signature_with_low_index_ties(num_buckets, backend):
    """(262,144 entries: the reference's rank is no longer an exact float32 integer and is built in
    float64; ``auto`` reads that memory by the compact read, over its 60 filled entries.)"""
    torch.manual_seed(2)
    dtype = torch.float64 if num_buckets == 16 else torch.float32  # (float32: half the big memory's bytes)
    mem = make(num_buckets=num_buckets, slots=8, batch_size=1, heads=1, dtype=dtype)
    k = torch.randn(1, 1, 60, 40, dtype=torch.float64).to(dtype)
    mem.write(k, k.clone(), 0)
    q = k[:, :, :5]
    _, _, idx = mem.attend(q, top_k=3, return_indices=True, backend=backend)
    sigs = mem.signatures.view(1, 1, -1, 1)
    sim = hamming_similarity(mem.hasher(q), sigs[0, 0].unsqueeze(0).unsqueeze(0), 32)
    valid = mem.counts.view(1, 1, -1) > 0
    for i in range(5):
        cands = [(int(sim[0, 0, i, e]), e) for e in valid[0, 0].nonzero()[:, 0].tolist()]
        best = sorted(cands, key=lambda c: (-c[0], c[1]))[:3]
        assert sorted(idx[0, 0, i].tolist()) == sorted(e for _, e in best)
        # a stored copy of the query is always among its best entries
        assert max(s for s, _ in cands) == 32


@pytest.mark.parametrize("policy", ["fifo", "merge"])
def test_nbytes_fixed_after_many_writes(policy):
    mem = make(policy)
    before = mem.nbytes
    expected = 2 * 3 * 32 * 8 * (40 * 8 * 2 + 4 + 8 + 4) + 2 * 3 * 32 * 8 + 3 * 40 * 32 * 4
    assert before == expected
    for f in range(40):  # 40 × 2 × 3 × 25 tokens ≫ 10× capacity
        mem.write(torch.randn(2, 3, 25, 40, dtype=torch.float64), torch.randn(2, 3, 25, 40, dtype=torch.float64), f)
    assert mem.nbytes == before
    assert (mem.num_entries() <= mem.capacity).all()


def test_fifo_evicts_oldest_per_bucket():
    torch.manual_seed(3)
    mem = make(num_buckets=1, slots=4, batch_size=1, heads=1)
    k = torch.randn(1, 1, 10, 40, dtype=torch.float64)
    for f in range(10):
        mem.write(k[:, :, f : f + 1], k[:, :, f : f + 1], f)
    assert sorted(mem.frames.flatten().tolist()) == [6, 7, 8, 9]
    # the same in one write: token order decides
    mem2 = make(num_buckets=1, slots=4, batch_size=1, heads=1)
    mem2.write(k, k, torch.arange(10))
    assert torch.equal(mem.frames.sort(-1).values, mem2.frames.sort(-1).values)
    assert torch.equal(mem.keys, mem2.keys)


def test_merge_policy_keeps_running_means():
    torch.manual_seed(4)
    mem = make("merge", num_buckets=1, slots=2, batch_size=1, heads=1)
    base = torch.randn(40, dtype=torch.float64)
    toks = torch.stack([base + 0.01 * torch.randn(40, dtype=torch.float64) for _ in range(6)]).view(1, 1, 6, 40)
    mem.write(toks, toks, torch.arange(6))
    assert int(mem.counts.sum()) == 6 and int((mem.counts > 0).sum()) == 2
    # the sum of count-weighted keys is preserved by merging
    total = (mem.keys * mem.counts.unsqueeze(-1)).sum((0, 1, 2, 3))
    assert torch.allclose(total, toks.sum((0, 1, 2)), atol=1e-10)
    assert mem.frames.max() == 5


def test_state_dict_round_trip_exact():
    torch.manual_seed(5)
    mem = make("merge")
    for f in range(5):
        mem.write(torch.randn(2, 3, 30, 40, dtype=torch.float64), torch.randn(2, 3, 30, 40, dtype=torch.float64), f)
    other = make("merge")
    other.load_state_dict(mem.state_dict())
    for (name, a), (_, b) in zip(mem.named_buffers(), other.named_buffers()):
        assert torch.equal(a, b), name
    q = torch.randn(2, 3, 4, 40, dtype=torch.float64)
    assert torch.equal(mem.attend(q, 8)[0], other.attend(q, 8)[0])
    wrong = make("fifo")
    with pytest.raises(ValueError, match="config"):
        wrong.load_state_dict(mem.state_dict())


def test_determinism_same_seed_same_buckets():
    k = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    a, b = make(seed=7), make(seed=7)
    a.write(k, k, 0)
    b.write(k, k, 0)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.keys, b.keys)
    c = make(seed=8)
    c.write(k, k, 0)
    assert not torch.equal(a.signatures, c.signatures)


def test_reset():
    mem = make()
    mem.write(torch.randn(2, 3, 5, 40, dtype=torch.float64), torch.randn(2, 3, 5, 40, dtype=torch.float64), 0)
    mem.reset()
    assert int(mem.num_entries().sum()) == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        pytest.param(dict(num_buckets=0), "num_buckets", id="zero-buckets"),
        pytest.param(dict(slots=0), "slots", id="zero-slots"),
        pytest.param(dict(n_bits=300), "n_bits", id="bits"),
        pytest.param(dict(policy="lru"), "policy", id="policy"),
        pytest.param(dict(route_bits=40), "route_bits", id="route-bits"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_bad_writes_and_reads():
    mem = make()
    good = torch.randn(2, 3, 5, 40, dtype=torch.float64)
    with pytest.raises(ValueError, match="heads=3"):
        mem.write(torch.randn(2, 4, 5, 40, dtype=torch.float64), good, 0)
    with pytest.raises(ValueError, match="one shape"):
        mem.write(good, good[:, :, :4], 0)
    with pytest.raises(ValueError, match="frame_idx"):
        mem.write(good, good, torch.arange(4))
    with pytest.raises(ValueError, match="frame_idx"):
        mem.write(good, good, 1.5)
    with pytest.raises(ValueError, match="top_k"):
        mem.attend(good, top_k=0)
    with pytest.raises(ValueError, match="4-D"):
        mem.attend(good[0], top_k=1)


# ------------------------------------------------------------------ borrowed hashers (learned signatures)


def _learned(heads=3, head_dim=40, bits=32, seed=0):
    return LearnedHash(head_dim, bits, heads=heads, hidden=16, seed=seed).eval()


def test_learned_hasher_is_borrowed_and_used():
    torch.manual_seed(3)
    lh = _learned()
    mem = make(hasher=lh, num_buckets=64, slots=32)
    own = make(num_buckets=64, slots=32)
    assert not mem.owns_hasher and own.owns_hasher and mem.hasher is lh
    assert "hasher.planes" not in mem.state_dict() and "hasher.planes" in own.state_dict()
    assert mem.nbytes == own.nbytes - own.hasher.planes.numel() * 4  # the model's hasher is not the memory's bytes
    k, v = torch.randn(2, 3, 50, 40, dtype=torch.float64), torch.randn(2, 3, 50, 40, dtype=torch.float64)
    mem.write(k, v, 0)
    for b in range(2):
        for h in range(3):
            stored = mem.signatures[b, h][mem.counts[b, h] > 0].flatten().sort().values
            assert torch.equal(stored, lh(k, role="key")[b, h].flatten().sort().values)
    q = torch.randn(2, 3, 7, 40, dtype=torch.float64)
    out, lse, idx = mem.attend(q, top_k=5, return_indices=True)
    sim = hamming_similarity_ref(lh(q, role="query"), mem.signatures.view(2, 3, -1, 1), 32)
    best = sim.masked_fill(mem.counts.view(2, 3, 1, -1) == 0, -1).max(-1).values
    chosen = sim.gather(-1, idx[..., :1].clamp(min=0))[..., 0]
    assert torch.equal(chosen, best)  # the first pick is a most-similar entry under the learned signatures


def hamming_similarity_ref(a, b, n_bits):
    return hamming_similarity(a, b, n_bits)


def test_hasher_checks():
    with pytest.raises(ValueError, match="16-bit signatures, this memory stores n_bits=32"):
        make(hasher=_learned(bits=16))
    with pytest.raises(ValueError, match="has 2 heads, this memory 3"):
        make(hasher=_learned(heads=2))
    with pytest.raises(ValueError, match="callable"):
        make(hasher=object())


def test_unbound_hasher_and_bind_rules():
    torch.manual_seed(4)
    mem = make(hasher=UnboundHasher(32, 3, 40))
    assert mem.needs_hasher
    k = torch.randn(2, 3, 10, 40, dtype=torch.float64)
    with pytest.raises(ValueError, match="not bound yet"):
        mem.write(k, k, 0)
    lh = _learned()
    mem.bind_hasher(lh)
    assert not mem.needs_hasher and mem.hasher_digest == hasher_digest(lh)
    mem.write(k, k, 0)
    with pytest.raises(ValueError, match="entries signed by another hasher"):
        mem.bind_hasher(_learned(seed=1))
    mem.bind_hasher(lh)  # the same one: fine
    mem.reset()
    mem.bind_hasher(_learned(seed=1))  # empty: fine
    # a restored memory accepts only the hasher it was written with
    restored = make(hasher=UnboundHasher(32, 3, 40, expected_digest=hasher_digest(lh)))
    with pytest.raises(ValueError, match="state saved with other signatures"):
        restored.bind_hasher(_learned(seed=1))
    restored.bind_hasher(_learned(seed=0))  # equal weights → equal digest
    assert hasher_digest(_learned(seed=0)) == hasher_digest(lh) != hasher_digest(_learned(seed=1))
    # an own SimHash memory with entries refuses a different hasher
    own = make()
    own.write(k, k, 0)
    with pytest.raises(ValueError, match="another hasher"):
        own.bind_hasher(lh)



@pytest.mark.parametrize("policy", ["fifo", "merge"])
def test_mass_cap_weighs_the_memory_as_at_most_cap_keys(policy):
    """``mass_cap`` leaves ``out`` as read and lowers lse by log(mass / cap) past the cap: merged
    with a window read, the result is dense attention over window + memory keys in which every
    memory key weighs cap / mass (the memory as a whole weighs as cap keys); at or under the
    cap nothing changes."""
    torch.manual_seed(7)
    mem = make(policy, num_buckets=64, slots=32)  # everything fits: the entries are the tokens
    ks, vs = write_frames(mem, 4)
    assert torch.equal(mem.mass(), torch.full((2, 3), 92.0))
    q = torch.randn(2, 3, 11, 40, dtype=torch.float64)
    out0, lse0 = mem.attend(q, top_k=mem.capacity)
    out, lse = mem.attend(q, top_k=mem.capacity, mass_cap=23)
    assert torch.equal(out, out0)
    assert torch.allclose(lse, lse0 - math.log(92 / 23), rtol=0, atol=1e-12)
    wk, wv = torch.randn(2, 3, 10, 40, dtype=torch.float64), torch.randn(2, 3, 10, 40, dtype=torch.float64)
    o_w, l_w = dense_attention(q, wk, wv, return_lse=True)
    merged, merged_lse = merge_attention(o_w, l_w, out, lse)
    bias = torch.cat([torch.zeros(10, dtype=torch.float64), torch.full((92,), math.log(23 / 92), dtype=torch.float64)])
    bias = bias.expand(2, 3, -1)
    ref, ref_lse = dense_attention(q, torch.cat([wk, *ks], 2), torch.cat([wv, *vs], 2), return_lse=True, key_bias=bias)
    assert rel_err(merged, ref) < 1e-12 and rel_err(merged_lse, ref_lse) < 1e-12
    # at or under the cap, and with the selective read: exactly as read
    for top_k in (8, mem.capacity):
        a, la = mem.attend(q, top_k=top_k)
        b, lb = mem.attend(q, top_k=top_k, mass_cap=92)
        assert torch.equal(a, b) and torch.equal(la, lb)
    # the selective read gets the same penalty
    a, la = mem.attend(q, top_k=8)
    b, lb = mem.attend(q, top_k=8, mass_cap=46)
    assert torch.equal(a, b) and torch.allclose(lb, la - math.log(2), rtol=0, atol=1e-12)


def test_mass_counts_merged_tokens_and_empty_memory_reads_nothing():
    mem = make("merge", num_buckets=4, slots=8)  # 32 entries, 69 tokens: merges
    for f in range(3):
        mem.write(torch.randn(2, 3, 23, 40, dtype=torch.float64), torch.randn(2, 3, 23, 40, dtype=torch.float64), f)
    assert (mem.num_entries() <= 32).all() and torch.equal(mem.mass(), torch.full((2, 3), 69.0))
    empty = make("fifo")
    out, lse = empty.attend(torch.randn(2, 3, 5, 40, dtype=torch.float64), top_k=4, mass_cap=1)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isinf(lse).all() and (lse < 0).all()
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="mass_cap must be an int"):
            empty.attend(torch.randn(2, 3, 5, 40, dtype=torch.float64), top_k=4, mass_cap=bad)


@pytest.mark.parametrize("top_k", [3, 40], ids=["gathered", "masked-dense"])
def test_selective_read_equals_attention_over_its_selection(top_k):
    """The reference selective read (gathered entries for a small top_k, scores against every
    entry with the unselected masked out for a large one) equals attention over exactly the
    entries it reports, each weighted by log(count)."""
    torch.manual_seed(11)
    mem = make("merge", num_buckets=8, slots=8)  # 64 entries, merged counts
    for f in range(3):
        mem.write(torch.randn(2, 3, 30, 40, dtype=torch.float64), torch.randn(2, 3, 30, 40, dtype=torch.float64), f)
    q = torch.randn(2, 3, 7, 40, dtype=torch.float64)
    out, lse, idx = mem.attend(q, top_k=top_k, scale=0.2, return_indices=True)
    keys, vals = mem.keys.view(2, 3, 64, 40), mem.values.view(2, 3, 64, 40)
    counts = mem.counts.view(2, 3, 64)
    for b in range(2):
        for h in range(3):
            for i in range(7):
                sel = idx[b, h, i][idx[b, h, i] >= 0]
                s = keys[b, h, sel] @ q[b, h, i] * 0.2 + counts[b, h, sel].float().log().double()  # float32 log, as read
                ref_lse = torch.logsumexp(s, 0)
                assert torch.allclose(lse[b, h, i], ref_lse, rtol=0, atol=1e-12)
                assert torch.allclose(out[b, h, i], torch.softmax(s, 0) @ vals[b, h, sel], rtol=0, atol=1e-12)
