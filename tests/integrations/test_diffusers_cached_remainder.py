"""The drop-in's ``remainder="cached"`` (issue 17): with ``reuse_mass``, the key blocks the reused
selection does not keep are attended exactly at the last dense step (``unkept_attention``: dense
less the kept part) and that ``(out, lse)`` is merged into every sparse step after it."""
import pytest
import torch

import vidhash
import vidhash.integrations.diffusers as D
from vidhash.attention import (block_sparse_attention, dense_attention, hash_attention, merge_attention, select_blocks,
                               unkept_attention)
from vidhash.selection import block_mass, select_from_mass

from diffusers_tiny import COG, WAN, rel_err, run, tiny_wan

SPARSE = dict(density=0.25, block_size=4, query_block_size=4)
CACHED = dict(SPARSE, dense_timestep=500, reuse_mass=True, mass_query_stride=2, remainder="cached")


def _at(inputs, t):
    return {**inputs, "timestep": torch.tensor([t] * inputs["timestep"].shape[0])}


def _procs(model):
    return [p for p in model.attn_processors.values() if isinstance(p, D._HashAttnProcessor)]


# --------------------------------------------------------------------------------------------
# unkept_attention
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("density, bk, bq", [(0.25, 16, 16), (0.125, 16, 32), (0.5, 32, 64)])
def test_unkept_attention_merges_with_the_kept_part_into_dense(density, bk, bq):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 200, 16, generator=g) for _ in range(3))  # 200: short last blocks
    k = k * 2.0  # sharper attention than unit scores
    sel = select_blocks(q, k, density=density, block_size=bk, query_block_size=bq)
    kept, lse_kept = block_sparse_attention(q, k, v, sel, return_lse=True)
    rest, lse_rest = unkept_attention(q, k, v, sel)
    out, lse = merge_attention(kept, lse_kept, rest, lse_rest)
    want, lse_want = dense_attention(q, k, v, return_lse=True)
    assert torch.allclose(out, want, atol=2e-5) and torch.allclose(lse, lse_want, atol=1e-5)
    # the unkept part alone is the softmax over the unkept keys: check one query against a masked softmax
    i, blocks = 5, sel.indices[0, 0, 5 // bq].tolist()
    unkept = torch.ones(200, dtype=torch.bool)
    for j in blocks:
        unkept[j * bk:(j + 1) * bk] = False
    w = torch.softmax((q[0, 0, i] @ k[0, 0, unkept].T) / 4.0, -1)
    assert torch.allclose(rest[0, 0, i], w @ v[0, 0, unkept], atol=1e-5)
    assert torch.allclose(lse_rest[0, 0, i], torch.logsumexp((q[0, 0, i] @ k[0, 0, unkept].T) / 4.0, -1), atol=1e-5)


def test_unkept_attention_of_a_selection_keeping_everything_is_empty():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 64, 8, generator=g) for _ in range(3))
    sel = select_blocks(q, k, density=1.0, block_size=16, query_block_size=16)
    out, lse = unkept_attention(q, k, v, sel)
    kept, lse_kept = block_sparse_attention(q, k, v, sel, return_lse=True)
    assert (torch.exp(lse - lse_kept) < 1e-5).all()  # -inf, or the rounding of dense less kept
    assert torch.isfinite(out).all() and torch.where(torch.isneginf(lse).unsqueeze(-1), out == 0, True).all()
    merged, _ = merge_attention(kept, lse_kept, out, lse)
    assert torch.allclose(merged, kept, atol=1e-5)
    with pytest.raises(ValueError, match="non-causal"):
        unkept_attention(q, k, v, select_blocks(q, k, density=0.5, block_size=16, query_block_size=16, causal=True))


# --------------------------------------------------------------------------------------------
# the drop-in
# --------------------------------------------------------------------------------------------
def test_the_cache_is_the_dense_steps_unkept_attention_and_its_inputs_are_freed():
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **CACHED)
    run(model, _at(inputs, 800))
    procs = _procs(model)
    kept = [(p._full_qv[0], p._mass_qk[1], p._full_qv[1]) for p in procs]  # the dense call's q, k, v
    run(model, _at(inputs, 200))
    for p, (q, k, v) in zip(procs, kept):
        mass, _ = block_mass(q[:, :, ::2], k, block_size=4, query_block_size=2)
        sel = select_from_mass(mass, q.shape[-2], k.shape[-2], density=0.25, block_size=4, query_block_size=4)
        assert torch.equal(p._reused.indices, sel.indices)
        want = unkept_attention(q, k, v, sel)
        assert p._full_qv is None and p._mass_qk is None
        assert torch.equal(p._rest[0], want[0]) and torch.equal(p._rest[1], want[1])
    run(model, _at(inputs, 800))  # the next clip's dense step drops the cache
    assert all(p._rest is None and p._full_qv is not None for p in procs)


def test_a_sparse_call_on_the_dense_steps_own_inputs_is_dense_attention():
    """At the dense step's own q, k, v the kept blocks and the cached unkept ones make dense
    attention again: the cache holds exactly what the selection leaves out."""
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **CACHED)
    run(model, _at(inputs, 800))
    for p in _procs(model):
        q, v = p._full_qv
        k = p._mass_qk[1]
        out = p._hash(q, k, v)  # no pre-hook ran: the mass and the cache are made here
        assert p._rest is not None
        assert torch.allclose(out, dense_attention(q, k, v), atol=2e-5)
        plain = hash_attention(q, k, v, selection=p._reused)
        assert rel_err(plain, dense_attention(q, k, v)) > 1e-2  # the selection alone is far from dense


def test_sparse_steps_are_the_kept_blocks_merged_with_the_cache(monkeypatch):
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **CACHED)
    run(model, _at(inputs, 800))
    out = run(model, _at(inputs, 200))
    # the same call with each layer's kept blocks and cache merged by hand
    for p in _procs(model):
        sel, rest = p._reused, p._rest

        def by_hand(q, k, v, return_lse=False, sel=sel, rest=rest):
            o, lse = merge_attention(*block_sparse_attention(q, k, v, sel, return_lse=True), *rest)
            return (o, lse) if return_lse else o
        monkeypatch.setattr(p, "_hash", by_hand)
    assert torch.allclose(run(model, _at(inputs, 200)), out, atol=1e-5)
    vidhash.enable_hash_attention(model, **dict(CACHED, remainder="mean"))
    run(model, _at(inputs, 800))
    assert rel_err(run(model, _at(inputs, 200)), out) > 1e-4  # not the mean remainder


def test_before_any_dense_step_the_mean_remainder_stands_in():
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **dict(CACHED, remainder="mean"))
    want = run(model, _at(inputs, 200))
    vidhash.enable_hash_attention(model, **CACHED)
    assert torch.equal(run(model, _at(inputs, 200)), want)
    assert all(p._rest is None for p in _procs(model))


@pytest.mark.parametrize("make, kw", [WAN, COG])
def test_models_with_text_tokens_and_flex_take_it(make, kw):
    """CogVideoX (video tokens after the text ones): the cache is the video tokens'; FlexAttention
    attending gives the same output as vidhash's kernels on the same blocks."""
    model, inputs = make(**kw)
    vidhash.enable_hash_attention(model, **dict(CACHED, block_size=16, query_block_size=16, mass_query_stride=4))
    run(model, _at(inputs, 800))
    ours = run(model, _at(inputs, 200))
    assert all(p._rest is not None for p in _procs(model)) and torch.isfinite(ours).all()
    vidhash.enable_hash_attention(model, **dict(CACHED, block_size=16, query_block_size=16, mass_query_stride=4,
                                                backend="flex"))
    run(model, _at(inputs, 800))
    assert rel_err(run(model, _at(inputs, 200)), ours) < 1e-5


@pytest.mark.parametrize("config, match", [
    (dict(SPARSE, remainder="cached"), "give reuse_mass=True"),
    (dict(SPARSE, remainder="cached", dense_timestep=500), "give reuse_mass=True"),
    (dict(CACHED, mass_refresh=2), "mass_refresh"),
    (dict(SPARSE, remainder="cache"), "'none', 'mean', 'cached'"),
])
def test_bad_cached_options_raise(config, match):
    model, _ = tiny_wan()
    with pytest.raises(ValueError, match=match):
        vidhash.enable_hash_attention(model, **config)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
def test_unkept_attention_on_the_gpu_kernels(d):
    """bf16 on CUDA: flash attention's lse less the Triton block-sparse kernel's; merged back with
    the kept part it gives dense attention within bf16 rounding."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 3, 4096, d, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
    sel = select_blocks(q, k, density=0.125, block_size=64, query_block_size=64)
    kept, lse_kept = hash_attention(q, k, v, selection=sel, return_lse=True)
    out, _ = merge_attention(kept, lse_kept, *unkept_attention(q, k, v, sel))
    want = dense_attention(q.float(), k.float(), v.float())
    assert rel_err(out, want) < 1e-2
    assert rel_err(kept, want) > 5 * rel_err(out, want)
