"""The diffusers drop-in on tiny random configs of diffusers' own video transformer classes."""
import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel, MochiTransformer3DModel
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0, FusedCogVideoXAttnProcessor2_0
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

import vidhash
from vidhash import SimHash
from vidhash.integrations.diffusers import (
    REFUSED_CLASSES,
    SUPPORTED_CLASSES,
    CogVideoXHashAttnProcessor,
    DropInConfig,
    WanHashAttnProcessor,
    is_hash_attention_enabled,
    self_attention_modules,
)

from diffusers_tiny import COG, COG_ROPE, MODELS, TOL, WAN, WAN_I2V, cast, rel_err, run, tiny_cogvideox, tiny_wan


# --------------------------------------------------------------------------------------------
# exactness at density 1: diffusers' own attention call, bit for bit
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, kw", MODELS)
def test_density_one_is_stock_bitwise(make, kw, monkeypatch):
    model, inputs = make(**kw)
    ref = run(model, inputs)
    vidhash.enable_hash_attention(model, density=1.0, block_size=16, query_block_size=16)

    def no_hash(*args, **kwargs):
        raise AssertionError("density 1.0 must not run hash_attention")

    monkeypatch.setattr("vidhash.integrations.diffusers.hash_attention", no_hash)
    out = run(model, inputs)
    assert out.dtype == ref.dtype and torch.equal(out, ref)


@pytest.mark.parametrize(
    "block_size", [pytest.param(5, id="bs5-odd"), pytest.param(16, id="bs16"), pytest.param(64, id="bs64-gt-tokens")]
)
@pytest.mark.parametrize("make, kw", MODELS)
def test_hash_path_keeping_every_block_equals_original_fp32(make, kw, block_size):
    """density 0.99 keeps every key block (48 video tokens): the hash processors' own q/k/rope and
    the block-sparse path against the stock processors."""
    model, inputs = make(**kw)
    ref = run(model, inputs)
    vidhash.enable_hash_attention(model, density=0.99, block_size=block_size)
    out = run(model, inputs)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert rel_err(out, ref) < TOL[torch.float32]


@pytest.mark.parametrize("density", [pytest.param(1.0, id="density-1"), pytest.param(0.99, id="hash-path")])
@pytest.mark.parametrize("make, kw", [WAN, COG_ROPE])
def test_equals_original_bf16(make, kw, density):
    model, inputs = make(**kw)
    model, inputs = model.to(torch.bfloat16), cast(inputs, torch.bfloat16)
    ref = run(model, inputs)
    vidhash.enable_hash_attention(model, density=density, block_size=8, query_block_size=8)
    out = run(model, inputs)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref) if density == 1.0 else rel_err(out, ref) < TOL[torch.bfloat16]


# --------------------------------------------------------------------------------------------
# sparse: runs, differs, finite; gradients flow
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, kw", [WAN, WAN_I2V, MODELS[3], MODELS[4], MODELS[5], COG, COG_ROPE])
def test_sparse_differs_and_is_finite(make, kw):
    model, inputs = make(**kw)
    ref = run(model, inputs)
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, n_bits=16, seed=3)
    out = run(model, inputs)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert rel_err(out, ref) > 1e-4


@pytest.mark.parametrize("make", [pytest.param(tiny_wan, id="wan"), pytest.param(tiny_cogvideox, id="cogvideox")])
def test_sparse_backward(make):
    model, inputs = make()
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4)
    model(**inputs).sample.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    attn = next(iter(self_attention_modules(model).values()))
    assert attn.to_q.weight.grad is not None and attn.to_q.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# which processors are swapped, and restoring them
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, kw", MODELS)
def test_disable_restores_original_processors(make, kw):
    model, inputs = make(**kw)
    before = dict(model.attn_processors)
    ref = run(model, inputs)
    assert vidhash.enable_hash_attention(model, density=0.5, block_size=8, query_block_size=8) is model
    assert is_hash_attention_enabled(model)
    assert vidhash.disable_hash_attention(model) is model
    assert not is_hash_attention_enabled(model)
    after = model.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert torch.equal(run(model, inputs), ref)


@pytest.mark.parametrize("i2v", [pytest.param(False, id="t2v"), pytest.param(True, id="i2v")])
def test_wan_cross_attention_untouched(i2v):
    model, _ = tiny_wan(i2v=i2v)
    cross = {i: b.attn2.processor for i, b in enumerate(model.blocks)}
    vidhash.enable_hash_attention(model)
    for i, block in enumerate(model.blocks):
        assert isinstance(block.attn1.processor, WanHashAttnProcessor)
        assert block.attn2.processor is cross[i] and type(cross[i]) is WanAttnProcessor
    assert list(self_attention_modules(model)) == ["blocks.0.attn1", "blocks.1.attn1"]


@pytest.mark.parametrize("fused", [pytest.param(False, id="plain"), pytest.param(True, id="fused")])
def test_cogvideox_joint_attention_swapped(fused):
    model, _ = tiny_cogvideox(fused=fused)
    expected = FusedCogVideoXAttnProcessor2_0 if fused else CogVideoXAttnProcessor2_0
    assert all(type(p) is expected for p in model.attn_processors.values())
    vidhash.enable_hash_attention(model)
    assert all(isinstance(p, CogVideoXHashAttnProcessor) for p in model.attn_processors.values())
    vidhash.disable_hash_attention(model)
    assert all(type(p) is expected for p in model.attn_processors.values())


def test_enable_twice_reconfigures():
    model, inputs = tiny_wan()
    originals = dict(model.attn_processors)
    ref = run(model, inputs)
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4)
    sparse = run(model, inputs)
    vidhash.enable_hash_attention(model, density=1.0, block_size=8)
    assert model._vidhash_config == DropInConfig(density=1.0, block_size=8)
    assert model.blocks[0].attn1.processor.config.density == 1.0
    assert rel_err(run(model, inputs), ref) < TOL[torch.float32] < rel_err(sparse, ref)
    vidhash.disable_hash_attention(model)
    assert all(model.attn_processors[k] is v for k, v in originals.items())


def test_hasher_per_layer_dict_and_simhash():
    model, inputs = tiny_cogvideox()
    names = list(self_attention_modules(model))
    assert names == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    hashers = {name: SimHash(16, 8, seed=i) for i, name in enumerate(names)}
    vidhash.enable_hash_attention(model, density=0.3, block_size=4, query_block_size=4, hasher=hashers)
    assert [model.attn_processors[f"{n}.processor"].hasher for n in names] == [hashers[n] for n in names]
    assert torch.isfinite(run(model, inputs)).all()
    vidhash.enable_hash_attention(model, n_bits=64, seed=1)
    hasher = model._vidhash_config.hasher
    assert isinstance(hasher, SimHash) and hasher.n_bits == 64 and hasher.seed == 1


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
class NotAVideoModel(torch.nn.Module):
    pass


@pytest.mark.parametrize("fn", [pytest.param(vidhash.enable_hash_attention, id="enable"), pytest.param(vidhash.disable_hash_attention, id="disable")])
def test_unsupported_class_names_supported_ones(fn):
    with pytest.raises(ValueError, match="NotAVideoModel") as err:
        fn(NotAVideoModel())
    assert all(name in str(err.value) for name in SUPPORTED_CLASSES)


@pytest.mark.parametrize(
    "config, match",
    [
        pytest.param({"densty": 0.5}, "densty", id="unknown-key"),
        pytest.param({"causal": True}, "causal", id="causal-not-an-option"),
        pytest.param({"density": 0.0}, "density", id="density-0"),
        pytest.param({"density": 1.5}, "density", id="density-1.5"),
        pytest.param({"block_size": 0}, "block_size", id="block-size-0"),
        pytest.param({"query_block_size": 129}, "query_block_size", id="query-block-size-129"),
        pytest.param({"local_blocks": -1}, "local_blocks", id="local-blocks-neg"),
        pytest.param({"backend": "flash"}, "backend", id="backend"),
        pytest.param({"n_bits": 0}, "n_bits", id="n-bits-0"),
        pytest.param({"hasher": SimHash(12), "n_bits": 16}, "not hasher and n_bits", id="hasher-and-n-bits"),
        pytest.param({"hasher": SimHash(64)}, "head_dim", id="hasher-head-dim"),
        pytest.param({"hasher": SimHash(12, heads=3)}, "heads", id="hasher-heads"),
        pytest.param({"hasher": "simhash"}, "hasher", id="hasher-type"),
        pytest.param({"hasher": {"blocks.0.attn1": SimHash(12)}}, "blocks.1.attn1", id="hasher-dict-missing"),
    ],
)
def test_bad_config_raises_naming_it(config, match):
    model, _ = tiny_wan()
    before = dict(model.attn_processors)
    with pytest.raises(ValueError, match=match):
        vidhash.enable_hash_attention(model, **config)
    assert not is_hash_attention_enabled(model)
    assert all(model.attn_processors[k] is v for k, v in before.items())


def test_refused_classes_say_why():
    hunyuan = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=1, patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4))
    mochi = MochiTransformer3DModel(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=1,
                                    pooled_projection_dim=8, in_channels=4, text_embed_dim=16, time_embed_dim=4)
    for model in (hunyuan, mochi):
        name = type(model).__name__
        with pytest.raises(ValueError, match=f"does not support {name}: .*mask|does not support {name}: .*text tokens"):
            vidhash.enable_hash_attention(model)
        assert name in REFUSED_CLASSES and not is_hash_attention_enabled(model)


def test_disable_never_enabled_raises():
    model, _ = tiny_cogvideox()
    with pytest.raises(ValueError, match="not enabled"):
        vidhash.disable_hash_attention(model)


def test_foreign_processor_refused():
    model, _ = tiny_wan()
    model.blocks[1].attn1.set_processor(object())
    with pytest.raises(ValueError, match="blocks.1.attn1 uses object"):
        vidhash.enable_hash_attention(model)


def test_attention_mask_in_self_attention_raises():
    model, inputs = tiny_cogvideox()
    vidhash.enable_hash_attention(model, density=1.0)
    mask = torch.ones(1, 7 + 48, 7 + 48, dtype=torch.bool)
    with pytest.raises(ValueError, match="attention_mask"):
        model(**inputs, attention_kwargs={"attention_mask": mask})


# --------------------------------------------------------------------------------------------
# CUDA: bf16 models on the GPU, the reference path and whatever "auto" picks
# --------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("make, kw", [WAN_I2V, COG_ROPE])
def test_cuda_bf16(make, kw, backend):
    model, inputs = make(**kw)
    model = model.to("cuda", torch.bfloat16)
    inputs = {k: v.to("cuda") if torch.is_tensor(v) else tuple(t.to("cuda") for t in v) for k, v in cast(inputs, torch.bfloat16).items()}
    ref = run(model, inputs)
    vidhash.enable_hash_attention(model, density=1.0, block_size=16, query_block_size=16, backend=backend)
    out = run(model, inputs)
    assert out.dtype == torch.bfloat16 and out.device == ref.device
    assert rel_err(out, ref) < TOL[torch.bfloat16]
    vidhash.enable_hash_attention(model, density=0.25, block_size=16, query_block_size=16, backend=backend)
    assert torch.isfinite(run(model, inputs)).all()


def test_query_blocks_default_to_at_least_64_tokens():
    """``query_block_size`` None: the key block's size, at least 64 tokens (16-row query tiles made the
    blocks-of-16 drop-in slower than dense on the trained wan-mini); given, it is kept; a bad
    ``block_size`` is still refused by name."""
    from vidhash.integrations.diffusers import DEFAULT_MIN_QUERY_BLOCK, default_query_block

    assert DEFAULT_MIN_QUERY_BLOCK == 64
    assert [DropInConfig(block_size=b).query_block_size for b in (16, 64, 128)] == [64, 64, 128]
    assert DropInConfig(block_size=16, query_block_size=16).query_block_size == 16
    assert default_query_block(32) == 64
    model, _ = tiny_wan()
    vidhash.enable_hash_attention(model, density=0.25, block_size=16)
    assert model._vidhash_config.query_block_size == 64
    assert model.blocks[0].attn1.processor._kwargs["query_block_size"] == 64
    with pytest.raises(ValueError, match="block_size"):
        vidhash.enable_hash_attention(model, density=0.25, block_size=0)
