"""The drop-in's ``layer_densities``: per self-attention module densities over ``density``."""
import pytest
import torch

import vidhash
from vidhash.integrations.diffusers import self_attention_modules

from diffusers_tiny import run, tiny_wan

SPARSE = dict(density=0.25, block_size=4, query_block_size=4)  # 48 video tokens: 12 key blocks, 3 kept per query block


def test_every_module_at_density_one_is_stock_bitwise():
    model, inputs = tiny_wan()
    ref = run(model, inputs)
    names = self_attention_modules(model)
    vidhash.enable_hash_attention(model, **SPARSE)
    sparse = run(model, inputs)
    vidhash.enable_hash_attention(model, **SPARSE, layer_densities={name: 1.0 for name in names})
    assert not torch.equal(sparse, ref) and torch.equal(run(model, inputs), ref)


def test_one_module_denser_equals_that_module_enabled_on_its_own_density():
    """layer_densities={"blocks.1.attn1": 0.5}: blocks.0 at 0.25, blocks.1 at 0.5 — equal to enabling
    the model at 0.5 and setting blocks.0's processor back to one at 0.25 by hand."""
    model, inputs = tiny_wan()
    vidhash.enable_hash_attention(model, **SPARSE)
    quarter = dict(model.attn_processors)
    vidhash.enable_hash_attention(model, **SPARSE, layer_densities={"blocks.1.attn1": 0.5})
    mixed = run(model, inputs)
    procs = model.attn_processors
    assert procs["blocks.0.attn1.processor"]._kwargs["density"] == 0.25
    assert procs["blocks.1.attn1.processor"]._kwargs["density"] == 0.5
    assert model._vidhash_config.layer_densities == (("blocks.1.attn1", 0.5),)
    vidhash.enable_hash_attention(model, **dict(SPARSE, density=0.5))
    half = run(model, inputs)
    model.set_attn_processor({**model.attn_processors, "blocks.0.attn1.processor": quarter["blocks.0.attn1.processor"]})
    assert torch.equal(mixed, run(model, inputs))
    assert not torch.equal(mixed, half)


@pytest.mark.parametrize("value, match", [
    ({"blocks.9.attn1": 0.5}, "not a self-attention module"),
    ({"blocks.0.attn2": 0.5}, "not a self-attention module"),  # cross-attention is never swapped
    ({"blocks.0.attn1": 0.0}, r"\(0, 1\]"),
    ({"blocks.0.attn1": 1.5}, r"\(0, 1\]"),
    ({"blocks.0.attn1": True}, r"\(0, 1\]"),
    ([("blocks.0.attn1", 0.5)], "must be a dict"),
])
def test_bad_layer_densities_are_refused_by_name(value, match):
    model, _ = tiny_wan()
    with pytest.raises(ValueError, match=match):
        vidhash.enable_hash_attention(model, **SPARSE, layer_densities=value)
