"""FlexAttention on vidhash's block selections (vidhash/integrations/flex.py) and the drop-in's
backend="flex": the same blocks as vidhash's attention, eager on the CPU, compiled on CUDA."""
import pytest
import torch

import vidhash
from vidhash.attention import block_sparse_attention, dense_attention, select_blocks
from vidhash.integrations.flex import flex_block_mask, flex_block_sparse_attention, flex_kernel_options
from vidhash.ops.checks import BlockSelection

from diffusers_tiny import COG_ROPE, MODELS, WAN, rel_err, run

DEV = "cuda" if torch.cuda.is_available() else "cpu"

CASES = [
    pytest.param(1, 2, 128, 16, 16, 16, id="B1-H2-N128-D16-bk16-bq16"),
    pytest.param(2, 3, 77, 24, 16, 32, id="B2-H3-N77-D24-bk16-bq32-odd"),
    pytest.param(1, 1, 200, 32, 64, 64, id="B1-H1-N200-D32-bk64-bq64-tail"),
]


def _qkv(b, h, n, d, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g).to(device, dtype) for _ in range(3))


@pytest.mark.parametrize("b, h, n, d, bk, bq", CASES)
def test_flex_equals_block_sparse_reference(b, h, n, d, bk, bq):
    q, k, v = _qkv(b, h, n, d)
    sel = select_blocks(q, k, density=0.25, block_size=bk, query_block_size=bq)
    out, lse = flex_block_sparse_attention(q, k, v, sel, return_lse=True)
    ref, ref_lse = block_sparse_attention(q, k, v, sel, return_lse=True)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert rel_err(out, ref) < 1e-5 and rel_err(lse, ref_lse) < 1e-5
    # the mask matters: eager Flex applies mask_mod to every score, dense attention differs
    if sel.kept < sel.num_key_blocks:
        assert rel_err(out, dense_attention(q, k, v)) > 1e-2


def test_flex_scale_and_all_blocks():
    q, k, v = _qkv(1, 2, 96, 16, seed=1)
    sel = select_blocks(q, k, density=1.0, block_size=16)
    assert rel_err(flex_block_sparse_attention(q, k, v, sel, scale=0.3), dense_attention(q, k, v, scale=0.3)) < 1e-5


def test_block_mask_holds_exactly_the_kept_blocks():
    q, k, _ = _qkv(1, 2, 128, 16, seed=2)
    sel = select_blocks(q, k, density=0.25, block_size=16, query_block_size=32)
    mask = flex_block_mask(sel)
    num, idx = mask.full_kv_num_blocks, mask.full_kv_indices
    assert torch.equal(num, torch.full_like(num, sel.kept)) and mask.kv_num_blocks.sum() == 0
    assert torch.equal(idx[..., : sel.kept], sel.indices)
    dense = mask.to_dense()  # (b, h, query blocks, key blocks)
    assert dense.shape == (1, 2, 4, 8) and dense.sum(-1).eq(sel.kept).all()
    assert mask.q_indices is None and flex_block_mask(sel, backward=True).q_indices is not None


@pytest.mark.parametrize("bq, bk, want", [
    pytest.param(128, 64, {"BLOCK_M": 128, "BLOCK_N": 64}, id="bq128-bk64"),
    pytest.param(64, 16, {"BLOCK_M": 64, "BLOCK_N": 16}, id="bq64-bk16"),
    pytest.param(48, 128, {"BLOCK_M": 16, "BLOCK_N": 64}, id="bq48-bk128"),
])
def test_kernel_options_divide_the_blocks(bq, bk, want):
    sel = BlockSelection(torch.zeros(1, 1, 1, 1, dtype=torch.int32), bk, bq, 256, 256, False)
    assert flex_kernel_options(sel) == want


@pytest.mark.parametrize("bq, bk, name", [pytest.param(64, 8, "block_size", id="bk8"),
                                          pytest.param(24, 64, "query_block_size", id="bq24")])
def test_kernel_options_refuse_small_tiles(bq, bk, name):
    sel = BlockSelection(torch.zeros(1, 1, 1, 1, dtype=torch.int32), bk, bq, 256, 256, False)
    with pytest.raises(ValueError, match=name):
        flex_kernel_options(sel)


def test_causal_selection_refused():
    q, k, v = _qkv(1, 1, 64, 16)
    sel = select_blocks(q, k, density=0.5, block_size=16, causal=True)
    with pytest.raises(ValueError, match="causal"):
        flex_block_sparse_attention(q, k, v, sel)


# --------------------------------------------------------------------------------------------
# the drop-in: backend="flex" gives the default backend's output (same selection)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, kw", [WAN, MODELS[5], COG_ROPE])
def test_drop_in_flex_equals_default_backend(make, kw):
    model, inputs = make(**kw)
    dense = run(model, inputs)
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4)
    ours = run(model, inputs)
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, backend="flex")
    flex = run(model, inputs)
    assert model._vidhash_config.backend == "flex"
    assert rel_err(flex, ours) < 1e-5 and rel_err(flex, dense) > 1e-4


def test_drop_in_flex_with_a_scorer():
    model, inputs = WAN.values[0](**WAN.values[1])
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, scorer="pooled")
    ours = run(model, inputs)
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, scorer="pooled", backend="flex")
    assert rel_err(run(model, inputs), ours) < 1e-5


def test_drop_in_bad_backend_lists_flex():
    model, _ = WAN.values[0]()
    with pytest.raises(ValueError, match="backend must be one of .*'flex'"):
        vidhash.enable_hash_attention(model, backend="flash")


# --------------------------------------------------------------------------------------------
# CUDA: the compiled kernel against vidhash's Triton attention (forward: the drop-in's use)
# --------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("bk", [pytest.param(64, id="N4096-D128-bk64"), pytest.param(16, id="N4096-D128-bk16")])
def test_cuda_compiled_flex_equals_triton(bk):
    from vidhash.kernels.ops import block_sparse_attention_triton

    q, k, v = _qkv(1, 3, 4096, 128, torch.bfloat16, DEV)
    sel = select_blocks(q, k, density=1 / 8, block_size=bk, backend="triton")
    with torch.no_grad():
        out, lse = flex_block_sparse_attention(q, k, v, sel, return_lse=True)
        ref, ref_lse = block_sparse_attention_triton(q, k, v, sel, return_lse=True)
    assert rel_err(out, ref) < 1e-2 and rel_err(lse, ref_lse) < 1e-3
