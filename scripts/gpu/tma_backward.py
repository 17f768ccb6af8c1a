"""The sparse attention's backward on TMA tiles (``VIDHASH_TMA=1``) against the pointer kernels
(``VIDHASH_TMA=0``), one run: gradients checked against each other and against float32 autograd
through the reference (small shape), then medians of ``triton.testing.do_bench`` of forward +
backward at N = 131,072 (12 heads, d 64, density 1/32, key blocks 64, query blocks 128: issue 18's
shape) and at the wan-mini training shape (8 x 3 heads x 33,792 tokens x d 128, diffusers' layout,
density 1/8, key and query blocks 64). JSON to $OUT/tma_backward.json.
    python3 scripts/gpu/tma_backward.py"""
import json
import os

import torch
import triton

from vidhash.attention import block_sparse_attention, select_blocks
from vidhash.bench.attention import grid_for, video_like_qkv
from vidhash.kernels.sparse_attention.ops import block_sparse_attention_triton

res = {}


def grads(q0, k0, v0, sel, dout, fn=block_sparse_attention_triton, dtype=None):
    q, k, v = (t.detach().to(dtype or t.dtype).requires_grad_(True) for t in (q0, k0, v0))
    out = fn(q, k, v, sel)
    out.backward(dout.to(out.dtype))
    return [x.float() for x in (out, q.grad, k.grad, v.grad)]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# correctness: 1 x 3 x 2,000 (bnhd), d 128, blocks 64 / query blocks 64 and 128
for bq in (64, 128):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2000, 3, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    sel = select_blocks(q, k, density=0.3, block_size=64, query_block_size=bq)
    dout = torch.randn(1, 3, 2000, 128, device="cuda", dtype=torch.bfloat16)
    ref = grads(q, k, v, sel, dout, fn=block_sparse_attention, dtype=torch.float32)
    os.environ["VIDHASH_TMA"] = "1"
    tma = grads(q, k, v, sel, dout)
    os.environ["VIDHASH_TMA"] = "0"
    ptr = grads(q, k, v, sel, dout)
    for name, a, b, r in zip(("out", "dq", "dk", "dv"), tma, ptr, ref):
        res[f"check bq{bq} {name} tma vs ref"] = rel(a, r)
        res[f"check bq{bq} {name} pointer vs ref"] = rel(b, r)


def fwd_bwd_ms(q0, k0, v0, sel, dout):
    q, k, v = (t.detach().requires_grad_(True) for t in (q0, k0, v0))

    def step():
        out = block_sparse_attention_triton(q, k, v, sel)
        out.backward(dout)
    return triton.testing.do_bench(step, warmup=10, rep=200, grad_to_none=[q, k, v])


def timings(name, grid, b, h, d, density, bq, layout):
    q, k, v = video_like_qkv(grid, h, d, torch.bfloat16, "cuda")
    q, k, v = (x.expand(b, -1, -1, -1) for x in (q, k, v))
    if layout == "bnhd":
        q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    else:
        q, k, v = (x.contiguous() for x in (q, k, v))
    sel = select_blocks(q, k, density=density, block_size=64, query_block_size=bq)
    dout = torch.randn_like(q)
    for flag in ("0", "1"):
        os.environ["VIDHASH_TMA"] = flag
        res[f"{name} fwd ms tma={flag}"] = triton.testing.do_bench(lambda: block_sparse_attention_triton(q, k, v, sel), warmup=10, rep=200)
        res[f"{name} fwd+bwd ms tma={flag}"] = fwd_bwd_ms(q, k, v, sel, dout)


timings("N 131,072 d64 1/32", grid_for(131072), 1, 12, 64, 1 / 32, 128, "bhnd")
torch.cuda.empty_cache()
timings("wan-mini training 8x33,792 d128 1/8", (33, 32, 32), 8, 3, 128, 1 / 8, 64, "bnhd")
os.environ.pop("VIDHASH_TMA")
for key, val in res.items():
    print(f"{key:50s} {val:.4g}")
out = os.environ.get("OUT", ".")
os.makedirs(out, exist_ok=True)
json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "results": res},
          open(os.path.join(out, "tma_backward.json"), "w"), indent=1)
