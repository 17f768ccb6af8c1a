"""``hash_attention(remainder="mean")`` on the Triton kernels (the interpreter on a CPU) equals the reference."""
import pytest
import torch

from vidhash.attention import hash_attention


def qkv(b, h, nq, nk, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, nq, d, generator=g), torch.randn(b, h, nk, d, generator=g),
            torch.randn(b, h, nk, d, generator=g))


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
