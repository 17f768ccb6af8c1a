"""The drop-in's dense warmup (issue 17): ``dense_layers`` (the first N self-attention modules run
diffusers' own attention), ``dense_timestep`` (every self-attention dense while the call's timestep is
>= it: a forward pre-hook and a Python-bool gate) and ``dense_timestep_for`` (a step count → threshold)."""
import copy
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

import vidhash
from vidhash.integrations.diffusers import dense_timestep_for, is_hash_attention_enabled, self_attention_modules

from diffusers_tiny import COG, MODELS, needs_compile, run, tiny_skyreels_v2, tiny_wan

SPARSE = dict(density=0.25, block_size=4, query_block_size=4)  # 48 video tokens: 12 key blocks, 3 kept per query block
WAN_MINI_SCHEDULER = Path(__file__).resolve().parents[2] / "models" / "wan-mini" / "scheduler"
LTX = MODELS[5]


def _with_timestep(inputs, t):
    batch = inputs["timestep"].shape[0]
    return {**inputs, "timestep": torch.tensor([t] * batch) if isinstance(t, (int, float)) else t}


def _pre_hooks(model) -> int:
    return len(model._forward_pre_hooks)


# --------------------------------------------------------------------------------------------
# dense_layers
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, kw", [MODELS[0], LTX, COG])
def test_all_layers_dense_is_stock_bitwise(make, kw):
    model, inputs = make(**kw)
    ref = run(model, inputs)
    vidhash.enable_hash_attention(model, **SPARSE)
    sparse = run(model, inputs)
    vidhash.enable_hash_attention(model, **SPARSE, dense_layers=len(self_attention_modules(model)))
    assert not torch.equal(sparse, ref) and torch.equal(run(model, inputs), ref)


def test_first_layer_dense_equals_that_layer_stock_and_the_rest_sparse():
    """dense_layers=1 equals the sparse model with blocks.0.attn1's processor put back by hand (and
    not the one with blocks.1.attn1's put back: the *first* module is the dense one)."""
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **SPARSE)
    sparse = run(model, inputs)
    vidhash.enable_hash_attention(model, **SPARSE, dense_layers=1)
    first_dense = run(model, inputs)
    procs = model.attn_processors
    assert procs["blocks.0.attn1.processor"].dense and not procs["blocks.1.attn1.processor"].dense
    by_hand = {}
    for layer in ("blocks.0.attn1", "blocks.1.attn1"):
        vidhash.enable_hash_attention(model, **SPARSE)
        model.set_attn_processor({**model.attn_processors, f"{layer}.processor": WanAttnProcessor()})
        by_hand[layer] = run(model, inputs)
        assert not is_hash_attention_enabled(model)
    assert torch.equal(first_dense, by_hand["blocks.0.attn1"])
    assert not torch.equal(first_dense, sparse) and not torch.equal(first_dense, by_hand["blocks.1.attn1"])


# --------------------------------------------------------------------------------------------
# dense_timestep
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, kw", [MODELS[0], LTX, COG])
def test_dense_timestep_switches_per_call(make, kw):
    """At or above the threshold: the stock model's output bit for bit; below: the sparse model's
    (the option off); the gate is set afresh on each call, in any order."""
    model, inputs = make(**kw)
    high, low = _with_timestep(inputs, 800), _with_timestep(inputs, 200)
    ref_high, ref_low = run(model, high), run(model, low)
    vidhash.enable_hash_attention(model, **SPARSE)
    sparse_high, sparse_low = run(model, high), run(model, low)
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500)
    assert torch.equal(run(model, high), ref_high)
    assert torch.equal(run(model, low), sparse_low) and not torch.equal(sparse_low, ref_low)
    assert torch.equal(run(model, high), ref_high)  # not stuck on the last call's setting
    assert not torch.equal(sparse_high, ref_high)


def test_threshold_is_inclusive_and_positional_timestep_is_read():
    model, inputs = tiny_wan()
    at = _with_timestep(inputs, 500)
    ref = run(model, at)
    vidhash.enable_hash_attention(model, **SPARSE)
    sparse = run(model, at)
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500.0)
    assert torch.equal(run(model, at), ref)  # timestep == threshold: dense
    with torch.no_grad():  # WanTransformer3DModel.forward(hidden_states, timestep, encoder_hidden_states, ...)
        positional = model(at["hidden_states"], at["timestep"], at["encoder_hidden_states"])[0]
    assert torch.equal(positional, ref)
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500.5)
    assert torch.equal(run(model, at), sparse)


def test_hook_reads_numbers_lists_and_no_timestep():
    from vidhash.integrations.diffusers import _GATE_ATTR, DenseGate, _timestep_hook

    model, _ = tiny_wan()
    gate = DenseGate()
    setattr(model, _GATE_ATTR, gate)
    hook = _timestep_hook(model, 500.0)
    for args, kwargs, dense in [((), {"timestep": 500}, True), ((), {"timestep": 499.9}, False),
                                ((None, [100, 700]), {}, True), ((None, torch.tensor([[100, 200]])), {}, False),
                                ((None,), {}, False), ((), {"timestep": torch.tensor(600.0)}, True)]:
        hook(model, args, kwargs)
        assert gate.dense is dense, (args, kwargs)


def test_batch_of_timesteps_uses_its_max():
    model, inputs = tiny_skyreels_v2(batch=2)
    mixed = _with_timestep(inputs, torch.tensor([100, 800]))
    ref = run(model, mixed)
    vidhash.enable_hash_attention(model, **SPARSE)
    sparse = run(model, mixed)
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500)
    assert torch.equal(run(model, mixed), ref) and not torch.equal(sparse, ref)


def test_hook_replaced_on_enable_and_removed_on_disable():
    model, inputs = tiny_wan()
    high = _with_timestep(inputs, 900)
    ref = run(model, high)
    vidhash.enable_hash_attention(model, **SPARSE)
    sparse = run(model, high)
    before = _pre_hooks(model)
    for threshold in (500, 600, 700):  # enabling again replaces the hook, never adds one
        vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=threshold)
        assert _pre_hooks(model) == before + 1
    assert torch.equal(run(model, high), ref)
    vidhash.enable_hash_attention(model, **SPARSE)  # re-configured without the option: no hook
    assert _pre_hooks(model) == before and torch.equal(run(model, high), sparse)
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500)
    vidhash.disable_hash_attention(model)
    assert _pre_hooks(model) == 0 and not hasattr(model, "_vidhash_timestep_hook")
    assert torch.equal(run(model, high), ref)  # the stock model
    vidhash.enable_hash_attention(model, **SPARSE)
    assert torch.equal(run(model, high), sparse)  # the old hook does not open the new processors' gate


def test_outside_swap_then_enable_drops_the_old_hook():
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500)
    model.set_attn_processor({**model.attn_processors, "blocks.0.attn1.processor": WanAttnProcessor()})
    vidhash.enable_hash_attention(model, **SPARSE)  # starts afresh
    assert _pre_hooks(model) == 0


def test_dense_layers_and_dense_timestep_together():
    model, inputs = tiny_wan()
    high, low = _with_timestep(inputs, 900), _with_timestep(inputs, 100)
    ref_high = run(model, high)
    vidhash.enable_hash_attention(model, **SPARSE, dense_layers=1)
    first_dense_low = run(model, low)
    vidhash.enable_hash_attention(model, **SPARSE, dense_layers=1, dense_timestep=500)
    assert torch.equal(run(model, high), ref_high) and torch.equal(run(model, low), first_dense_low)
    assert model._vidhash_config.dense_layers == 1 and model._vidhash_config.dense_timestep == 500.0


@needs_compile
def test_compiled_blocks_guard_on_the_gate():
    """compile_repeated_blocks(fullgraph=True), as `vidhash bench dropin --compile` runs: no graph
    break, and the compiled blocks follow the gate (dense above the threshold, sparse below) and
    dense_layers."""
    torch._dynamo.reset()
    model, inputs = tiny_wan()
    high, low = _with_timestep(inputs, 900), _with_timestep(inputs, 100)
    vidhash.enable_hash_attention(model, **SPARSE, dense_layers=1, dense_timestep=500)
    eager_high, eager_low = run(model, high), run(model, low)
    model.compile_repeated_blocks(fullgraph=True, backend="eager")
    try:
        for _ in range(2):
            assert torch.equal(run(model, high), eager_high) and torch.equal(run(model, low), eager_low)
    finally:
        torch._dynamo.reset()
    assert not torch.equal(eager_high, eager_low)


# --------------------------------------------------------------------------------------------
# dense_timestep_for
# --------------------------------------------------------------------------------------------
def test_dense_timestep_for_the_wan_mini_schedule():
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(WAN_MINI_SCHEDULER))
    scheduler.set_timesteps(30)
    timesteps = scheduler.timesteps
    assert dense_timestep_for(scheduler, 0) is None and vidhash.dense_timestep_for(timesteps, 0) is None
    for k in range(1, 31):
        threshold = dense_timestep_for(scheduler, k)
        assert int((timesteps >= threshold).sum()) == k and bool((timesteps[:k] >= threshold).all()), k
        assert vidhash.dense_timestep_for(timesteps.tolist(), k) == threshold


def test_dense_timestep_for_a_list():
    assert dense_timestep_for([999, 750, 500, 250], 2) == 625.0
    assert dense_timestep_for([999, 750, 500, 0], 4) == 0.0
    assert dense_timestep_for([1000, 500], 2) == 250.0


@pytest.mark.parametrize("timesteps, steps, match", [
    pytest.param([999, 750], 3, "dense_steps", id="too-many-steps"),
    pytest.param([999, 750], -1, "dense_steps", id="negative"),
    pytest.param([999, 750], 1.5, "dense_steps", id="float"),
    pytest.param([999, 999, 500], 1, "no threshold separates", id="tie"),
    pytest.param(torch.ones(2, 2), 1, "1-D", id="2-D"),
    pytest.param(object(), 1, "1-D", id="not-timesteps"),
])
def test_dense_timestep_for_errors(timesteps, steps, match):
    with pytest.raises(ValueError, match=match):
        dense_timestep_for(timesteps, steps)


# --------------------------------------------------------------------------------------------
# bad values
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, match", [
    pytest.param({"dense_layers": -1}, r"dense_layers must be an int in \[0, 2\]", id="layers-negative"),
    pytest.param({"dense_layers": 3}, r"dense_layers must be an int in \[0, 2\]", id="layers-too-many"),
    pytest.param({"dense_layers": 1.0}, "dense_layers", id="layers-float"),
    pytest.param({"dense_layers": True}, "dense_layers", id="layers-bool"),
    pytest.param({"dense_timestep": -1}, "dense_timestep must be None or a finite number >= 0", id="timestep-negative"),
    pytest.param({"dense_timestep": float("nan")}, "dense_timestep", id="timestep-nan"),
    pytest.param({"dense_timestep": float("inf")}, "dense_timestep", id="timestep-inf"),
    pytest.param({"dense_timestep": "high"}, "dense_timestep", id="timestep-str"),
])
def test_bad_dense_options_raise_naming_them(config, match):
    model, inputs = tiny_wan()
    before = dict(model.attn_processors)
    with pytest.raises(ValueError, match=match):
        vidhash.enable_hash_attention(model, **SPARSE, **config)
    assert not is_hash_attention_enabled(model) and _pre_hooks(model) == 0
    assert all(model.attn_processors[k] is v for k, v in before.items())


def test_deepcopy_gets_its_own_gate():
    """A deepcopy of a transformer with dense_timestep runs dense at the dense timesteps (its pre-hook
    opens the copy's gate, the one its processors read — before, it opened the original's and the copy
    ran sparse); disabling the copy leaves the original's."""
    model, inputs = tiny_wan()
    stock_hi, stock_lo = run(model, _with_timestep(inputs, 900)), run(model, _with_timestep(inputs, 100))
    vidhash.enable_hash_attention(model, **SPARSE, dense_timestep=500)
    sparse_lo = run(model, _with_timestep(inputs, 100))
    assert not torch.equal(sparse_lo, stock_lo)
    twin = copy.deepcopy(model)
    gate = twin._vidhash_dense_gate
    assert gate is not model._vidhash_dense_gate
    hashed = [p for p in twin.attn_processors.values() if hasattr(p, "gate")]
    assert len(hashed) == len(self_attention_modules(twin)) and all(p.gate is gate for p in hashed)
    assert torch.equal(run(twin, _with_timestep(inputs, 900)), stock_hi)
    assert torch.equal(run(twin, _with_timestep(inputs, 100)), sparse_lo)
    vidhash.disable_hash_attention(twin)
    assert torch.equal(run(twin, _with_timestep(inputs, 100)), stock_lo) and _pre_hooks(twin) == 0
    assert not hasattr(twin, "_vidhash_dense_gate") and model._vidhash_dense_gate is not None
    assert _pre_hooks(model) == 1 and torch.equal(run(model, _with_timestep(inputs, 900)), stock_hi)
    assert torch.equal(run(model, _with_timestep(inputs, 100)), sparse_lo)
    vidhash.enable_hash_attention(model, **SPARSE)  # re-enabled without dense_timestep: no gate, no hook
    assert not hasattr(model, "_vidhash_dense_gate") and _pre_hooks(model) == 0
