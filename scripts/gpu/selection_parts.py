"""Where the pooled block selection's time goes on a GPU, and whether a float top-k path would
beat the fused integer kernel: at the wan-mini drop-in shape (1 x 3 x 33,792 x d 128, 1/8), the
Wan 1.3B 480p shape (1 x 12 x 32,760 x d 128, 1/32) and N = 131,072 (1 x 12, d 64, 1/32); key
blocks 64, query blocks 64 (the drop-in's default) on wan-mini and 128 (bench selection's) elsewhere, bf16, diffusers' (b, n, h, d) layout for the two Wan shapes.

Per shape: the library's path (``select_blocks(scorer="pooled", backend="triton")``: block means →
int8 codes → ``block_score_kernel`` with its four passes), its parts, and a float path (block means
→ one matmul → ``torch.topk`` → ascending sort), eager and in one CUDA graph; recall of each
(share of exact attention mass kept, 64 query blocks) beside the oracle at the same count, and how
many indices the two paths share. Inputs: `vidhash.bench.attention.video_like_qkv`. JSON to $OUT/selection_parts.json.
    python3 scripts/gpu/selection_parts.py"""
import json
import os

import torch
import triton

from vidhash.attention import select_blocks, selection_recall
from vidhash.bench.attention import WAN_1_3B_GRID, graph_ms, grid_for, video_like_qkv
from vidhash.kernels.block_score.naive import block_means, selection_codes
from vidhash.kernels.block_score.ops import select_from_codes
from vidhash.kernels.block_select.naive import forced_and_allowed, num_kept_blocks
from vidhash.ops.checks import BlockSelection
from vidhash.selection.oracle import oracle_recall


def bench(fn):
    fn(); torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=200) * 1000


def graph(fn):
    return graph_ms(fn) * 1000  # us


def float_select(q, k, density, bk=64, bq=128, forced_allowed=None):
    """Float pooled path: means, scores, top-k with forced blocks first, ascending indices."""
    nq, nk = q.shape[-2], k.shape[-2]
    kept = num_kept_blocks(nq, nk, density=density, block_size=bk, query_block_size=bq, local_blocks=1, sink_blocks=1, causal=False)
    forced, _ = forced_allowed
    score = torch.matmul(block_means(q, bq), block_means(k, bk).transpose(-1, -2))
    score = score.masked_fill(forced, float("inf"))
    idx = torch.topk(score, kept, dim=-1, sorted=False).indices.sort(dim=-1).values.to(torch.int32)
    return BlockSelection(idx, bk, bq, nq, nk, False)


def inputs(b, h, n, d, layout, seed=0):
    """The selection bench's video-like q, k, v (positional structure; random Gaussian inputs would
    give recall ≈ density), bf16, as diffusers' (b, n, h, d) layout viewed as (b, h, n, d) or contiguous."""
    grid = WAN_1_3B_GRID if n == 32760 else grid_for(n)
    q, k, v = video_like_qkv(grid, h, d, torch.bfloat16, "cuda", seed)
    if layout == "bnhd":
        return tuple(x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    return q, k, v


SHAPES = [("wan-mini 33,792 d128 1/8 bq64", (1, 3, 33792, 128, "bnhd"), 1 / 8, 64),  # the drop-in's default query blocks
          ("Wan 1.3B 32,760 d128 1/32 bq128", (1, 12, 32760, 128, "bnhd"), 1 / 32, 128),  # bench selection's
          ("N 131,072 d64 1/32 bq128", (1, 12, 131072, 64, "bhnd"), 1 / 32, 128)]
def measure(name, shp, density, bq):
    q, k, v = inputs(*shp)
    kw = dict(density=density, block_size=64, query_block_size=bq, scorer="pooled", backend="triton")
    nqb = -(-q.shape[-2] // bq)
    fa = forced_and_allowed(torch.arange(nqb, device="cuda"), q.shape[-2], k.shape[-2], bq, 64, 1, 1, False)
    lib = select_blocks(q, k, **kw)
    flt = float_select(q, k, density, bq=bq, forced_allowed=fa)
    kept = lib.kept
    qi, ki, shift = selection_codes(q, k, block_size=64, query_block_size=bq, scale=q.shape[-1] ** -0.5)
    r = {"shape": name, "kept": kept, "key_blocks": lib.num_key_blocks}
    r["lib_us"] = bench(lambda: select_blocks(q, k, **kw))
    r["lib_graph_us"] = graph(lambda: select_blocks(q, k, **kw))
    r["means_q_us"] = bench(lambda: block_means(q, bq))
    r["means_k_us"] = bench(lambda: block_means(k, 64))
    r["codes_us"] = bench(lambda: selection_codes(q, k, block_size=64, query_block_size=bq, scale=q.shape[-1] ** -0.5))
    r["kernel_us"] = bench(lambda: select_from_codes(qi, ki, shift, kept=kept, num_queries=q.shape[-2], num_keys=k.shape[-2],
                                                     block_size=64, query_block_size=bq, local_blocks=1, sink_blocks=1, causal=False))
    r["float_us"] = bench(lambda: float_select(q, k, density, bq=bq, forced_allowed=fa))
    r["float_graph_us"] = graph(lambda: float_select(q, k, density, bq=bq, forced_allowed=fa))
    same = (torch.sort(lib.indices, -1).values == flt.indices).float().mean().item()
    r["same_indices"] = same
    r["recall_lib"] = selection_recall(q, k, lib, max_query_blocks=64)
    r["recall_float"] = selection_recall(q, k, flt, max_query_blocks=64)
    r["oracle"] = oracle_recall(q, k, kept, block_size=64, query_block_size=bq, max_query_blocks=64, local_blocks=1, sink_blocks=1)
    print({key: (round(val, 3) if isinstance(val, float) else val) for key, val in r.items()}, flush=True)
    return r


rows = []
for name, shp, density, bq in SHAPES:
    rows.append(measure(name, shp, density, bq))
    torch.cuda.empty_cache()

print("| shape | kept | lib µs (graph) | means q / k | codes | kernel | float µs (graph) | same idx | recall lib / float / oracle |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['shape']} | {r['kept']} / {r['key_blocks']} | {r['lib_us']:.0f} ({r['lib_graph_us']:.0f}) | {r['means_q_us']:.0f} / {r['means_k_us']:.0f} | "
          f"{r['codes_us']:.0f} | {r['kernel_us']:.0f} | {r['float_us']:.0f} ({r['float_graph_us']:.0f}) | {r['same_indices']:.3f} | "
          f"{r['recall_lib']:.3f} / {r['recall_float']:.3f} / {r['oracle']:.3f} |")
out = os.environ.get("OUT", ".")
os.makedirs(out, exist_ok=True)
json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "rows": rows},
          open(os.path.join(out, "selection_parts.json"), "w"), indent=1)
