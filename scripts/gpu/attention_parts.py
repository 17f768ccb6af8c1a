"""One-layer kernel timings on a GPU, by part (correctness checks first, then medians of
``triton.testing.do_bench`` and of CUDA-graph replays; JSON to $OUT/PART.json):

* ``--part remainder`` —
  where one drop-in self-attention's time goes at the wan-mini shape (selection, the sparse forward
  on pointer gathers vs TMA tiles, the remainder's parts, ``hash_attention`` with and without it in
  one CUDA graph), and the two forward kernels at N = 131,072 (12 heads, d 64, 1/32);
* ``--part selection`` — the pooled selection's int8-level form (``backend="triton"``: block means,
  int8 codes in one kernel, the four-pass level kernel; its parts timed apart, the level kernel at
  three tiles; the torch codes beside the kernel's; ``backend="auto"`` on CUDA) against the
  float form (``select_blocks_scored``: float scores and one exact top-k, ``auto`` off CUDA; its
  parts — scores, masks, ``rank_top``, the bare ``topk`` — timed apart too), eager and in a CUDA graph, with recall, oracle and shared indices, at
  the wan-mini, Wan 1.3B 480p and N = 131,072 shapes; the level kernel's ``STORE`` form beside the
  default, for pooled's kernel and for ``subgrid``'s whole selection (eager and in a graph);
* ``--part mass`` — the drop-in's ``reuse_mass`` pass (exact block mass) at the wan-mini shape: the
  torch reference in small and large chunks against the Triton kernel (``kernels/block_mass``);
* ``--part backward`` — forward + backward on the TMA kernels (``VIDHASH_TMA=1``) against the pointer
  kernels, gradients checked against float32 autograd through the reference, timed at N = 131,072
  and the wan-mini training shape (8 × 3 heads × 33,792 tokens, d 128, 1/8);
* ``--part backward16`` — key blocks of 16: the per-block dk/dv kernel (``VIDHASH_DKDV_SUB=2`` and
  ``4``) against the default and against blocks of 64, at the same two shapes;
* ``--part dkdv-order`` — the dk/dv programs' start order (``VIDHASH_DKDV_ORDER``: longest query
  lists first against place order after the heavy lists) at N = 131,072, key blocks of 64 and 16;
* ``--part tma-configs`` — each config of the TMA forward's autotune list timed alone at the
  wan-mini, Wan 1.3B and N = 131,072 shapes, with the autotuner's pick.

    python3 scripts/gpu/attention_parts.py --part remainder|selection|backward|backward16|dkdv-order|tma-configs|mass
"""
import argparse
import json
import os

import torch
import triton

from vidhash.attention import (block_sparse_attention, hash_attention, merge_attention, select_blocks,
                               selection_recall)
from vidhash.bench.attention import WAN_1_3B_GRID, graph_ms, grid_for, video_like_qkv
from vidhash.kernels.block_score.naive import block_means, float_codes, selection_codes  # the remainder's means too
from vidhash.kernels.block_score import ops as block_score_ops
from vidhash.kernels.block_score.ops import select_from_codes
from vidhash.kernels.block_select.naive import forced_and_allowed
from vidhash.kernels.remainder.naive import block_mean_remainder, unkept_blocks
from vidhash.kernels.remainder.ops import block_mean_remainder_triton
from vidhash.kernels.sparse_attention.ops import block_sparse_attention_triton
from vidhash.selection.oracle import oracle_recall
from vidhash.selection.scorers import order_keys, rank_top, select_blocks_scored


def _write(name: str, **data) -> None:
    """``$OUT/<name>.json`` (``.`` without ``$OUT``): the device, torch and triton versions, then ``data``."""
    out = os.environ.get("OUT", ".")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as fh:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                   **data}, fh, indent=1)


def _print_results(res: dict, width: int) -> None:
    for key, val in res.items():
        print(f"{key:{width}s} {val if isinstance(val, str) else f'{val:.4g}'}")


def part_remainder():
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
    _write("remainder", checks=checks, us=res)


def part_selection():
    def bench(fn):
        fn(); torch.cuda.synchronize()
        return triton.testing.do_bench(fn, warmup=25, rep=200) * 1000


    def graph(fn):
        return graph_ms(fn) * 1000  # us


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
        kw = dict(density=density, block_size=64, query_block_size=bq, scorer="pooled")
        lib = select_blocks(q, k, backend="triton", **kw)
        flt = select_blocks_scored(q, k, **kw)  # the float form (select_blocks' auto off CUDA)
        kept = lib.kept
        qi, ki, shift = selection_codes(q, k, block_size=64, query_block_size=bq, scale=q.shape[-1] ** -0.5)
        r = {"shape": name, "kept": kept, "key_blocks": lib.num_key_blocks}
        r["lib_us"] = bench(lambda: select_blocks(q, k, backend="triton", **kw))
        r["lib_graph_us"] = graph(lambda: select_blocks(q, k, backend="triton", **kw))
        r["means_q_us"] = bench(lambda: block_means(q, bq))
        r["means_k_us"] = bench(lambda: block_means(k, 64))
        def codes():  # the library's codes: means in torch, then one quantisation kernel
            return block_score_ops.quantize_codes_triton(*float_codes(q, k, block_size=64, query_block_size=bq,
                                                                      scale=q.shape[-1] ** -0.5))
        r["codes_same"] = all(torch.equal(a, b) for a, b in zip(codes(), (qi, ki, shift)))
        r["codes_us"] = bench(codes)
        r["codes_torch_us"] = bench(lambda: selection_codes(q, k, block_size=64, query_block_size=bq, scale=q.shape[-1] ** -0.5))
        cq, ck, factor, rows_q, rows_k = float_codes(q, k, block_size=64, query_block_size=bq, scale=q.shape[-1] ** -0.5)
        r["quantize_us"] = bench(lambda: block_score_ops.quantize_codes_triton(cq, ck, factor, rows_q, rows_k))
        r["kernel_us"] = bench(lambda: select_from_codes(qi, ki, shift, kept=kept, num_queries=q.shape[-2], num_keys=k.shape[-2],
                                                         block_size=64, query_block_size=bq, local_blocks=1, sink_blocks=1, causal=False))
        # the level kernel's tiles (ops.TILES; indices must equal the default's)
        run = lambda: select_from_codes(qi, ki, shift, kept=kept, num_queries=q.shape[-2], num_keys=k.shape[-2],
                                        block_size=64, query_block_size=bq, local_blocks=1, sink_blocks=1, causal=False)
        want, variants = run(), {}
        for tiles in (None, (64, 32, 4), (16, 32, 4)):
            block_score_ops.TILES = tiles
            key = 'x'.join(map(str, tiles)) if tiles else 'default'
            try:
                same = bool(torch.equal(run(), want))
                variants[key] = {"same": same, "us": bench(run) if same else None}
            except Exception as e:  # a tile that does not compile here: recorded, not fatal
                variants[key] = {"same": False, "us": None, "error": f"{type(e).__name__}: {e}"[:200]}
        block_score_ops.TILES = None
        # the STORE form (levels written by the coarse pass, read back): pooled's kernel and subgrid's whole
        # selection, each against the default form (indices must be equal)
        sub = dict(kw, scorer="subgrid")
        subgrid = lambda: select_blocks(q, k, backend="triton", **sub)
        sub_want = subgrid().indices
        r["subgrid_us"], r["subgrid_graph_us"] = bench(subgrid), graph(subgrid)
        block_score_ops.STORE_LEVELS = True
        try:
            same = bool(torch.equal(run(), want))
            variants["store"] = {"same": same, "us": bench(run) if same else None}
            r["subgrid_store_same"] = bool(torch.equal(subgrid().indices, sub_want))
            r["subgrid_store_us"], r["subgrid_store_graph_us"] = bench(subgrid), graph(subgrid)
        finally:
            block_score_ops.STORE_LEVELS = False
        r["kernel_variants"] = variants
        print({k2: v2 for k2, v2 in variants.items()}, flush=True)
        r["float_us"] = bench(lambda: select_blocks_scored(q, k, **kw))
        r["float_graph_us"] = graph(lambda: select_blocks_scored(q, k, **kw))
        qm, km = block_means(q, bq), block_means(k, 64)  # the float path's parts: scores, then the exact top-k
        score = torch.matmul(qm, km.transpose(-1, -2))
        fa = forced_and_allowed(torch.arange(qm.shape[2], device="cuda"), q.shape[-2], k.shape[-2], bq, 64, 1, 1, False)
        r["float_scores_us"] = bench(lambda: torch.matmul(qm, km.transpose(-1, -2)))
        r["float_masks_us"] = bench(lambda: forced_and_allowed(torch.arange(qm.shape[2], device="cuda"), q.shape[-2],
                                                               k.shape[-2], bq, 64, 1, 1, False))
        r["float_rank_us"] = bench(lambda: rank_top(score, *fa, kept))
        r["float_topk_us"] = bench(lambda: order_keys(score).topk(kept, dim=-1, sorted=False))
        r["same_indices"] = (lib.indices == flt.indices).float().mean().item()
        r["recall_lib"] = selection_recall(q, k, lib, max_query_blocks=64)
        r["recall_float"] = selection_recall(q, k, flt, max_query_blocks=64)
        r["oracle"] = oracle_recall(q, k, kept, block_size=64, query_block_size=bq, max_query_blocks=64, local_blocks=1, sink_blocks=1)
        print({key: (round(val, 3) if isinstance(val, float) else val) for key, val in r.items()}, flush=True)
        return r


    rows = []
    for name, shp, density, bq in SHAPES:
        rows.append(measure(name, shp, density, bq))
        torch.cuda.empty_cache()

    print("| shape | kept | levels µs (graph) | means q / k | codes (of it quantize; torch codes) | level kernel | float µs (graph) | same idx | recall levels / float / oracle |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['kept']} / {r['key_blocks']} | {r['lib_us']:.0f} ({r['lib_graph_us']:.0f}) | {r['means_q_us']:.0f} / {r['means_k_us']:.0f} | "
              f"{r['codes_us']:.0f} ({r['quantize_us']:.0f}; {r['codes_torch_us']:.0f}){'' if r['codes_same'] else ' DIFFER'} | {r['kernel_us']:.0f} | {r['float_us']:.0f} ({r['float_graph_us']:.0f}) | {r['same_indices']:.3f} | "
              f"{r['recall_lib']:.3f} / {r['recall_float']:.3f} / {r['oracle']:.3f} |")
    print("\n| shape | " + " | ".join(rows[0]["kernel_variants"]) + " |")
    print("|---|" + "---|" * len(rows[0]["kernel_variants"]))
    for r in rows:
        cells = [f"{v['us']:.0f}" if v["us"] is not None else ("differs" if "error" not in v else "error")
                 for v in r["kernel_variants"].values()]
        print(f"| {r['shape']} | " + " | ".join(cells) + " |")
    _write("selection", rows=rows)


def _grads(q0, k0, v0, sel, dout, fn=block_sparse_attention_triton, dtype=None):
    """out, dq, dk, dv (float32) of ``fn`` on fresh leaves of q0, k0, v0 (in ``dtype`` if given)."""
    q, k, v = (t.detach().to(dtype or t.dtype).requires_grad_(True) for t in (q0, k0, v0))
    out = fn(q, k, v, sel)
    out.backward(dout.to(out.dtype))
    return [x.float() for x in (out, q.grad, k.grad, v.grad)]


def _fwd_bwd_ms(q0, k0, v0, sel, dout):
    """Median ms of the Triton kernels' forward + backward."""
    q, k, v = (t.detach().requires_grad_(True) for t in (q0, k0, v0))

    def step():
        out = block_sparse_attention_triton(q, k, v, sel)
        out.backward(dout)
    return triton.testing.do_bench(step, warmup=10, rep=200, grad_to_none=[q, k, v])


def part_backward():
    res = {}

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()


    # correctness: 1 x 3 x 2,000 (bnhd), d 128, blocks 64 / query blocks 64 and 128
    for bq in (64, 128):
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, 2000, 3, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
        sel = select_blocks(q, k, density=0.3, block_size=64, query_block_size=bq)
        dout = torch.randn(1, 3, 2000, 128, device="cuda", dtype=torch.bfloat16)
        ref = _grads(q, k, v, sel, dout, fn=block_sparse_attention, dtype=torch.float32)
        os.environ["VIDHASH_TMA"] = "1"
        tma = _grads(q, k, v, sel, dout)
        os.environ["VIDHASH_TMA"] = "0"
        ptr = _grads(q, k, v, sel, dout)
        for name, a, b, r in zip(("out", "dq", "dk", "dv"), tma, ptr, ref):
            res[f"check bq{bq} {name} tma vs ref"] = rel(a, r)
            res[f"check bq{bq} {name} pointer vs ref"] = rel(b, r)




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
            res[f"{name} fwd+bwd ms tma={flag}"] = _fwd_bwd_ms(q, k, v, sel, dout)
        import vidhash.kernels.sparse_attention.kernel_tma as T
        for kern in (T.sparse_attn_fwd_tma_kernel, T.sparse_attn_bwd_dq_tma_kernel, T.sparse_attn_bwd_dkdv_tma_kernel):
            res[f"{name} pick {kern.fn.__name__}"] = str(getattr(kern, "best_config", None))  # the autotuner's


    timings("N 131,072 d64 1/32", grid_for(131072), 1, 12, 64, 1 / 32, 128, "bhnd")
    torch.cuda.empty_cache()
    timings("wan-mini training 8x33,792 d128 1/8", (33, 32, 32), 8, 3, 128, 1 / 8, 64, "bnhd")
    os.environ.pop("VIDHASH_TMA")
    _print_results(res, 50)
    _write("backward", results=res)


def part_backward16():
    """Key blocks of 16 in the backward: the per-block dk/dv kernel (``VIDHASH_DKDV_SUB=2`` / ``4``:
    q/dO once per (group of 2 / 4 blocks, query block), products only for kept blocks, transposed
    accumulators) against the default (one block of 16 a program), blocks of 64 as the target's
    yardstick (issue 18: fwd+bwd at 16 within 1.3x of 64). Gradients against float32 autograd
    through the reference first."""
    res = {}
    for d, causal in ((64, False), (128, False), (64, True)):
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, 3, 3000, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        sel = select_blocks(q, k, density=0.2, block_size=16, query_block_size=128, causal=causal)
        dout = torch.randn_like(q)
        ref = _grads(q, k, v, sel, dout, fn=block_sparse_attention, dtype=torch.float32)
        for flag in ("0", "2", "4"):
            os.environ["VIDHASH_DKDV_SUB"] = flag
            got = _grads(q, k, v, sel, dout)
            for name, a, r in zip(("dk", "dv"), got[2:], ref[2:]):
                err = ((a - r).norm() / r.norm()).item()
                res[f"check d{d}{' causal' if causal else ''} {name} sub={flag} vs ref"] = err
                assert err < 2e-2, f"d{d} causal={causal} {name} sub={flag}: relative error {err:.3e} (bf16 bound 2e-2)"


    def timings(name, grid, b, h, d, density, bq):
        q, k, v = video_like_qkv(grid, h, d, torch.bfloat16, "cuda")
        q, k, v = (x.expand(b, -1, -1, -1).contiguous() for x in (q, k, v))
        dout = torch.randn_like(q)
        for bk, flags in ((64, ("0",)), (16, ("0", "2", "4"))):
            sel = select_blocks(q, k, density=density, block_size=bk, query_block_size=bq)
            fwd = triton.testing.do_bench(lambda: block_sparse_attention_triton(q, k, v, sel), warmup=10, rep=200)
            res[f"{name} bk{bk} fwd ms"] = fwd
            for flag in flags:
                os.environ["VIDHASH_DKDV_SUB"] = flag
                both = _fwd_bwd_ms(q, k, v, sel, dout)
                res[f"{name} bk{bk} sub={flag} fwd+bwd ms"] = both
                res[f"{name} bk{bk} sub={flag} bwd ms (difference)"] = both - fwd
        for flag in ("0", "2", "4"):
            res[f"{name} fwd+bwd bk16 sub={flag} / bk64"] = res[f"{name} bk16 sub={flag} fwd+bwd ms"] / res[f"{name} bk64 sub=0 fwd+bwd ms"]
        torch.cuda.empty_cache()

    timings("N 131,072 d64 1/32", grid_for(131072), 1, 12, 64, 1 / 32, 128)
    timings("wan-mini training 8x33,792 d128 1/8", (33, 32, 32), 8, 3, 128, 1 / 8, 64)
    os.environ.pop("VIDHASH_DKDV_SUB")
    _print_results(res, 60)
    _write("backward16", results=res)


def part_dkdv_order():
    """The dk/dv programs' start order (``VIDHASH_DKDV_ORDER``: ``count``, longest query lists first,
    against ``local``, the heavy lists first and then the key blocks in place order) at N = 131,072
    (12 heads, d 64, 1/32, query blocks of 128, the pooled selection ``bench attention`` uses), key
    blocks of 64 (TMA dk/dv) and 16 (pointer dk/dv): the gradients of the two orders compared bit for
    bit first, then the backward alone (its kernels' own entry, forward outputs kept) and the forward
    + backward, each order timed twice in alternation (A B A B)."""
    from vidhash.kernels.ops import select_blocks_codes
    from vidhash.kernels.sparse_attention import ops as sops

    res = {}
    q, k, v = video_like_qkv(grid_for(131072), 12, 64, torch.bfloat16, "cuda", 0)
    do, scale = torch.randn_like(q), q.shape[-1] ** -0.5
    for bk in (64, 16):
        sel = select_blocks_codes(q, k, density=1 / 32, block_size=bk, query_block_size=128, causal=False,
                                  backend="triton")
        out, lse = sops.sparse_attention_forward(q, k, v, sel, scale)
        grads = {}
        for mode in ("count", "local"):
            os.environ["VIDHASH_DKDV_ORDER"] = mode
            grads[mode] = sops.sparse_attention_backward(do, q, k, v, out, lse, None, sel, scale)
        same = all(torch.equal(a, b) for a, b in zip(grads["count"], grads["local"]))
        res[f"bk{bk} gradients equal (count vs local)"] = float(same)
        assert same, f"bk{bk}: the two orders gave different gradients"
        ptr = sops.transpose_selection(sel, 1)[0].long()
        counts = (ptr[1:] - ptr[:-1]).float()
        res[f"bk{bk} query-list length mean"] = counts.mean().item()
        res[f"bk{bk} query-list length max"] = counts.max().item()
        for rnd in range(2):
            for mode in ("count", "local"):
                os.environ["VIDHASH_DKDV_ORDER"] = mode
                bwd = triton.testing.do_bench(
                    lambda: sops.sparse_attention_backward(do, q, k, v, out, lse, None, sel, scale), warmup=5, rep=100)
                res[f"bk{bk} {mode} bwd ms (round {rnd})"] = bwd
                res[f"bk{bk} {mode} fwd+bwd ms (round {rnd})"] = _fwd_bwd_ms(q, k, v, sel, do)
        torch.cuda.empty_cache()
    os.environ.pop("VIDHASH_DKDV_ORDER")
    _print_results(res, 50)
    _write("dkdv_order", results=res)


def _cfg_label(name, cfg):
    return f"{name} w{cfg.num_warps} s{cfg.num_stages}" + (f" maxnreg {cfg.maxnreg}" if cfg.maxnreg else "")


def part_tma_configs():
    """Each config of the TMA forward's autotune list timed alone (its own launch, the others
    set aside), at the wan-mini drop-in shape (d 128, 1/8), the Wan 1.3B shape (d 128, 1/32) and
    N = 131,072 (d 64, 1/32), with the autotuner's pick: whether the 128-register config (two
    programs an SM at d 128, kernel_tma._configs) beats the uncapped ones (NOTES.md's prediction).
    Then all configs interleaved over 7 rounds (median of medians), so launch-to-launch drift does
    not decide a few-percent difference."""
    import vidhash.kernels.sparse_attention.kernel_tma as T

    kern = T.sparse_attn_fwd_tma_kernel
    every = list(kern.configs)
    res = {}
    shapes = (("wan-mini 33,792 d128 1/8", 33792, 3, 128, 1 / 8, 64), ("Wan 1.3B 32,760 d128 1/32", 32760, 12, 128, 1 / 32, 128),
              ("N 131,072 d64 1/32", 131072, 12, 64, 1 / 32, 128))
    os.environ["VIDHASH_TMA"] = "1"
    try:
        for name, n, h, d, density, bq in shapes:
            torch.manual_seed(0)
            q, k, v = (torch.randn(1, n, h, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
            k = k + 2 * k[:, :, ::64].repeat_interleave(64, 2)[:, :, :n]  # keys clustered per block of 64
            sel = select_blocks(q, k, density=density, block_size=64, query_block_size=bq, scorer="pooled", backend="triton")
            kern.configs = every
            kern.cache.clear()
            ref = block_sparse_attention_triton(q, k, v, sel)
            res[f"{name} autotuned ms"] = triton.testing.do_bench(lambda: block_sparse_attention_triton(q, k, v, sel), warmup=25, rep=200)
            res[f"{name} autotuner's pick"] = str(getattr(kern, "best_config", None))
            for cfg in every:
                kern.configs = [cfg]
                kern.cache.clear()
                label = _cfg_label(name, cfg)
                try:
                    out = block_sparse_attention_triton(q, k, v, sel)
                except Exception as e:  # out of resources: the autotuner never picks it
                    res[label] = f"failed: {type(e).__name__}"
                    continue
                res[label + " max |diff| vs autotuned"] = (out.float() - ref.float()).abs().max().item()
                res[label + " ms"] = triton.testing.do_bench(lambda: block_sparse_attention_triton(q, k, v, sel), warmup=25, rep=200)
            # interleaved: every config once a round, 7 rounds, the median of each config's round medians
            # (separate launches of one config moved ~7 % on 2026-12-05; rotated rounds spread drift over every config)
            ran = [c for c in every if not isinstance(res.get(_cfg_label(name, c)), str)]
            rounds = {_cfg_label(name, c): [] for c in ran}
            for r in range(7):
                for cfg in ran[r % len(ran):] + ran[:r % len(ran)]:  # a rotated order each round
                    kern.configs = [cfg]
                    kern.cache.clear()
                    rounds[_cfg_label(name, cfg)].append(triton.testing.do_bench(
                        lambda: block_sparse_attention_triton(q, k, v, sel), warmup=5, rep=40, return_mode="median"))
            for label, ms in rounds.items():
                res[label + " interleaved median ms"] = sorted(ms)[len(ms) // 2]
            del q, k, v, ref
            torch.cuda.empty_cache()
    finally:
        kern.configs = every
        kern.cache.clear()
        os.environ.pop("VIDHASH_TMA")
    _print_results(res, 64)
    _write("tma_configs", results=res)


def part_mass():
    """The drop-in's reuse_mass pass at wan-mini's shape (1 × 3 heads × 33,792 × d 128, bf16, blocks of
    64): the torch reference in 2^24- and 2^27-element chunks against the Triton kernel, at query
    strides 1, 4, 16 — eager and in a CUDA graph, with the largest difference of the masses."""
    from vidhash.kernels.block_mass.ops import block_mass_triton
    from vidhash.selection.oracle import block_mass

    torch.manual_seed(0)
    q, k = (torch.randn(1, 33792, 3, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(2))
    rows = []
    for stride in (1, 4, 16):
        kw = dict(block_size=64, query_block_size=64, query_stride=stride)
        ref, _ = block_mass(q, k, **kw, chunk_elems=1 << 27)
        got, _ = block_mass_triton(q, k, **kw)
        r = {"stride": stride, "max_abs_diff": (got - ref).abs().max().item()}
        for name, fn in (("torch 2^24", lambda: block_mass(q, k, **kw)), ("torch 2^27", lambda: block_mass(q, k, **kw, chunk_elems=1 << 27)),
                         ("triton", lambda: block_mass_triton(q, k, **kw))):
            fn(); torch.cuda.synchronize()
            r[f"{name} ms"] = triton.testing.do_bench(fn, warmup=5, rep=50)
            try:
                r[f"{name} graph ms"] = graph_ms(fn)
            except Exception as exc:  # e.g. a host sync in the reference's checks: no graph
                r[f"{name} graph ms"] = float("nan")
                r[f"{name} graph error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
        rows.append(r)
        print(r, flush=True)
    print("| stride | torch 2^24 ms (graph) | torch 2^27 ms (graph) | triton ms (graph) | max diff |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stride']} | {r['torch 2^24 ms']:.2f} ({r['torch 2^24 graph ms']:.2f}) | {r['torch 2^27 ms']:.2f} "
              f"({r['torch 2^27 graph ms']:.2f}) | {r['triton ms']:.2f} ({r['triton graph ms']:.2f}) | {r['max_abs_diff']:.2e} |")
    _write("mass", rows=rows)


PARTS = {"dkdv-order": part_dkdv_order, "remainder": part_remainder, "selection": part_selection, "backward": part_backward, "backward16": part_backward16,
         "tma-configs": part_tma_configs, "mass": part_mass}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="one-layer kernel timings on a GPU, by part")
    ap.add_argument("--part", choices=sorted(PARTS), required=True)
    PARTS[ap.parse_args().part]()
