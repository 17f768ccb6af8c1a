"""The drop-in's ``reuse_mass`` (issue 17): after the dense warmup steps, each self-attention selects
from the exact block mass of the last dense step (``block_mass`` of that step's q, k, every
``mass_query_stride``-th query; ``select_from_mass``) instead of its scorer — measured once per
layer, at the first sparse call, and reused until the next dense step."""
import pytest
import torch

import vidhash
import vidhash.integrations.diffusers as D
from vidhash.attention import block_mean_remainder, block_sparse_attention, hash_attention, merge_attention
from vidhash.selection import block_mass, oracle_recall, select_from_mass, selection_mass

from diffusers_tiny import COG, MODELS, needs_compile, run, tiny_wan

SPARSE = dict(density=0.25, block_size=4, query_block_size=4)  # 48 video tokens: 12 key blocks, 3 kept per query block


def _at(inputs, t):
    return {**inputs, "timestep": torch.tensor([t] * inputs["timestep"].shape[0])}


class _Spy:
    """Wraps the drop-in's hash_attention: the selection each call was given, by call order."""

    def __init__(self, monkeypatch):
        self.selections = []
        real = D.hash_attention

        def spy(*args, selection=None, **kwargs):
            self.selections.append(selection)
            return real(*args, selection=selection, **kwargs)

        monkeypatch.setattr(D, "hash_attention", spy)


def _recorded(model):
    """{module name: (q, k)} of the next call, as the processors see them ((b, h, n, d))."""
    seen = {}
    for name, proc in ((n, p) for n, p in model.attn_processors.items() if isinstance(p, D._HashAttnProcessor)):
        proc.recorder = lambda layer, q, k: seen.__setitem__(layer, (q.detach().clone(), k.detach().clone()))
    return seen


def _stop_recording(model):
    for proc in model.attn_processors.values():
        if isinstance(proc, D._HashAttnProcessor):
            proc.recorder = None


@pytest.mark.parametrize("stride", [1, 2])
def test_sparse_steps_attend_to_the_last_dense_steps_mass(stride, monkeypatch):
    """The sparse call attends to select_from_mass(block_mass(q, k of the *last* dense call)) in
    every layer (an earlier dense call's mass is replaced); the dense calls stay the stock model's."""
    model, inputs = tiny_wan()
    high, higher, low = _at(inputs, 800), _at(inputs, 900), _at(inputs, 200)
    ref_high = run(model, high)
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500, reuse_mass=True, mass_query_stride=stride)
    spy = _Spy(monkeypatch)
    run(model, higher)
    seen = _recorded(model)
    assert torch.equal(run(model, high), ref_high)  # dense calls: the stock attention, bit for bit
    _stop_recording(model)
    assert spy.selections == []
    run(model, low)
    assert len(spy.selections) == 2 and all(s is not None for s in spy.selections)
    for sel, (q, k) in zip(spy.selections, seen.values()):
        mass, _ = block_mass(q[:, :, ::stride], k, block_size=4, query_block_size=4 // stride)
        want = select_from_mass(mass, q.shape[-2], k.shape[-2], density=0.25, block_size=4, query_block_size=4)
        assert torch.equal(sel.indices, want.indices)


@pytest.mark.parametrize("refresh", [1, 2])
def test_mass_refresh_measures_every_n_sparse_calls_from_their_own_queries(refresh, monkeypatch):
    """mass_refresh=N: the first sparse call selects from the dense call's mass; every N-th sparse
    call keeps its own q, k (every mass_query_stride-th query), and the calls after it select from
    their mass (measured in the pre-hook before the next call); the calls between keep the last
    selection."""
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500, reuse_mass=True, mass_query_stride=2,
                                  mass_refresh=refresh)
    spy = _Spy(monkeypatch)
    measured_from = []
    for t in (800, 300, 200, 100):
        seen = _recorded(model)
        run(model, _at(inputs, t))
        measured_from.append(seen)
    _stop_recording(model)
    sources = {1: [0, 1, 2], 2: [0, 0, 2]}[refresh]  # which call (800 dense, 300, 200, 100) gave each sparse call its mass
    assert len(spy.selections) == 6
    for call, source in enumerate(sources):
        for layer, (name, (q, k)) in enumerate(measured_from[source].items()):
            mass, _ = block_mass(q[:, :, ::2], k, block_size=4, query_block_size=2)
            want = select_from_mass(mass, q.shape[-2], k.shape[-2], density=0.25, block_size=4, query_block_size=4)
            assert torch.equal(spy.selections[2 * call + layer].indices, want.indices), (call, name)


def test_reused_output_is_hash_attention_on_that_selection():
    """Same model, same inputs: the sparse call with reuse_mass equals the sparse call without it
    when each layer's selection is handed over by hand (the drop-in adds nothing else)."""
    model, inputs = tiny_wan()
    high, low = _at(inputs, 800), _at(inputs, 200)
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500, reuse_mass=True)
    run(model, high)
    reused = run(model, low)
    sels = {name: p._reused for name, p in model.attn_processors.items() if isinstance(p, D._HashAttnProcessor)}
    assert all(s is not None for s in sels.values())
    vidhash.enable_hash_attention(model, **SPARSE)
    plain = run(model, low)
    for name, proc in model.attn_processors.items():
        if isinstance(proc, D._HashAttnProcessor):
            proc._hash = (lambda p, s: lambda q, k, v, return_lse=False: hash_attention(
                q, k, v, selection=s, return_lse=return_lse, **p._kwargs))(proc, sels[name])
    assert torch.equal(run(model, low), reused) and not torch.equal(reused, plain)


def test_mass_measured_once_then_kept_until_the_next_dense_step(monkeypatch):
    model, inputs = tiny_wan()
    high, low = _at(inputs, 800), _at(inputs, 200)
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500, reuse_mass=True)
    calls = []
    real = block_mass
    monkeypatch.setattr("vidhash.selection.oracle.block_mass", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    procs = [p for p in model.attn_processors.values() if isinstance(p, D._HashAttnProcessor)]
    run(model, low)  # no dense step yet: the scorer selects
    assert calls == [] and all(p._reused is None for p in procs)
    run(model, high)
    assert all(p._mass_qk is not None for p in procs)
    first = run(model, low)
    assert len(calls) == 2 and all(p._mass_qk is None and p._reused is not None for p in procs)  # inputs freed
    assert torch.equal(run(model, low), first) and len(calls) == 2  # reused, not re-measured
    run(model, high)  # the next clip's dense step drops the old selection
    assert all(p._reused is None and p._mass_qk is not None for p in procs)


def test_another_shape_falls_back_to_the_scorer():
    """A sparse call of another token count than the dense step's: the scorer selects (no stale
    selection of the wrong size)."""
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500, reuse_mass=True)
    run(model, _at(inputs, 800))
    small = {**inputs, "hidden_states": inputs["hidden_states"][:, :, :2]}
    vidhash.enable_hash_attention(model, **SPARSE)
    want = run(model, _at(small, 200))
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500, reuse_mass=True)
    run(model, _at(inputs, 800))
    assert torch.equal(run(model, _at(small, 200)), want)


@pytest.mark.parametrize("make, kw", [MODELS[0], COG])
def test_other_models_reuse_too(make, kw):
    """Wan and CogVideoX (whose video tokens follow the text ones): the sparse call after a dense
    one differs from the scorer's and every layer holds a selection of the video tokens."""
    model, inputs = make(**kw)
    high, low = _at(inputs, 800), _at(inputs, 200)
    vidhash.enable_hash_attention(model, **SPARSE)
    plain = run(model, low)
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500, reuse_mass=True)
    run(model, high)
    out = run(model, low)
    procs = [p for p in model.attn_processors.values() if isinstance(p, D._HashAttnProcessor)]
    assert all(p._reused is not None for p in procs)
    assert out.shape == plain.shape and torch.isfinite(out).all()


def test_processors_replaced_from_outside_are_skipped_and_served_again_when_put_back():
    """An outside ``set_attn_processor`` on one module: its hash processor is skipped by the gate
    from the next call, its copies released (before, its copies and selection stayed alive, its mass
    measured for no one); put back (a save / restore of processors), it is served again (before the
    fix, a processor dropped from the gate never measured a mass again)."""
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500, reuse_mass=True)
    run(model, _at(inputs, 800))
    gate = model.blocks[0].attn1.processor.gate
    gone, other = model.blocks[0].attn1.processor, model.blocks[1].attn1.processor
    assert gate.active() == [gone, other]
    stock = model._vidhash_original_processors["blocks.0.attn1"]  # diffusers' own Wan processor
    model.blocks[0].attn1.set_processor(stock)
    assert not gone.installed() and gone._mass_qk is not None
    run(model, _at(inputs, 200))
    assert gate.active() == [other] and gone._mass_qk is None and gone._reused is None  # released, not measured
    assert other._reused is not None
    model.blocks[0].attn1.set_processor(gone)  # put back
    run(model, _at(inputs, 800))  # dense: keeps copies in both layers
    assert gate.active() == [gone, other] and gone._mass_qk is not None
    run(model, _at(inputs, 200))  # sparse: both select from the mass again
    assert gone._reused is not None and gone._since == other._since == 1


def test_dense_layers_keep_no_mass():
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500, dense_layers=1, reuse_mass=True)
    run(model, _at(inputs, 800))
    procs = model.attn_processors
    assert procs["blocks.0.attn1.processor"]._mass_qk is None and procs["blocks.1.attn1.processor"]._mass_qk is not None


@pytest.mark.parametrize("config, match", [
    (dict(reuse_mass=True), "give dense_timestep"),
    (dict(reuse_mass=1, dense_timestep=500), "reuse_mass must be True or False"),
    (dict(reuse_mass=True, dense_timestep=500, mass_query_stride=3), "dividing the query block size 4"),
    (dict(reuse_mass=True, dense_timestep=500, mass_query_stride=0), "mass_query_stride"),
    (dict(reuse_mass=True, dense_timestep=500, mass_refresh=-1), "mass_refresh"),
    (dict(reuse_mass=True, dense_timestep=500, mass_refresh=True), "mass_refresh"),
])
def test_bad_reuse_options_raise(config, match):
    model, _ = tiny_wan()
    with pytest.raises(ValueError, match=match):
        vidhash.enable_hash_attention(model, **SPARSE, **config)


# --------------------------------------------------------------------------------------------
# the library pieces: select_from_mass, block_mass(query_stride), hash_attention(selection=)
# --------------------------------------------------------------------------------------------
def test_select_from_own_mass_is_the_oracle():
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, 300, 16, generator=g) for _ in range(2))
    kw = dict(block_size=16, query_block_size=32)
    mass, _ = block_mass(q, k, **kw)
    sel = select_from_mass(mass, 300, 300, density=0.25, **kw)
    best = oracle_recall(q, k, sel.kept, **kw, local_blocks=1, sink_blocks=1)
    assert selection_mass(q, k, sel) == pytest.approx(best, abs=1e-6)
    assert (sel.indices[..., 0] == 0).all()  # the sink block, forced
    with pytest.raises(ValueError, match="mass must be"):
        select_from_mass(mass[:, :, :-1], 300, 300, density=0.25, **kw)


def test_block_mass_query_stride_is_the_strided_queries():
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(2, 2, 200, 8, generator=g) for _ in range(2))  # 200: a short last query block
    a, ca = block_mass(q, k, block_size=16, query_block_size=32, query_stride=4)
    b, cb = block_mass(q[:, :, ::4], k, block_size=16, query_block_size=8)
    assert torch.equal(a, b) and torch.equal(ca, cb)
    c, cc = block_mass(q, k, block_size=16, query_block_size=32, query_stride=4, chunk_elems=1)  # a block per chunk
    assert torch.allclose(c, a, atol=1e-6) and torch.equal(cc, ca)
    with pytest.raises(ValueError, match="query_stride"):
        block_mass(q, k, block_size=16, query_block_size=32, query_stride=3)


def test_hash_attention_attends_to_a_given_selection():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 128, 16, generator=g) for _ in range(3))
    mass, _ = block_mass(q, k, block_size=16, query_block_size=16)
    sel = select_from_mass(mass, 128, 128, density=0.25, block_size=16, query_block_size=16)
    assert torch.equal(hash_attention(q, k, v, selection=sel, scorer="simhash"), block_sparse_attention(q, k, v, sel))
    out, _ = merge_attention(*block_sparse_attention(q, k, v, sel, return_lse=True), *block_mean_remainder(q, k, v, sel))
    assert torch.allclose(hash_attention(q, k, v, selection=sel, remainder="mean"), out, atol=1e-6)
    with pytest.raises(ValueError, match="selection was made for"):
        hash_attention(q[:, :, :64], k[:, :, :64], v[:, :, :64], selection=sel)


@needs_compile
@pytest.mark.parametrize("reuse, refresh, delta", [(False, 0, False), (True, 0, False), (True, 2, False), (True, 0, True)])
def test_compiled_model_runs_each_step_as_one_graph(reuse, refresh, delta):
    """Under torch.compile(model) every call is one graph, dense or sparse, with or without
    reuse_mass (and mass_refresh): the dense_timestep gate and reuse_mass's mass pass run in the
    pre-hook, an eager island before the graph; a call that keeps its q, k is a second variant; the
    reuse_delta is measured and decayed (in place) in the pre-hook and added inside the graph. (Before 2026-12-05 a torch.compiler.disable inside the attention made
    dynamo give up on the transformer's forward: 16-18 graphs a step — +2 ms a sparse step measured
    on wan-mini in CUDA graphs.) The compiled clip equals the eager one."""
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500, reuse_mass=reuse, mass_refresh=refresh,
                                  reuse_delta=delta, delta_half_life=2.0)
    steps = (900, 700, 300, 200, 100)
    want = [run(model, _at(inputs, t)) for t in steps]
    calls = [0]

    def backend(gm, example_inputs):
        def counted(*args):
            calls[0] += 1
            return gm.forward(*args)
        return counted

    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, backend=backend)
        for clip in range(2):
            per_step = []
            for t, ref in zip(steps, want):
                calls[0] = 0
                with torch.no_grad():
                    out = compiled(**_at(inputs, t)).sample
                per_step.append(calls[0])
                assert torch.allclose(out, ref, atol=1e-5), (clip, t)
            assert per_step == [1] * len(steps), (clip, per_step)
    finally:
        torch._dynamo.reset()


@needs_compile
def test_reuse_mass_compiles_with_repeated_blocks_fullgraph():
    """compile_repeated_blocks(fullgraph=True) with reuse_mass: the dense calls keep their copies
    inside the block's graph and the mass pass runs in the pre-hook, so no block breaks (it raised
    before 2026-12-05); the clips equal the eager ones, twice over (the second clip starts afresh)."""
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500, reuse_mass=True)
    steps = (900, 700, 300, 200, 100)
    want = [run(model, _at(inputs, t)) for t in steps]
    torch._dynamo.reset()
    try:
        model.compile_repeated_blocks(fullgraph=True, backend="eager")
        for clip in range(2):
            for t, ref in zip(steps, want):
                assert torch.allclose(run(model, _at(inputs, t)), ref, atol=1e-5), (clip, t)
    finally:
        torch._dynamo.reset()


def test_mass_pass_runs_without_the_callers_autocast(monkeypatch):
    """The mass pass runs in the pre-hook, under whatever autocast the caller holds: it turns it off
    (as the attention call does), so the mass is float32 sums of float32 products."""
    seen = []
    real = block_mass

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        mass, counts = real(*args, **kwargs)
        seen.append(mass.dtype)
        return mass, counts

    import vidhash.selection.oracle as oracle

    monkeypatch.setattr(oracle, "block_mass", spy)
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500, reuse_mass=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run(model, _at(inputs, 800))
        run(model, _at(inputs, 300))
    assert seen == [False, torch.float32] * 2  # two layers, one mass pass each


def test_a_layer_the_last_dense_call_skips_keeps_its_copies():
    """Skip-layer guidance calls the transformer a third time per step with some blocks skipped: the
    layers that call skips keep the copies of the call before, so every layer still reuses a mass."""
    from diffusers.hooks import HookRegistry, LayerSkipConfig, apply_layer_skip

    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500, reuse_mass=True)

    def skipping(x):
        apply_layer_skip(model, LayerSkipConfig(indices=[1], fqn="blocks", skip_attention=True, skip_ff=True))
        try:
            return run(model, x)
        finally:
            HookRegistry.check_if_exists_or_initialize(model.blocks[1]).remove_hook("layer_skip_hook")

    for t in (900, 700, 300, 200):
        x = _at(inputs, t)
        run(model, x)
        run(model, x)
        skipping(x)
        if t < 500:
            held = {name: p._reused is not None for name, p in model.attn_processors.items()
                    if isinstance(p, D._HashAttnProcessor)}
            assert held and all(held.values()), (t, held)
