"""The drop-in's ``remainder="mean"`` on tiny diffusers models: it reaches every processor
(Wan, LTX, Hunyuan, CogVideoX's joint text+video path), keeps density-1 equality, runs the same
on the reference and FlexAttention backends, and is validated like the other options."""
import pytest
import torch

import vidhash
from vidhash.integrations.diffusers import DropInConfig, is_hash_attention_enabled

from diffusers_tiny import COG, MODELS, WAN, needs_compile, rel_err, run, tiny_wan


@pytest.mark.parametrize("make, kw", MODELS)
def test_mean_remainder_changes_the_sparse_output_toward_dense(make, kw):
    """The unkept blocks' mean tokens add back mass the plain selection drops: the output moves
    toward the dense model's (on these random weights attention is near uniform, where a block's
    mean token stands in for it closely)."""
    model, inputs = make(**kw)
    ref = run(model, inputs)
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4)
    plain = run(model, inputs)
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, remainder="mean")
    assert model._vidhash_config.remainder == "mean"
    rest = run(model, inputs)
    assert torch.isfinite(rest).all() and rel_err(rest, plain) > 1e-6
    assert rel_err(rest, ref) < rel_err(plain, ref)


def test_every_block_kept_leaves_the_remainder_empty():
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, density=0.99, block_size=8, query_block_size=8)
    kept_all = run(model, inputs)
    vidhash.enable_hash_attention(model, density=0.99, block_size=8, query_block_size=8, remainder="mean")
    assert rel_err(run(model, inputs), kept_all) < 1e-6


@pytest.mark.parametrize("make, kw", [WAN, COG])
def test_flex_backend_takes_the_remainder(make, kw):
    model, inputs = make(**kw)
    vidhash.enable_hash_attention(model, density=0.25, block_size=16, query_block_size=16, remainder="mean")
    ours = run(model, inputs)
    vidhash.enable_hash_attention(model, density=0.25, block_size=16, query_block_size=16, remainder="mean", backend="flex")
    assert rel_err(run(model, inputs), ours) < 1e-5


def test_bad_remainder_raises_and_default_is_none():
    model, _ = tiny_wan()
    with pytest.raises(ValueError, match="remainder"):
        vidhash.enable_hash_attention(model, density=0.25, remainder="max")
    assert not is_hash_attention_enabled(model)
    assert DropInConfig().remainder == "none"
    vidhash.enable_hash_attention(model, density=0.25, remainder=None)
    assert model._vidhash_config.remainder == "none"


@needs_compile
def test_remainder_traces_as_one_graph():
    """fullgraph=True: the remainder (torch ops beside the selection and the sparse attention) adds
    no graph break, and the compiled model gives the eager outputs."""
    torch._dynamo.reset()
    model, inputs = tiny_wan(layers=1)
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, remainder="mean")
    eager = run(model, inputs)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.equal(compiled(**inputs)[0], eager)
