"""The drop-in as part of a diffusers model: torch.compile, attention backends, the enabled state
after outside swaps, and the hashers as submodules (moved, cast, saved beside save_pretrained)."""
import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.attention_dispatch import _AttentionBackendRegistry, attention_backend
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

import vidhash
from vidhash import LearnedHash, SimHash
from vidhash.integrations.diffusers import (
    HASHER_ATTR,
    hashers_of,
    is_hash_attention_enabled,
    save_hashers,
    self_attention_modules,
)
from vidhash.integrations.hashers import FILE_NAME, load_hashers

from diffusers_tiny import TOL, needs_compile, rel_err, run, tiny_cogvideox, tiny_ltx, tiny_wan


@pytest.fixture(autouse=True)
def _restore_active_backend():
    """set_attention_backend also sets diffusers' process-wide active backend: put it back."""
    active = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(active)


# --------------------------------------------------------------------------------------------
# torch.compile: one graph, no host syncs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, density", [
    pytest.param(tiny_wan, 1.0, id="wan-density-1"),
    pytest.param(tiny_wan, 0.25, id="wan-sparse"),
    pytest.param(tiny_cogvideox, 0.25, id="cogvideox-sparse"),
    pytest.param(tiny_wan, "pooled", id="wan-sparse-pooled-scorer"),
])
@needs_compile
def test_compile_fullgraph_cpu(make, density):
    """fullgraph=True fails on any graph break (a Tensor.item(), a module built mid-graph): the
    drop-in's path traces as one graph, and the compiled model gives the eager outputs."""
    torch._dynamo.reset()
    model, inputs = make(layers=1)  # tracing time grows with the layers; one shows the path
    scorer = density if isinstance(density, str) else "simhash"
    density = 0.25 if isinstance(density, str) else density
    vidhash.enable_hash_attention(model, density=density, block_size=4, query_block_size=4, scorer=scorer)
    eager = run(model, inputs)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        out = compiled(**inputs)[0]
    assert torch.equal(out, eager)


def _wan_head_dim_64(device, dtype):
    """One Wan layer of head_dim 64 (a size the Triton kernels take), 192 video tokens: 12 blocks of 16
    (tests/kernels/test_block_select_compile.py runs the same path on CPU under the interpreter)."""
    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
    ).eval().to(device, dtype)
    inputs = dict(hidden_states=torch.randn(1, 4, 3, 16, 16), timestep=torch.tensor([500]),
                  encoder_hidden_states=torch.randn(1, 6, 16))
    return model, {k: v.to(device, dtype) if torch.is_floating_point(v) else v.to(device) for k, v in inputs.items()}


@pytest.mark.gpu
@needs_compile
@pytest.mark.parametrize("compiler", ["eager", "inductor"])
@pytest.mark.parametrize("density, scorer", [(1.0, "pooled"), (0.25, "pooled"), (0.25, "simhash")])
def test_compile_fullgraph_cuda(density, scorer, compiler):
    """The same on CUDA in bf16, where "auto" runs the Triton kernels (simhash: the signature kernel
    too): one graph; the eager outputs bitwise with the eager compiler, to bf16 tolerance with
    inductor (which may fuse the surrounding ops)."""
    torch._dynamo.reset()
    model, inputs = _wan_head_dim_64("cuda", torch.bfloat16)
    vidhash.enable_hash_attention(model, density=density, block_size=16, query_block_size=16, scorer=scorer)
    eager = run(model, inputs)
    compiled = torch.compile(model, fullgraph=True, backend=compiler)
    with torch.no_grad():
        out = compiled(**inputs)[0]
    if compiler == "eager":
        assert torch.equal(out, eager)
    assert rel_err(out, eager) < TOL[torch.bfloat16]


def test_forced_block_budget_from_sizes_equals_the_masks():
    """max_forced_blocks (host integers, what select_blocks now uses) against the forced masks it replaced."""
    import itertools

    from vidhash.kernels.block_select.naive import forced_and_allowed, max_forced_blocks

    for nq, nk, bq, bk, local, sink, causal in itertools.product(
            [1, 5, 33, 64], [1, 7, 40, 64], [1, 5, 16], [1, 3, 16], [0, 1, 3], [0, 1, 5], [False, True]):
        forced, _ = forced_and_allowed(torch.arange(-(-nq // bq)), nq, nk, bq, bk, local, sink, causal)
        assert max_forced_blocks(nq, nk, bq, bk, local, sink, causal) == int(forced.sum(-1).max())


# --------------------------------------------------------------------------------------------
# attention backends: honoured at density 1, refused below
# --------------------------------------------------------------------------------------------
def test_backend_honoured_at_density_one(monkeypatch):
    model, inputs = tiny_wan()
    stock, _ = tiny_wan()
    stock.load_state_dict(model.state_dict())
    vidhash.enable_hash_attention(model, density=1.0)
    model.set_attention_backend("_native_math")
    stock.set_attention_backend("_native_math")
    assert all(a.processor._attention_backend.value == "_native_math" for a in self_attention_modules(model).values())
    seen = []
    import diffusers.models.attention_dispatch as dispatch

    real = dispatch.dispatch_attention_fn
    monkeypatch.setattr(dispatch, "dispatch_attention_fn", lambda *a, **kw: seen.append(kw["backend"]) or real(*a, **kw))
    assert torch.equal(run(model, inputs), run(stock, inputs))
    assert seen and all(getattr(b, "value", b) == "_native_math" for b in seen)
    model.reset_attention_backend()
    stock.reset_attention_backend()
    assert all(a.processor._attention_backend is None for a in self_attention_modules(model).values())


def test_backend_refused_below_density_one():
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4)
    model.set_attention_backend("native")  # torch's own choice: accepted
    with pytest.raises(ValueError, match="'_native_math' cannot run hash attention"):
        model.set_attention_backend("_native_math")
    model.reset_attention_backend()  # the context manager reaches processors without a backend of their own
    with attention_backend("_native_math"), pytest.raises(ValueError, match="cannot run hash attention"):
        run(model, inputs)
    assert torch.isfinite(run(model, inputs)).all()


def test_backend_set_before_enabling_is_carried_or_refused():
    model, _ = tiny_wan()
    model.set_attention_backend("_native_math")
    with pytest.raises(ValueError, match="'_native_math' cannot run hash attention"):
        vidhash.enable_hash_attention(model, density=0.5)
    assert not is_hash_attention_enabled(model)
    vidhash.enable_hash_attention(model, density=1.0)
    assert model.blocks[0].attn1.processor._attention_backend.value == "_native_math"
    model.reset_attention_backend()


# --------------------------------------------------------------------------------------------
# enabled state follows the processors
# --------------------------------------------------------------------------------------------
def test_enabled_state_after_outside_swap():
    model, inputs = tiny_wan()
    ref = run(model, inputs)
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4)
    assert is_hash_attention_enabled(model)
    model.set_attn_processor(WanAttnProcessor())  # every processor, from outside
    assert not is_hash_attention_enabled(model)
    assert torch.equal(run(model, inputs), ref)
    vidhash.enable_hash_attention(model, density=1.0)  # starts afresh from the processors in place
    assert is_hash_attention_enabled(model)
    vidhash.disable_hash_attention(model)
    assert not is_hash_attention_enabled(model)
    assert all(type(p) is WanAttnProcessor for p in model.attn_processors.values())


def test_partial_outside_swap_is_not_enabled_and_disable_cleans_up():
    model, _ = tiny_wan()
    originals = {n: a.processor for n, a in self_attention_modules(model).items()}
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4)
    outside = WanAttnProcessor()
    model.blocks[1].attn1.set_processor(outside)
    assert not is_hash_attention_enabled(model)
    vidhash.disable_hash_attention(model)
    assert model.blocks[0].attn1.processor is originals["blocks.0.attn1"]
    assert model.blocks[1].attn1.processor is outside
    assert not any(HASHER_ATTR in name for name, _ in model.named_modules())


# --------------------------------------------------------------------------------------------
# hashers: submodules, moved and cast with the model, out of state_dict, in their own file
# --------------------------------------------------------------------------------------------
def test_hashers_are_submodules_cast_with_the_model():
    model, inputs = tiny_wan()
    learned = {name: LearnedHash(12, 16, heads=2, hidden=8, seed=i) for i, name in enumerate(self_attention_modules(model))}
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, hasher=learned)
    assert model.blocks[1].attn1.get_submodule(HASHER_ATTR) is learned["blocks.1.attn1"]
    model.to(torch.float64)
    assert learned["blocks.0.attn1"].q_mlp.weights[0].dtype == torch.float64
    inputs64 = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    assert run(model, inputs64).dtype == torch.float64
    model.to(torch.float32)
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, scorer="simhash")  # default SimHash, shared
    assert isinstance(model.blocks[0].attn1.get_submodule(HASHER_ATTR), SimHash)
    assert model.blocks[0].attn1.get_submodule(HASHER_ATTR) is model.blocks[1].attn1.get_submodule(HASHER_ATTR)
    vidhash.disable_hash_attention(model)
    assert not any(HASHER_ATTR in name for name, _ in model.named_modules())


def test_default_hasher_equals_library_default():
    """The SimHash built at enable time is hash_attention's default (32 bits, seed 0)."""
    model, inputs = tiny_ltx()
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, scorer="simhash")
    built = run(model, inputs)
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, n_bits=32, seed=0)
    assert torch.equal(run(model, inputs), built)


def test_state_dict_stays_stock_and_loads_strictly():
    model, _ = tiny_wan()
    stock_keys = set(model.state_dict())
    vidhash.enable_hash_attention(model, hasher={n: LearnedHash(12, 16, heads=2, hidden=8) for n in self_attention_modules(model)})
    assert set(model.state_dict()) == stock_keys
    model.load_state_dict(WanTransformer3DModel.from_config(model.config).state_dict(), strict=True)
    assert is_hash_attention_enabled(model)


def test_save_pretrained_and_hashers_file_round_trip(tmp_path):
    model, inputs = tiny_wan()
    learned = {name: LearnedHash(12, 16, heads=2, hidden=8, seed=i) for i, name in enumerate(self_attention_modules(model))}
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, hasher=learned)
    model.save_pretrained(tmp_path)  # a stock checkpoint: no hasher keys
    assert save_hashers(model, tmp_path) == str(tmp_path / FILE_NAME)
    loaded = WanTransformer3DModel.from_pretrained(tmp_path).eval()
    assert not is_hash_attention_enabled(loaded)
    # (diffusers' own save/load round trip is not bitwise: compare on the loaded model)
    vidhash.enable_hash_attention(loaded, density=0.25, block_size=4, query_block_size=4, hasher=learned)
    expected = run(loaded, inputs)
    vidhash.enable_hash_attention(loaded, density=0.25, block_size=4, query_block_size=4, hashers=tmp_path)
    restored = hashers_of(loaded)
    assert all(restored[n] is not learned[n] and isinstance(restored[n], LearnedHash) for n in learned)
    assert torch.equal(run(loaded, inputs), expected)
    assert rel_err(expected, run(model, inputs)) < TOL[torch.float32]
    # a SimHash shared by every layer round-trips as well
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, n_bits=16, seed=5)
    save_hashers(model, tmp_path / "simhash.safetensors")
    back = load_hashers(tmp_path / "simhash.safetensors")
    assert all(torch.equal(h.planes, model._vidhash_config.hasher.planes) for h in back.values())


@pytest.mark.parametrize(
    "hashers, error, match",
    [
        pytest.param("no/such/folder", FileNotFoundError, "vidhash_hashers.safetensors", id="missing"),
        pytest.param(3, ValueError, "hashers must be a path", id="not-a-path"),
    ],
)
def test_hashers_path_errors(hashers, error, match):
    model, _ = tiny_wan()
    with pytest.raises(error, match=match):
        vidhash.enable_hash_attention(model, hashers=hashers)
    assert not is_hash_attention_enabled(model)


def test_hashers_file_of_another_model_refused(tmp_path):
    cog, _ = tiny_cogvideox()
    vidhash.enable_hash_attention(cog, n_bits=16)
    save_hashers(cog, tmp_path)
    model, _ = tiny_wan()
    with pytest.raises(ValueError, match="transformer_blocks.0.attn1"):
        vidhash.enable_hash_attention(model, hashers=tmp_path)
    with pytest.raises(ValueError, match="not both|not hasher and hashers"):
        vidhash.enable_hash_attention(model, hashers=tmp_path, hasher=SimHash(12))


def test_sparse_outputs_close_to_dense_with_all_blocks():
    model, inputs = tiny_wan()
    ref = run(model, inputs)
    vidhash.enable_hash_attention(model, density=0.99, block_size=4, query_block_size=4, n_bits=16)
    assert rel_err(run(model, inputs), ref) < TOL[torch.float32]


# --------------------------------------------------------------------------------------------
# scorer=: passed through to hash_attention; learned scorers are submodules as hashers are
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scorer", ["simhash", "pooled", "moments", "subgrid", "prefilter"])
def test_scorer_passed_through(scorer, monkeypatch):
    import vidhash.integrations.diffusers as dropin

    model, inputs = tiny_wan()
    ref = run(model, inputs)
    vidhash.enable_hash_attention(model, density=0.99, block_size=4, query_block_size=4, scorer=scorer)  # every block kept
    assert rel_err(run(model, inputs), ref) < TOL[torch.float32]
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, scorer=scorer)
    seen = []
    real = dropin.hash_attention
    monkeypatch.setattr(dropin, "hash_attention", lambda *a, **kw: seen.append((kw["scorer"], kw["hasher"])) or real(*a, **kw))
    out = run(model, inputs)
    assert torch.isfinite(out).all() and rel_err(out, ref) > 1e-4
    assert [s for s, _ in seen] == [scorer] * 2
    reads = scorer in ("simhash", "prefilter")
    assert all(isinstance(h, SimHash) if reads else h is None for _, h in seen)
    assert any(HASHER_ATTR in n for n, _ in model.named_modules()) == reads


def test_learned_scorer_is_a_submodule():
    from vidhash.selection.learned import LearnedBlockScorer

    model, inputs = tiny_wan()
    stock_keys = set(model.state_dict())
    scorers = {name: LearnedBlockScorer(12, heads=2, seed=i) for i, name in enumerate(self_attention_modules(model))}
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, scorer=scorers)
    assert model.blocks[1].attn1.get_submodule("vidhash_scorer") is scorers["blocks.1.attn1"]
    assert set(model.state_dict()) == stock_keys
    assert torch.isfinite(run(model, inputs)).all()
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in scorers["blocks.0.attn1"].parameters())
    model.to(torch.float32)
    vidhash.disable_hash_attention(model)
    assert not any("vidhash" in n for n, _ in model.named_modules())


@pytest.mark.parametrize("config, match", [
    pytest.param({"scorer": "hamming"}, "scorer must be one of", id="unknown-scorer"),
    pytest.param({"scorer": "pooled", "n_bits": 16}, "read by scorer='simhash' or 'prefilter' only", id="pooled-with-bits"),
    pytest.param({"scorer": torch.nn.Linear(2, 2)}, "learned block scorer", id="not-a-scorer"),
    pytest.param({"scorer": "subgrid", "block_size": 6, "query_block_size": 6}, "query_block_size must be a multiple of 4", id="subgrid-of-6"),
])
def test_bad_scorer_raises(config, match):
    model, _ = tiny_wan()
    with pytest.raises(ValueError, match=match):
        vidhash.enable_hash_attention(model, **config)
    assert not is_hash_attention_enabled(model)


def test_learned_scorer_of_other_heads_refused():
    from vidhash.selection.learned import LearnedBlockScorer

    model, _ = tiny_wan()
    with pytest.raises(ValueError, match="3 heads of head_dim 12"):
        vidhash.enable_hash_attention(model, scorer=LearnedBlockScorer(12, heads=3))
