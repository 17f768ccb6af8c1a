"""The drop-in's ``reuse_delta`` (issue 17): with ``reuse_mass``, the pre-hook that measures the last
dense step's mass also keeps that step's ``dense − sparse`` output (the reused selection, the
remainder, on the dense step's own q, k, v) and every sparse call adds it, its weight halving every
``delta_half_life`` sparse calls."""
import pytest
import torch

import vidhash
import vidhash.integrations.diffusers as D
from vidhash.attention import dense_attention, hash_attention
from vidhash.selection import block_mass, select_from_mass

from diffusers_tiny import COG, WAN, rel_err, run, tiny_wan

SPARSE = dict(density=0.25, block_size=4, query_block_size=4)
DELTA = dict(SPARSE, dense_timestep=500, reuse_mass=True, mass_query_stride=2, remainder="mean", reuse_delta=True)


def _at(inputs, t):
    return {**inputs, "timestep": torch.tensor([t] * inputs["timestep"].shape[0], device=inputs["timestep"].device)}


def _procs(model):
    return [p for p in model.attn_processors.values() if isinstance(p, D._HashAttnProcessor)]


def test_the_delta_is_the_dense_steps_dense_less_sparse_output_and_its_inputs_are_freed():
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **DELTA)
    run(model, _at(inputs, 800))
    procs = _procs(model)
    kept = [(p._full_qv[0], p._mass_qk[1], p._full_qv[1]) for p in procs]  # the dense call's q, k, v
    run(model, _at(inputs, 200))
    for p, (q, k, v) in zip(procs, kept):
        mass, _ = block_mass(q[:, :, ::2], k, block_size=4, query_block_size=2)
        sel = select_from_mass(mass, q.shape[-2], k.shape[-2], density=0.25, block_size=4, query_block_size=4)
        assert torch.equal(p._reused.indices, sel.indices)
        want = dense_attention(q, k, v) - hash_attention(q, k, v, selection=sel, remainder="mean", **{
            key: val for key, val in SPARSE.items() if key != "density"})
        assert p._full_qv is None and p._mass_qk is None and p._delta.dtype == torch.float32
        assert torch.allclose(p._delta, want, atol=1e-6) and want.abs().max() > 1e-3
    run(model, _at(inputs, 800))  # the next clip's dense step drops the delta
    assert all(p._delta is None and p._full_qv is not None for p in procs)


def test_a_sparse_call_on_the_dense_steps_own_inputs_is_dense_attention():
    """The first sparse call on the dense step's own q, k, v gives dense attention back: the delta is
    exactly what the sparse output lacks there."""
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **DELTA)
    run(model, _at(inputs, 800))
    for p in _procs(model):
        q, v, dense = p._full_qv
        k = p._mass_qk[1]
        assert torch.allclose(dense, dense_attention(q, k, v), atol=1e-6)  # Wan: the dense call's own output, kept
        out = p._hash(q, k, v)  # no pre-hook ran: the mass and the delta are measured here
        assert p._delta is not None
        assert torch.allclose(out, dense_attention(q, k, v), atol=1e-5)
        assert rel_err(p._sparse(q, k, v, p._reused), dense_attention(q, k, v)) > 1e-3


@pytest.mark.parametrize("half", [None, 2.0])
def test_sparse_calls_add_the_delta_its_weight_halving_every_half_life(half, monkeypatch):
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **DELTA, delta_half_life=half)
    procs = _procs(model)
    run(model, _at(inputs, 800))
    run(model, _at(inputs, 300))
    first = [p._delta.clone() for p in procs]
    seen = []
    for p in procs:
        sparse, hashed = p._sparse, p._hash

        def spy_sparse(q, k, v, selection, return_lse=False, real=sparse, p=p):
            out = real(q, k, v, selection, return_lse)
            seen.append(("sparse", p, out))
            return out

        def spy_hash(q, k, v, return_lse=False, real=hashed, p=p):
            out = real(q, k, v, return_lse)
            seen.append(("hash", p, out))
            return out
        monkeypatch.setattr(p, "_sparse", spy_sparse)
        monkeypatch.setattr(p, "_hash", spy_hash)
    run(model, _at(inputs, 200))  # the second sparse call: the delta at 0.5 ** (1 / half) of its first weight
    weight = 1.0 if half is None else 0.5 ** (1 / half)
    for p, d in zip(procs, first):
        assert torch.allclose(p._delta, d * weight, atol=1e-7)
        sparse = next(out for kind, q, out in seen if kind == "sparse" and q is p)[0]  # _hash asks it for (out, lse)
        hashed = next(out for kind, q, out in seen if kind == "hash" and q is p)
        assert torch.allclose(hashed, sparse + p._delta, atol=1e-6)
        assert rel_err(hashed, sparse) > 1e-4


def test_the_calls_of_one_step_decay_the_delta_once():
    """Guidance branches call the transformer more than once a step: the half-life counts timesteps."""
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **DELTA, delta_half_life=1.0)
    run(model, _at(inputs, 800))
    run(model, _at(inputs, 300))
    first = [p._delta.clone() for p in _procs(model)]
    run(model, _at(inputs, 300))  # the same step's second branch: no decay
    assert all(torch.equal(p._delta, d) for p, d in zip(_procs(model), first))
    run(model, _at(inputs, 200))  # a new step: halved
    assert all(torch.allclose(p._delta, d / 2) for p, d in zip(_procs(model), first))


def test_before_any_dense_step_nothing_is_added():
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **dict(DELTA, reuse_delta=False))
    want = run(model, _at(inputs, 200))
    vidhash.enable_hash_attention(model, **DELTA)
    assert torch.equal(run(model, _at(inputs, 200)), want)
    assert all(p._delta is None for p in _procs(model))


@pytest.mark.parametrize("make, kw", [WAN, COG])
def test_models_with_text_tokens_and_flex_take_it(make, kw):
    """CogVideoX (video tokens after the text ones): the delta is the video tokens'; FlexAttention
    attending gives the same output as vidhash's kernels on the same blocks."""
    model, inputs = make(**kw)
    cfg = dict(DELTA, block_size=16, query_block_size=16, mass_query_stride=4)
    vidhash.enable_hash_attention(model, **cfg)
    run(model, _at(inputs, 800))
    # CogVideoX's dense call attends over text and video keys: the delta's dense part is computed instead
    assert all((p._full_qv[2] is None) == (make is COG.values[0]) for p in _procs(model))
    ours = run(model, _at(inputs, 200))
    assert all(p._delta is not None for p in _procs(model)) and torch.isfinite(ours).all()
    vidhash.enable_hash_attention(model, **dict(cfg, reuse_delta=False))
    run(model, _at(inputs, 800))
    assert rel_err(run(model, _at(inputs, 200)), ours) > 1e-5
    vidhash.enable_hash_attention(model, **dict(cfg, backend="flex"))
    run(model, _at(inputs, 800))
    assert rel_err(run(model, _at(inputs, 200)), ours) < 1e-5


@pytest.mark.parametrize("config, match", [
    (dict(SPARSE, reuse_delta=True), "give reuse_mass=True"),
    (dict(SPARSE, reuse_delta=True, dense_timestep=500), "give reuse_mass=True"),
    (dict(DELTA, mass_refresh=2), "mass_refresh"),
    (dict(DELTA, reuse_delta=1), "reuse_delta must be True or False"),
    (dict(DELTA, delta_half_life=0), "delta_half_life"),
    (dict(DELTA, delta_half_life=float("inf")), "delta_half_life"),
])
def test_bad_delta_options_raise(config, match):
    model, _ = tiny_wan()
    with pytest.raises(ValueError, match=match):
        vidhash.enable_hash_attention(model, **config)


@pytest.mark.gpu
def test_the_kept_dense_output_under_cuda_autocast():
    """A float32 tiny Wan under bf16 autocast on CUDA (q, k arrive float32 beside a bf16 v): the first
    sparse call on the dense step's own inputs returns the dense call's output within bf16 rounding."""
    model, inputs = tiny_wan()
    model = model.to("cuda")
    inputs = {k: v.to("cuda") if torch.is_tensor(v) else v for k, v in inputs.items()}
    vidhash.enable_hash_attention(model, **dict(DELTA, block_size=16, query_block_size=16, mass_query_stride=4))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        run(model, _at(inputs, 800))
        p = _procs(model)[0]
        q, v, dense = p._full_qv
        k = p._mass_qk[1]
        assert dense is not None and p._delta is None
        out = p._hash(q.to(v.dtype), k.to(v.dtype), v)
    assert p._delta.dtype == v.dtype
    assert rel_err(out, dense) < 1e-2 < rel_err(p._sparse(q.to(v.dtype), k.to(v.dtype), v, p._reused), dense)


@pytest.mark.gpu
def test_the_delta_on_the_gpu_kernels():
    """bf16 on CUDA (flash attention for the dense part, the Triton kernels for the sparse one): the
    first sparse call on the dense step's own inputs is dense attention within bf16 rounding."""
    model, inputs = tiny_wan()
    model = model.to("cuda", torch.bfloat16)
    vidhash.enable_hash_attention(model, **dict(DELTA, block_size=16, query_block_size=16, mass_query_stride=4))
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 2, 1024, 64, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
    p = _procs(model)[0]
    p._remember(q, k, v)
    out = p._hash(q, k, v)
    want = dense_attention(q.float(), k.float(), v.float())
    assert rel_err(out, want) < 1e-2 < rel_err(p._sparse(q, k, v, p._reused), want)


@pytest.mark.parametrize("config", [DELTA, dict(DELTA, reuse_delta=False, mass_refresh=1)], ids=["delta", "refresh"])
def test_a_next_clip_without_a_dense_step_drops_the_selection_and_the_delta(config):
    """A timestep above the last sparse call's, with no dense call between, is a new schedule: what
    was measured on the last clip's q, k, v (the dense step's, or with mass_refresh the last sparse
    call's copies) is not carried into it."""
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **dict(DELTA, reuse_delta=False, reuse_mass=False))
    want = run(model, _at(inputs, 300))  # the scorer's selection, nothing added
    vidhash.enable_hash_attention(model, **config)
    run(model, _at(inputs, 800))
    run(model, _at(inputs, 200))
    run(model, _at(inputs, 100))
    assert all(p._reused is not None and (p._delta is not None) == config["reuse_delta"] for p in _procs(model))
    got = run(model, _at(inputs, 300))  # up from 100, below the dense threshold: a next clip
    assert all(p._delta is None and p._reused is None for p in _procs(model))
    assert torch.equal(got, want)
    run(model, _at(inputs, 250))  # and down again within it: still nothing of the last clip
    assert all(p._delta is None for p in _procs(model))
