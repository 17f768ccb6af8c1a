"""Where one drop-in self-attention's time goes at the wan-mini shape (1 x 3 heads x 33,792 tokens x
d 128, bf16, diffusers' (b, n, h, d) layout viewed as (b, h, n, d), key blocks 64, pooled, density
1/8), and the sparse forward's two kernels (pointer gathers vs TMA tiles, ``VIDHASH_TMA``) at that
shape and at N = 131,072 (12 heads, d 64, density 1/32). Correctness first (TMA vs pointer kernel,
the remainder kernel's merged output vs ``merge_attention`` of the reference), then medians of
``triton.testing.do_bench`` (eager parts) and of one CUDA-graph replay (whole ``hash_attention``).
JSON to $OUT/remainder_parts.json.   python3 scripts/gpu/remainder_parts.py"""
import json
import os

import torch
import triton

from vidhash.attention import hash_attention, merge_attention, select_blocks
from vidhash.bench.attention import graph_ms
from vidhash.kernels.remainder.naive import block_mean_remainder, block_means, unkept_blocks
from vidhash.kernels.remainder.ops import block_mean_remainder_triton
from vidhash.kernels.sparse_attention.ops import block_sparse_attention_triton

res, checks = {}, {}


def bench(name, fn):
    fn(); torch.cuda.synchronize()
    res[name] = triton.testing.do_bench(fn, warmup=25, rep=200) * 1000  # us


def graph(name, fn):
    res[name] = graph_ms(fn) * 1000  # us


def tma(flag):
    os.environ["VIDHASH_TMA"] = flag


def inputs(b, h, n, d, layout, seed=0):
    torch.manual_seed(seed)
    shape = (3, b, n, h, d) if layout == "bnhd" else (3, b, h, n, d)
    x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
    rep = torch.randn(*shape[1:], device="cuda", dtype=torch.bfloat16)  # keys clustered per block of 64
    ax = 1 if layout == "bnhd" else 2
    x[1] += 2 * rep.narrow(ax, 0, n // 64).repeat_interleave(64, ax)
    return tuple(t.transpose(1, 2) for t in x) if layout == "bnhd" else tuple(x)


# --- wan-mini drop-in shape ---
q, k, v = inputs(1, 3, 33792, 128, "bnhd")
kw = dict(density=1 / 8, block_size=64, scorer="pooled", backend="triton")
sel = select_blocks(q, k, **kw)
tma("0"); o_ptr, l_ptr = block_sparse_attention_triton(q, k, v, sel, return_lse=True)
tma("1"); o_tma, l_tma = block_sparse_attention_triton(q, k, v, sel, return_lse=True)
checks["wan tma vs pointer max |out|"] = (o_tma.float() - o_ptr.float()).abs().max().item()
checks["wan tma vs pointer max |lse|"] = (l_tma - l_ptr).abs().max().item()
ref = merge_attention(o_ptr, l_ptr, *block_mean_remainder(q, k, v, sel))
fused = block_mean_remainder_triton(q, k, v, sel, merge_with=(o_ptr, l_ptr))
checks["wan merged remainder rel err"] = ((fused[0].float() - ref[0].float()).norm() / ref[0].float().norm()).item()
bench("wan select (pooled)", lambda: select_blocks(q, k, **kw))
tma("0"); bench("wan attend pointer", lambda: block_sparse_attention_triton(q, k, v, sel, return_lse=True))
tma("1"); bench("wan attend TMA", lambda: block_sparse_attention_triton(q, k, v, sel, return_lse=True))
bench("wan block_means(k)", lambda: block_means(k, 64))
bench("wan unkept_blocks", lambda: unkept_blocks(sel))
bench("wan remainder alone", lambda: block_mean_remainder_triton(q, k, v, sel))
bench("wan merge_attention", lambda: merge_attention(o_ptr, l_ptr, *fused))
bench("wan remainder merged", lambda: block_mean_remainder_triton(q, k, v, sel, merge_with=(o_ptr, l_ptr)))
for flag in ("0", "1"):
    tma(flag)
    for rest in ("none", "mean"):
        graph(f"wan graph hash_attention {rest} tma={flag}", lambda: hash_attention(q, k, v, remainder=rest, **kw))
bench("wan dense sdpa", lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
del q, k, v, o_ptr, o_tma, ref

# --- N = 131,072, 12 heads, d 64, density 1/32 ---
q, k, v = inputs(1, 12, 131072, 64, "bhnd", seed=1)
sel = select_blocks(q, k, density=1 / 32, block_size=64, scorer="simhash", backend="triton")
tma("0"); o_ptr, l_ptr = block_sparse_attention_triton(q, k, v, sel, return_lse=True)
tma("1"); o_tma, l_tma = block_sparse_attention_triton(q, k, v, sel, return_lse=True)
checks["131k tma vs pointer max |out|"] = (o_tma.float() - o_ptr.float()).abs().max().item()
tma("0"); bench("131k attend pointer", lambda: block_sparse_attention_triton(q, k, v, sel))
tma("1"); bench("131k attend TMA", lambda: block_sparse_attention_triton(q, k, v, sel))
os.environ.pop("VIDHASH_TMA")

for name, val in checks.items():
    print(f"check {name:40s} {val:.3e}")
for name, us in res.items():
    print(f"{name:44s} {us:9.1f} us")
out = os.environ.get("OUT", ".")
os.makedirs(out, exist_ok=True)
json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "checks": checks, "us": res}, open(os.path.join(out, "remainder_parts.json"), "w"), indent=1)
