"""The workloads behind issue 18's missed targets, each run once inside an NVTX range named ``prof``
after a warm-up (autotuning, compilation) outside it, so that Nsight Compute profiles exactly one call
of each and nothing else:

* ``dense131k`` — dense SDPA forward at N = 131,072 (12 heads, d 64, bf16): the efficiency reference;
* ``attn131k_bk64`` / ``attn131k_bk16`` — the sparse forward and backward kernels (called directly, in
  this thread) at 1/32 on the
  selection ``bench attention`` uses (pooled, query blocks of 128), key blocks of 64 (TMA kernels)
  and 16 (pointer kernels); ``attn131k_bk16sub``: blocks of 16 with the per-block dk/dv kernel
  (``VIDHASH_DKDV_SUB=1``);
* ``select131k_bk64`` (``select131k_bk16``: blocks of 16) — the pooled selection (means, codes, level kernel);
* ``memread`` — the hashed-memory read of ``bench memory``'s default shape (2,048 queries × 65,536
  entries, 12 heads, top-64) with the one-pass ``levels`` select, then dense SDPA over every entry.

    ncu --nvtx --nvtx-include "prof/" --clock-control none --section SpeedOfLight --section Occupancy \
        --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
        --section ComputeWorkloadAnalysis -o kernels python3 scripts/gpu/ncu_kernels.py [--only NAME,...]
    ncu --import kernels.ncu-rep --csv --page details > ncu.csv

Without ncu it only runs; ``--smoke`` runs every workload at tiny shapes on the CPU under Triton's
interpreter (``TRITON_INTERPRET=1``), the check before spending GPU time on it.
"""
import argparse
import math
import os

import torch
import torch.nn.functional as F

from vidhash.bench.attention import grid_for, video_like_qkv
from vidhash.kernels.ops import select_blocks_codes
from vidhash.kernels.sparse_attention import ops as sparse_ops
from vidhash.memory import HashedMemory


# the issue-18 shapes; --smoke: tiny ones on the CPU (TRITON_INTERPRET=1), a check that every workload runs
FULL = dict(device="cuda", n=131072, heads=12, buckets=4096, frame=1560, queries=2048)
SMOKE = dict(device="cpu", n=2048, heads=2, buckets=64, frame=256, queries=128)


def _prof(name, fn, dev):
    fn()  # warm-up: autotune and compile outside the range
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_push("prof")  # one flat range: the kernels come in the order printed
    fn()
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()
    print(f"profiled {name}", flush=True)


def attention(only, cfg):
    dev = cfg["device"]
    q, k, v = video_like_qkv(grid_for(cfg["n"]), cfg["heads"], 64, torch.bfloat16, dev, 0)
    if "dense131k" in only:
        _prof("dense131k", lambda: F.scaled_dot_product_attention(q, k, v), dev)
    for bk in (64, 16):
        kw = dict(density=1 / 32, block_size=bk, query_block_size=128, causal=False)
        if f"select131k_bk{bk}" in only:
            _prof(f"select131k_bk{bk}", lambda: select_blocks_codes(q, k, backend="triton", **kw), dev)
        if f"attn131k_bk{bk}" not in only and not (bk == 16 and "attn131k_bk16sub" in only):
            continue
        sel = select_blocks_codes(q, k, backend="triton", **kw)
        do, scale = torch.randn_like(q), q.shape[-1] ** -0.5

        def fwd_bwd():  # the kernels' own entry points: autograd would run the backward on another
            # thread, outside this thread's NVTX range (ncu would skip the backward kernels)
            out, lse = sparse_ops.sparse_attention_forward(q, k, v, sel, scale)
            sparse_ops.sparse_attention_backward(do, q, k, v, out, lse, None, sel, scale)

        if f"attn131k_bk{bk}" in only:
            _prof(f"attn131k_bk{bk}", fwd_bwd, dev)
        if bk == 16 and "attn131k_bk16sub" in only:  # the same with the per-block dk/dv kernel
            os.environ["VIDHASH_DKDV_SUB"] = "1"
            try:
                _prof("attn131k_bk16sub", fwd_bwd, dev)
            finally:
                os.environ.pop("VIDHASH_DKDV_SUB")


def memory_read(only, cfg):
    if "memread" not in only:
        return
    dev, h, d, t = cfg["device"], cfg["heads"], 64, cfg["frame"]
    g = torch.Generator(device=dev).manual_seed(0)
    mem = HashedMemory(cfg["buckets"], 16, h, d, n_bits=32, dtype=torch.bfloat16, device=dev, seed=0)
    centres = torch.randn(h, 512, d, generator=g, device=dev)

    def clustered(n):
        pick = torch.randint(0, 512, (h, n), generator=g, device=dev)
        x = centres.gather(1, pick.unsqueeze(-1).expand(h, n, d))
        return (x + 0.6 * torch.randn(h, n, d, generator=g, device=dev)).unsqueeze(0).to(torch.bfloat16)

    for f in range(math.ceil(1.5 * mem.capacity / t)):
        kk = clustered(t)
        mem.write(kk, torch.randn(kk.shape, generator=g, device=dev).to(torch.bfloat16), f, backend="triton")
    q = clustered(cfg["queries"])
    _prof("memread", lambda: mem.attend(q, 64, backend="triton", select="levels"), dev)
    keys_all = mem.keys.view(1, h, mem.capacity, d)
    vals_all = mem.values.view(1, h, mem.capacity, d)
    _prof("memread_dense", lambda: F.scaled_dot_product_attention(q, keys_all, vals_all), dev)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = "dense131k,select131k_bk64,attn131k_bk64,attn131k_bk16,attn131k_bk16sub,memread"
    p.add_argument("--only", default=names, help=f"comma-separated workloads (default: {names})")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (needs TRITON_INTERPRET=1)")
    args = p.parse_args()
    only, cfg = set(args.only.split(",")), SMOKE if args.smoke else FULL
    print(torch.cuda.get_device_name(0) if cfg["device"] == "cuda" else "cpu (smoke)", flush=True)
    attention(only, cfg)
    memory_read(only, cfg)


if __name__ == "__main__":
    main()
