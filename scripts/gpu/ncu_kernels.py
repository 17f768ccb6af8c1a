"""The workloads behind issue 18's missed targets, each run once inside an NVTX range named ``prof``
after a warm-up (autotuning, compilation) outside it, so that Nsight Compute profiles exactly one call
of each and nothing else:

* ``dense131k`` — dense SDPA forward at N = 131,072 (12 heads, d 64, bf16): the efficiency reference;
* ``attn131k_bk64`` / ``attn131k_bk16`` — the sparse forward and backward at 1/32 on the
  selection ``bench attention`` uses (pooled, query blocks of 128), key blocks of 64 (TMA kernels)
  and 16 (pointer kernels);
* ``select131k_bk64`` — the pooled selection (means, codes, level kernel);
* ``memread`` — the hashed-memory read of ``bench memory``'s default shape (2,048 queries × 65,536
  entries, 12 heads, top-64) with the one-pass ``levels`` select.

    ncu --nvtx --nvtx-include "prof/" --clock-control none --section SpeedOfLight --section Occupancy \
        --section WarpStateStats --section MemoryWorkloadAnalysis --csv --page details \
        python3 scripts/gpu/ncu_kernels.py [--only NAME,...] > ncu.csv

Without ncu it only runs (a check that every workload works; the ranges cost nothing).
"""
import argparse
import math

import torch
import torch.nn.functional as F

from vidhash.bench.attention import grid_for, video_like_qkv
from vidhash.kernels.ops import block_sparse_attention_triton, select_blocks_codes
from vidhash.memory import HashedMemory


def _prof(name, fn):
    fn()  # warm-up: autotune and compile outside the range
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push("prof")  # one flat range: the kernels come in the order printed
    fn()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_pop()
    print(f"profiled {name}", flush=True)


def attention(only):
    q, k, v = video_like_qkv(grid_for(131072), 12, 64, torch.bfloat16, "cuda", 0)
    if "dense131k" in only:
        _prof("dense131k", lambda: F.scaled_dot_product_attention(q, k, v))
    for bk in (64, 16):
        kw = dict(density=1 / 32, block_size=bk, query_block_size=128, causal=False)
        if f"select131k_bk{bk}" in only:
            _prof(f"select131k_bk{bk}", lambda: select_blocks_codes(q, k, backend="triton", **kw))
        if f"attn131k_bk{bk}" not in only:
            continue
        sel = select_blocks_codes(q, k, backend="triton", **kw)
        qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))
        do = torch.randn_like(q)

        def fwd_bwd():
            for x in (qg, kg, vg):
                x.grad = None
            block_sparse_attention_triton(qg, kg, vg, sel).backward(do)

        _prof(f"attn131k_bk{bk}", fwd_bwd)


def memory_read(only):
    if "memread" not in only:
        return
    g = torch.Generator(device="cuda").manual_seed(0)
    h, d, t = 12, 64, 1560
    mem = HashedMemory(4096, 16, h, d, n_bits=32, dtype=torch.bfloat16, device="cuda", seed=0)
    centres = torch.randn(h, 512, d, generator=g, device="cuda")

    def clustered(n):
        pick = torch.randint(0, 512, (h, n), generator=g, device="cuda")
        x = centres.gather(1, pick.unsqueeze(-1).expand(h, n, d))
        return (x + 0.6 * torch.randn(h, n, d, generator=g, device="cuda")).unsqueeze(0).to(torch.bfloat16)

    for f in range(math.ceil(1.5 * mem.capacity / t)):
        kk = clustered(t)
        mem.write(kk, torch.randn(kk.shape, generator=g, device="cuda").to(torch.bfloat16), f, backend="triton")
    q = clustered(2048)
    _prof("memread", lambda: mem.attend(q, 64, backend="triton", select="levels"))
    keys_all = mem.keys.view(1, h, mem.capacity, d)
    vals_all = mem.values.view(1, h, mem.capacity, d)
    _prof("memread_dense", lambda: F.scaled_dot_product_attention(q, keys_all, vals_all))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = "dense131k,select131k_bk64,attn131k_bk64,attn131k_bk16,memread"
    p.add_argument("--only", default=names, help=f"comma-separated workloads (default: {names})")
    only = set(p.parse_args().only.split(","))
    print(torch.cuda.get_device_name(0), flush=True)
    attention(only)
    memory_read(only)


if __name__ == "__main__":
    main()
