"""The kernels of hash attention as custom ops (what ``torch.compile`` puts in the graph): schemas,
fake implementations and autograd checked by ``torch.library.opcheck``, and a fullgraph compile of
each public function equal to its eager result. On CPU the ops run the kernels under
``TRITON_INTERPRET=1`` (see conftest.py) with tiny shapes."""
import pytest
import torch

from vidhash.hashing import SimHash
from vidhash.kernels.block_score.ops import select_blocks_codes
from vidhash.kernels.block_select.ops import block_signatures_fast, select_blocks_triton
from vidhash.kernels.sparse_attention.ops import block_sparse_attention_triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# test_aot_dispatch_dynamic retraces with dynamic shapes; the kernels' shapes are static arguments
UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")
KW = dict(density=0.3, block_size=8, query_block_size=16, local_blocks=1, sink_blocks=1)  # 6 key blocks, 3 kept


def _qkv(n=48, d=64, requires_grad=False):
    return [torch.randn(1, 2, n, d, device=DEV, requires_grad=requires_grad) for _ in range(3)]


def _compiled(fn, backend="eager"):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend=backend)


def test_selection_ops_opcheck():
    """block_select, block_score_select, quantize_codes and signatures: schema and fake shapes equal the kernels'."""
    q, k, _ = _qkv()
    hasher = SimHash(64, 32, seed=1).to(DEV)
    q_sig = block_signatures_fast(q, 16, hasher, "query", "reference")
    k_sig = block_signatures_fast(k, 16, hasher, "key", "reference")
    for use_sig in (True, False):
        torch.library.opcheck(torch.ops.vidhash.block_select.default,
                              (q_sig, k_sig, 32, 2, 48, 48, 16, 16, 1, 1, True, use_sig), test_utils=UTILS)
    from vidhash.kernels.block_score.naive import selection_codes

    qi, ki, shift = selection_codes(q, k, block_size=16, query_block_size=16, scale=None)
    torch.library.opcheck(torch.ops.vidhash.block_score_select.default,
                          (qi, ki, shift.int(), 2, 48, 48, 16, 16, 0, 1, False, 1, 1), test_utils=UTILS)
    from vidhash.kernels.block_score.naive import float_codes

    cq, ck, factor, rows_q, rows_k = float_codes(q, k, block_size=16, query_block_size=16, scale=None)
    torch.library.opcheck(torch.ops.vidhash.quantize_codes.default,
                          (cq, ck, factor, rows_q, rows_k, 1 / 16, 0.0, 0.0), test_utils=UTILS)
    torch.library.opcheck(torch.ops.vidhash.signatures.default,
                          (q, hasher.planes.float().contiguous(), None, False, 32, 16), test_utils=UTILS)


def test_sparse_attention_op_opcheck():
    """sparse_attention and its backward op: fake shapes, autograd registered."""
    q, k, v = _qkv(requires_grad=True)
    sel = select_blocks_triton(q.detach(), k.detach(), **KW)
    torch.library.opcheck(torch.ops.vidhash.sparse_attention.default,
                          (q, k, v, sel.indices, sel.block_size, sel.query_block_size, False, 0.125), test_utils=UTILS)


@pytest.mark.parametrize("scorer", ["simhash", "pooled"])
def test_selection_compiles_to_one_graph(scorer):
    """Selection with the kernels, fullgraph: the same indices as eager (kept from the sizes, not a tensor)."""
    q, k, _ = _qkv()
    hasher = SimHash(64, 32, seed=1).to(DEV)
    if scorer == "simhash":
        def select(q, k):  # the signature kernel as on CUDA (method "kernel"), then the selection kernel
            sig = [block_signatures_fast(x, 16, hasher, role, "kernel") for x, role in ((q, "query"), (k, "key"))]
            return sig[0], sig[1], select_blocks_triton(q, k, hasher=hasher, causal=True, **KW).indices
    else:
        def select(q, k):
            return select_blocks_codes(q, k, backend="triton", causal=True, **KW).indices
    eager, compiled = select(q, k), _compiled(select)(q, k)
    for a, b in zip(eager if isinstance(eager, tuple) else [eager], compiled if isinstance(compiled, tuple) else [compiled]):
        assert torch.equal(a, b)


def test_sparse_attention_compiles_with_gradients():
    """block_sparse_attention_triton fullgraph with a backward: outputs and gradients equal eager's."""
    q, k, v = _qkv(requires_grad=True)
    sel = select_blocks_triton(q.detach(), k.detach(), causal=True, **KW)

    def loss(q, k, v):
        out, lse = block_sparse_attention_triton(q, k, v, sel, return_lse=True)
        return (out * out).sum() + lse.sum()

    eager = torch.autograd.grad(loss(q, k, v), (q, k, v))
    compiled = torch.autograd.grad(_compiled(loss, "aot_eager")(q, k, v), (q, k, v))  # the backward op traced too
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


@pytest.mark.parametrize("scorer", ["pooled", "simhash"])
def test_dropin_compiles_to_one_graph_on_the_kernels(scorer):
    """The diffusers drop-in's self-attention on the path "auto" takes on CUDA — selection and attention
    kernels (custom ops when compiling), ``kept`` from the sizes — forced with backend="triton": one
    graph (fullgraph), the eager outputs. tests/integrations/test_diffusers_state.py compiles the
    whole model on CUDA."""
    pytest.importorskip("diffusers")
    from diffusers import WanTransformer3DModel

    import vidhash

    model = WanTransformer3DModel(  # head_dim 64: a size the attention kernels take
        patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=64, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
    ).eval().to(DEV)
    vidhash.enable_hash_attention(model, density=0.25, block_size=4, query_block_size=4, scorer=scorer, backend="triton")
    attn, x = model.blocks[0].attn1, torch.randn(1, 24, 64, device=DEV)  # 6 key blocks, 2 kept
    with torch.no_grad():
        eager = attn(x)
        out = _compiled(attn)(x)
    assert torch.equal(out, eager)
