"""``hash_attention(remainder="mean")`` on the Triton kernels (the interpreter on a CPU) equals the reference."""
import pytest
import torch

from vidhash.attention import hash_attention

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels on the GPU, else the interpreter


def qkv(b, h, nq, nk, d, seed=0):
    """Drawn on the CPU (the same numbers on every device), on ``DEV``."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, nq, d, generator=g).to(DEV), torch.randn(b, h, nk, d, generator=g).to(DEV),
            torch.randn(b, h, nk, d, generator=g).to(DEV))


def test_triton_backend_with_remainder_matches_reference():
    q, k, v = qkv(1, 2, 128, 128, 64, seed=6)
    kw = dict(density=0.25, block_size=32, query_block_size=32, scorer="pooled", remainder="mean", return_lse=True)
    ref_out, ref_lse = hash_attention(q, k, v, backend="reference", **kw)
    out, lse = hash_attention(q, k, v, backend="triton", **kw)
    assert torch.allclose(out, ref_out, atol=2e-5) and torch.allclose(lse, ref_lse, atol=2e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_remainder_eager_compiled_and_reference_agree(dtype):
    """On CUDA: the kernels' path with the remainder against the reference (fp32 inputs), and
    compiled with ``fullgraph=True`` (the remainder is torch ops beside the kernel's custom op)."""
    q, k, v = (x.to("cuda", dtype) for x in qkv(1, 3, 2048, 2048, 128, seed=7))
    kw = dict(density=0.125, block_size=64, scorer="pooled", remainder="mean")
    out = hash_attention(q, k, v, backend="triton", **kw)
    ref = hash_attention(q.float(), k.float(), v.float(), backend="reference", **kw)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-4
    assert (out.float() - ref).norm() / ref.norm() < tol
    compiled = torch.compile(lambda q, k, v: hash_attention(q, k, v, **kw), fullgraph=True)
    assert (compiled(q, k, v).float() - out.float()).norm() / out.float().norm() < tol


@pytest.mark.parametrize("nq,nk,bk,bq,d", [(128, 128, 32, 32, 64), (200, 77, 16, 64, 64), (96, 160, 64, 16, 128)])
def test_remainder_kernel_matches_the_reference(nq, nk, bk, bq, d):
    from vidhash.attention import select_blocks
    from vidhash.kernels.remainder.naive import block_mean_remainder
    from vidhash.kernels.remainder.ops import block_mean_remainder_triton

    q, k, v = qkv(2, 2, nq, nk, d, seed=8)
    sel = select_blocks(q, k, density=0.3, block_size=bk, query_block_size=bq, scorer="pooled")
    out, lse = block_mean_remainder_triton(q, k, v, sel)
    ref_out, ref_lse = block_mean_remainder(q, k, v, sel)
    assert out.dtype == ref_out.dtype and lse.dtype == torch.float32
    assert torch.allclose(out, ref_out, atol=2e-5) and torch.allclose(lse, ref_lse, atol=2e-5)


def test_remainder_kernel_every_block_kept_and_refusals():
    from vidhash.attention import select_blocks
    from vidhash.kernels.remainder.ops import block_mean_remainder_triton

    q, k, v = qkv(1, 1, 64, 64, 64, seed=9)
    sel = select_blocks(q, k, density=1.0, block_size=16)
    out, lse = block_mean_remainder_triton(q, k, v, sel)
    assert torch.isinf(lse).all() and (lse < 0).all() and not out.abs().any()
    causal = select_blocks(q, k, density=0.5, block_size=16, causal=True)
    with pytest.raises(ValueError, match="non-causal"):
        block_mean_remainder_triton(q, k, v, causal)
    with pytest.raises(ValueError, match="head_dim"):
        block_mean_remainder_triton(q[..., :32], k[..., :32], v[..., :32], select_blocks(q[..., :32], k[..., :32], density=0.5, block_size=16))


def test_remainder_kernel_merge_with_must_be_a_pair_of_tensors():
    """merge_with of three tensors, one tensor or (None, lse) failed with an unpacking ValueError or an
    AttributeError that named no argument."""
    from vidhash.attention import block_sparse_attention, select_blocks
    from vidhash.kernels.remainder.ops import block_mean_remainder_triton

    q, k, v = qkv(1, 1, 32, 32, 64, seed=11)
    sel = select_blocks(q, k, density=0.5, block_size=16, query_block_size=16)
    out, lse = block_sparse_attention(q, k, v, sel, return_lse=True)
    for bad, got in (((out, lse, lse), "a tuple of 3"), (out, "Tensor"), ((None, lse), r"\(NoneType, Tensor\)")):
        with pytest.raises(TypeError, match=f"merge_with must be a pair of tensors \\(out, lse\\) or None, got .*{got}"):
            block_mean_remainder_triton(q, k, v, sel, merge_with=bad)
    merged, _ = block_mean_remainder_triton(q, k, v, sel, merge_with=[out, lse])  # a list pair: as the tuple
    assert torch.equal(merged, block_mean_remainder_triton(q, k, v, sel, merge_with=(out, lse))[0])


def test_hash_attention_uses_the_kernel_without_gradients_and_the_reference_with(monkeypatch):
    import vidhash.kernels.ops as kops
    from vidhash.kernels.remainder import ops as rops

    calls = []
    real = rops.block_mean_remainder_triton
    monkeypatch.setattr(kops, "block_mean_remainder_triton", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = qkv(1, 2, 128, 128, 64, seed=10)
    kw = dict(density=0.25, block_size=32, scorer="pooled", remainder="mean", backend="triton")
    with torch.no_grad():
        fast = hash_attention(q, k, v, **kw)
    assert calls == [1]
    q.requires_grad_()
    slow = hash_attention(q, k, v, **kw)
    assert calls == [1] and torch.allclose(fast, slow.detach(), atol=2e-5)
    slow.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("nq,nk,bk,bq,d", [(128, 128, 32, 32, 64), (200, 77, 16, 64, 64)])
def test_remainder_kernel_merges_the_kept_blocks_in_its_epilogue(nq, nk, bk, bq, d):
    """``merge_with=(out, lse)``: the kernel's merged output equals ``merge_attention`` of the kept
    blocks' attention and the reference remainder, and ``add_remainder`` takes that path."""
    from vidhash.attention import add_remainder, block_sparse_attention, merge_attention, select_blocks
    from vidhash.kernels.remainder.naive import block_mean_remainder
    from vidhash.kernels.remainder.ops import block_mean_remainder_triton

    q, k, v = qkv(2, 2, nq, nk, d, seed=11)
    sel = select_blocks(q, k, density=0.3, block_size=bk, query_block_size=bq, scorer="pooled")
    kept = block_sparse_attention(q, k, v, sel, return_lse=True)
    ref_out, ref_lse = merge_attention(*kept, *block_mean_remainder(q, k, v, sel))
    out, lse = block_mean_remainder_triton(q, k, v, sel, merge_with=kept)
    assert torch.allclose(out, ref_out, atol=2e-5) and torch.allclose(lse, ref_lse, atol=2e-5)
    out2, lse2 = add_remainder(*kept, q, k, v, sel, backend="triton")
    assert torch.equal(out2, out) and torch.equal(lse2, lse)
    # a query block that kept nothing: its rows come from the remainder alone (lse_in = -inf)
    empty = (kept[0].clone(), kept[1].clone())
    empty[1][:, :, :bq] = float("-inf")
    empty[0][:, :, :bq] = 0
    ref_out, ref_lse = merge_attention(*empty, *block_mean_remainder(q, k, v, sel))
    out, lse = block_mean_remainder_triton(q, k, v, sel, merge_with=empty)
    assert torch.allclose(out, ref_out, atol=2e-5) and torch.allclose(lse, ref_lse, atol=2e-5)
    with pytest.raises(ValueError, match="merge_with"):
        block_mean_remainder_triton(q, k, v, sel, merge_with=(kept[0][:, :1], kept[1]))


def test_remainder_compiled_equals_the_reference():
    """Under ``torch.compile(fullgraph=True)`` (inductor's C++ on a CPU, the kernel's custom op under the
    interpreter) the remainder equals the reference, and the op is one node of the graph."""
    from vidhash.attention import select_blocks
    from vidhash.kernels.remainder.naive import block_mean_remainder
    from vidhash.kernels.remainder.ops import block_mean_remainder_triton

    q, k, v = qkv(1, 2, 128, 96, 64, seed=12)
    sel = select_blocks(q, k, density=0.3, block_size=32, query_block_size=32, scorer="pooled")
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        from torch._inductor.compile_fx import compile_fx
        return compile_fx(gm, inputs)

    out, lse = torch.compile(lambda q, k, v: block_mean_remainder_triton(q, k, v, sel), backend=backend, fullgraph=True)(q, k, v)
    ref_out, ref_lse = block_mean_remainder(q, k, v, sel)
    assert torch.allclose(out, ref_out, atol=2e-5) and torch.allclose(lse, ref_lse, atol=2e-5)
    nodes = [n for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert len([n for n in nodes if "block_mean_remainder" in str(n.target)]) == 1
