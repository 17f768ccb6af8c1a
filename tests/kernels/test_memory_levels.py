"""The levels select (``memory_select_levels``, ``memory_attend(select="levels")``) vs the reference.

Memories are filled directly (random signatures on a chosen share of the entries, the rest
empty), so the fill level, the ties and the number of filled entries are exact; the selection
reads only signatures and counts. Queries' signatures are given, so both paths rank the same bits.
"""
import pytest
import torch

from vidhash.hashing import num_words
from vidhash.kernels.memory import naive
from vidhash.kernels.memory.ops import SELECTS, memory_attend, memory_select, memory_select_levels
from vidhash.memory import READ_SELECTS

from memory_helpers import DEV, make  # tests/kernels/memory_helpers.py
from test_memory_kernels import rel_err, sorted_ref_indices


def random_signatures(shape, n_bits, g, pool: int = 0):
    """int32 signatures ``(*shape, w)`` with bits past ``n_bits`` clear (as the hashers give);
    ``pool > 0``: drawn from ``pool`` distinct signatures (many ties)."""
    w = num_words(n_bits)
    if pool:
        choices = random_signatures((pool,), n_bits, g)
        return choices[torch.randint(0, pool, shape, generator=g)]
    sig = torch.randint(-(1 << 31), 1 << 31, (*shape, w), generator=g, dtype=torch.int64)
    rem = n_bits - 32 * (w - 1)
    if rem < 32:
        sig[..., -1] &= (1 << rem) - 1
    return sig.to(torch.int32)


def filled(u, s, h, n_bits, fill, *, b=1, d=24, dtype=torch.float32, pool=0, seed=0, device=DEV):
    """A memory on ``device`` with about ``fill`` of its entries filled (random keys, values,
    signatures, counts 1-3, drawn on the CPU), the rest empty."""
    mem = make(u, s, h, d, n_bits, b, dtype, seed, device)
    g = torch.Generator().manual_seed(seed)
    on = torch.rand(b, h, u, s, generator=g) < fill
    with torch.no_grad():
        mem.signatures.copy_(torch.where(on.unsqueeze(-1), random_signatures((b, h, u, s), n_bits, g, pool), 0))
        mem.counts.copy_(on * torch.randint(1, 4, (b, h, u, s), generator=g, dtype=torch.int32))
        mem.keys.copy_(torch.randn(mem.keys.shape, generator=g).to(dtype))
        mem.values.copy_(torch.randn(mem.values.shape, generator=g).to(dtype))
    return mem


def reference_indices(mem, q_sig, top_k):
    """The reference read's selection (entry order, -1 last), from given query signatures."""
    b, h, n, _ = q_sig.shape
    q = torch.zeros(b, h, n, mem.config.head_dim, device=mem.keys.device)
    _, _, idx = naive.memory_attend(mem.table, q, top_k, hasher=mem.hasher, q_sig=q_sig, return_indices=True)
    return sorted_ref_indices(idx)


def check(mem, n, top_k, *, probe_stride=8, ranges=1, pool=0, seed=1):
    cfg, dev = mem.config, mem.keys.device
    g = torch.Generator().manual_seed(seed)
    q_sig = random_signatures((cfg.batch_size, cfg.heads, n), cfg.n_bits, g, pool).to(dev)
    q = torch.zeros(cfg.batch_size, cfg.heads, n, cfg.head_dim, device=dev)
    got, lo, hi, above, words = memory_select_levels(mem.table, q, top_k, hasher=mem.hasher, q_sig=q_sig,
                                                     probe_stride=probe_stride, ranges=ranges, _state=True)
    assert torch.equal(lo, hi), "a query's threshold level was left open"
    assert int(words.max()) <= ranges * min(top_k, mem.capacity)  # at most k words per entry range
    want = reference_indices(mem, q_sig, top_k)
    assert torch.equal(got.long(), want)
    return lo, above


# --------------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fill,heads,n,top_k,ranges", [
    pytest.param(0.03, 1, 13, 3, 1, id="fill3%-H1-N13-k3"),
    pytest.param(0.5, 3, 9, 20, 1, id="fill50%-H3-N9-k20"),
    pytest.param(1.0, 2, 13, 7, 1, id="fill100%-H2-N13-k7"),
    pytest.param(1.0, 2, 13, 7, 3, id="fill100%-H2-N13-k7-3-entry-ranges"),
    pytest.param(0.5, 1, 5, 4, 8, id="fill50%-H1-N5-k4-8-entry-ranges-some-empty"),
])
def test_select_equals_reference_at_every_fill(fill, heads, n, top_k, ranges):
    """185 entries (37 buckets × 5 slots: several 16-entry chunks, a partial last one); entry
    ranges split each query's passes over programs (counts summed by the next pass; one word list
    per range)."""
    mem = filled(37, 5, heads, 32, fill, seed=int(fill * 100) + heads)
    check(mem, n, top_k, ranges=ranges)


def test_select_with_fewer_filled_entries_than_k_pads():
    mem = filled(11, 3, 2, 32, 0.2, b=2, seed=4)
    lo, above = check(mem, 6, 30)
    filled_per_row = (mem.counts > 0).sum((-1, -2)).view(-1)
    assert int(filled_per_row.max()) < 30
    assert (lo == -1).all() and torch.equal(above.view(4, 6), filled_per_row.view(4, 1).expand(4, 6).int())


@pytest.mark.parametrize("top_k,ranges", [(3, 1), (40, 1), (17, 4)])
def test_ties_at_the_threshold_level_go_to_the_lower_entries(top_k, ranges):
    """Signatures from a pool of 4: each query sees at most 4 similarity levels, so the k-th
    entry's level holds far more entries than are taken from it (split into entry ranges: each
    range lists its own first words at the level, the expansion takes the first over all)."""
    mem = filled(29, 6, 2, 32, 0.7, pool=4, seed=5)
    lo, above = check(mem, 11, top_k, pool=4, ranges=ranges)
    assert (above < top_k).all()


@pytest.mark.parametrize("n_bits", [16, 70], ids=["bits16", "bits70"])
def test_select_other_signature_widths(n_bits):
    mem = filled(23, 4, 2, n_bits, 0.8, seed=n_bits)
    check(mem, 10, 9)


@pytest.mark.parametrize("probe_stride", [0, 1, 1000], ids=["no-probe", "probe-every-entry", "probe-one-entry"])
def test_select_without_or_with_a_useless_probe(probe_stride):
    """The probe only aims the counting window: without one (coarse-to-fine passes) or with one
    that sees a single entry (the window misses, later passes close the level), the same result."""
    mem = filled(40, 8, 1, 32, 0.9, seed=6)
    check(mem, 21, 12, probe_stride=probe_stride)


def test_select_equals_the_candidates_kernel():
    assert READ_SELECTS == SELECTS  # HashedMemory.attend validates select with its own copy
    mem = filled(17, 5, 1, 32, 0.6, seed=7)
    g = torch.Generator().manual_seed(8)
    q_sig = random_signatures((1, 1, 12), 32, g).to(DEV)
    q = torch.zeros(1, 1, 12, 24, device=DEV)
    a = memory_select_levels(mem.table, q, 10, hasher=mem.hasher, q_sig=q_sig)
    b = memory_select(mem.table, q, 10, hasher=mem.hasher, q_sig=q_sig)
    assert torch.equal(a, b)


def test_select_errors():
    mem = filled(5, 4, 1, 32, 1.0)
    q = torch.zeros(1, 1, 3, 24, device=DEV)
    with pytest.raises(ValueError, match="probe_stride"):
        memory_select_levels(mem.table, q, 3, hasher=mem.hasher, probe_stride=-1)
    with pytest.raises(ValueError, match="ranges"):
        memory_select_levels(mem.table, q, 3, hasher=mem.hasher, ranges=0)
    wide = filled(5, 4, 1, 128, 1.0)
    with pytest.raises(ValueError, match="n_bits=128"):
        memory_select_levels(wide.table, q, 3, hasher=wide.hasher)
    with pytest.raises(ValueError, match="select must be one of"):
        memory_attend(mem.table, q, 3, hasher=mem.hasher, select="sorted")
    with pytest.raises(ValueError, match="select must be one of"):
        mem.attend(q, 3, select="sorted")


def test_closing_pass_ranges(monkeypatch):
    """The closing passes' split: up to 16 ranges off the GPU (the tests split them finely); on a
    GPU about four waves of 3 CTAs per SM, never fewer than the other passes' ranges."""
    from types import SimpleNamespace

    from vidhash.kernels.memory.ops import _closing_ranges
    cpu = torch.zeros(1)
    assert _closing_ranges(cpu, 384, 65536, 128, 1) == 16 and _closing_ranges(cpu, 384, 1024, 128, 1) == 2
    assert _closing_ranges(cpu, 12, 32768, 128, 22) == 22
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: SimpleNamespace(multi_processor_count=132))
    gpu = SimpleNamespace(device=torch.device("cuda", 0))
    assert _closing_ranges(gpu, 384, 65536, 128, 1) == 5  # the bench shape: 1,920 programs, was 6,144
    assert _closing_ranges(gpu, 12, 32768, 128, 22) == 22  # the generation shape: as its other passes
    assert _closing_ranges(gpu, 4000, 65536, 128, 1) == 1


# --------------------------------------------------------------------------------------------
# the read
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,heads,fill,top_k", [
    pytest.param(torch.float32, 1, 0.5, 6, id="fp32-H1-fill50%-k6"),
    pytest.param(torch.bfloat16, 3, 0.5, 6, id="bf16-H3-fill50%-k6"),
    pytest.param(torch.float16, 3, 0.5, 6, id="fp16-H3-fill50%-k6"),
    pytest.param(torch.float32, 3, 0.03, 8, id="fp32-H3-fill3%-k8-more-than-filled"),
])
def test_read_equals_reference(dtype, heads, fill, top_k):
    mem = filled(19, 5, heads, 32, fill, b=2, d=24, dtype=dtype, seed=9)
    g = torch.Generator().manual_seed(10)
    q_sig = random_signatures((2, heads, 7), 32, g).to(DEV)
    q0 = torch.randn(2, heads, 7, 24, generator=g).to(DEV, dtype)
    res = []
    for fn, kw in ((naive.memory_attend, {}), (memory_attend, {"select": "levels"})):
        q = q0.clone().requires_grad_(True)
        out, lse, idx = fn(mem.table, q, top_k, hasher=mem.hasher, q_sig=q_sig, return_indices=True, **kw)
        (out.float().square().sum() + lse.sum()).backward()
        res.append((out, lse, idx, q.grad))
    (ro, rl, ri, rg), (ko, kl, ki, kg) = res
    assert torch.equal(ki, ri) and ko.dtype == ro.dtype
    has = torch.isfinite(rl)  # a head with no filled entry reads nothing: lse -inf
    assert torch.equal(torch.isfinite(kl), has) and (ko[~has] == 0).all()
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    assert rel_err(ko, ro) < tol and rel_err(kl[has], rl[has]) < 2e-5 and rel_err(kg, rg) < max(tol, 1e-4)


def test_hashed_memory_attend_takes_select():
    mem = filled(13, 4, 2, 32, 0.7, seed=11)
    q = torch.randn(1, 2, 5, 24).to(DEV)
    a = mem.attend(q, 6, backend="triton", select="levels", return_indices=True)
    b = mem.attend(q, 6, backend="triton", return_indices=True)
    ref = mem.attend(q, 6, backend="reference", select="levels", return_indices=True)  # same entries on every path
    assert torch.equal(a[2], b[2]) and torch.equal(a[2], ref[2])
    assert rel_err(a[0], b[0]) < 1e-6 and rel_err(a[0], ref[0]) < 2e-5


# --------------------------------------------------------------------------------------------
# GPU: benchmark-sized shapes
# --------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("fill", [0.03, 0.5, 1.0], ids=["fill3%", "fill50%", "fill100%"])
@pytest.mark.parametrize("top_k", [64, 256])
def test_gpu_select_matches_reference_at_scale(fill, top_k):
    mem = filled(4096, 16, 2, 32, fill, d=64, dtype=torch.bfloat16, seed=12, device="cuda")
    g = torch.Generator().manual_seed(13)
    q_sig = random_signatures((1, 2, 300), 32, g).cuda()
    q = torch.zeros(1, 2, 300, 64, device="cuda", dtype=torch.bfloat16)
    got, lo, hi, _, _ = memory_select_levels(mem.table, q, top_k, hasher=mem.hasher, q_sig=q_sig, _state=True)
    assert torch.equal(lo, hi)
    assert torch.equal(got.long(), reference_indices(mem, q_sig, top_k))


@pytest.mark.gpu
@pytest.mark.parametrize("fill", [0.03, 1.0], ids=["fill3%", "fill100%"])
def test_gpu_select_matches_reference_at_generation_shape(fill):
    """256 queries × 3 heads × 32,768 entries: few query tiles, so the passes split the entries
    into ranges (chosen from the GPU's SM count)."""
    mem = filled(2048, 16, 3, 32, fill, d=64, dtype=torch.bfloat16, seed=14, device="cuda")
    g = torch.Generator().manual_seed(15)
    q_sig = random_signatures((1, 3, 256), 32, g).cuda()
    q = torch.zeros(1, 3, 256, 64, device="cuda", dtype=torch.bfloat16)
    got, lo, hi, _, _ = memory_select_levels(mem.table, q, 256, hasher=mem.hasher, q_sig=q_sig, _state=True)
    assert torch.equal(lo, hi)
    assert torch.equal(got.long(), reference_indices(mem, q_sig, 256))


@pytest.mark.gpu
@pytest.mark.parametrize("top_k", [64, 256])
def test_gpu_read_matches_reference_on_written_memory(top_k):
    torch.manual_seed(0)
    mem = make(4096, 16, 4, 64, 32, 1, torch.bfloat16, 0, "cuda")
    for f in range(48):  # 48 frames × 1560 tokens ≈ 75K tokens into 65,536 entries
        k = torch.randn(1, 4, 1560, 64, device="cuda", dtype=torch.bfloat16)
        mem.write(k, torch.randn_like(k), f, backend="triton")
    q = torch.randn(1, 4, 300, 64, device="cuda", dtype=torch.bfloat16)
    q_sig = mem.hasher(q, role="query")
    want = reference_indices(mem, q_sig, top_k)
    assert torch.equal(memory_select_levels(mem.table, q, top_k, hasher=mem.hasher, q_sig=q_sig).long(), want)
    out, lse = memory_attend(mem.table, q, top_k, hasher=mem.hasher, q_sig=q_sig, select="levels")
    ro, rl = naive.memory_attend(mem.table, q, top_k, hasher=mem.hasher, q_sig=q_sig)
    assert rel_err(out, ro) < 2e-2 and rel_err(lse, rl) < 1e-4
