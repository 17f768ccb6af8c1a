"""Hash-attention kernels against dense SDPA and FlexAttention, with the recall of every selection.

    vidhash bench attention --sizes 16384,65536,131072,262144 --block-sizes 64,16 --json attention.json

One process, one device. For each size (12 heads, head_dim 64, bf16, non-causal by default)
and Wan 1.3B's self-attention at 81 frames 480p (latent 21×60×104, patch (1,2,2) → 21·30·52 =
32,760 tokens, 12 heads, head_dim 128; ``--no-wan`` skips it) it times with
``triton.testing.do_bench`` (median, L2 flushed between runs):

* dense SDPA forward and forward+backward;
* FlexAttention on the same selected blocks (:mod:`vidhash.integrations.flex`): the ``BlockMask``
  built from the vidhash indices (build time, with the backward's transposed lists) and the
  compiled kernel (kernel time) — errors are reported;
* vidhash: selection alone (and its parts), attention alone, selection+attention forward,
  forward+backward (the selection and selection+attention forward also replayed as one CUDA
  graph: at small shapes an eager row times the host's launches, not the kernels) — selection by ``--scorer``: ``pooled`` (default, as the library's
  ``select_blocks`` / ``hash_attention`` on CUDA: int8 block codes and the level kernel) or
  ``simhash`` (the SimHash signature and selection kernels, fused with the attention);
* for each key-block size in ``--block-sizes`` at one density (default 1/32).

Next to each row: the recall of the selection (share of the exact attention mass the kept
blocks hold, ``vidhash.attention.selection_recall`` over ``--recall-blocks`` query blocks), the
oracle's (the same count of the heaviest key blocks per query block,
``vidhash.selection.oracle_recall``, same query blocks) and the relative error of the sparse
output against dense attention on those queries (``vidhash.selection.attention_error``).
``vidhash bench selection`` compares the scorers.

Inputs (``q, k``) have video-like structure, since random Gaussian q/k make any selection
meaningless (recall ≈ density): tokens sit on a (frames, height, width) grid; each token's
feature is a random Fourier embedding of its position (smooth in space and time, with
repeats far apart), mixed per head by one random matrix for both q and k, plus Gaussian
noise (q = 3·(f·W + 0.5·n₁), k = f·W + 0.5·n₂); v is Gaussian.
"""
from __future__ import annotations

import math
import os
import time

import torch
import torch.nn.functional as F

from vidhash.attention import selection_recall
from vidhash.bench import recorded_flags
from vidhash.files import write_json
from vidhash.integrations.flex import flex_attention_fn, flex_block_mask, flex_kernel_options
from vidhash.selection.oracle import attention_error, eval_query_blocks, oracle_recall

# Wan 2.1 1.3B at 81 frames, 480×832: VAE 4× time (1 + 80/4 = 21), 8× space; patch (1, 2, 2)
WAN_1_3B_GRID = (21, 30, 52)
WAN_1_3B_HEADS, WAN_1_3B_HEAD_DIM = 12, 128


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def grid_for(n: int) -> tuple[int, int, int]:
    """A (frames, height, width) grid of exactly ``n`` tokens: 32×32 frames when possible."""
    if n % 1024 == 0:
        return (n // 1024, 32, 32)
    return (1, 1, n)


def video_like_qkv(grid, heads: int, d: int, dtype, device, seed: int = 0):
    """q, k, v ``(1, heads, t·h·w, d)`` with positional structure (see the module docstring)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    t, hh, ww = grid
    pos = torch.stack(torch.meshgrid(
        torch.arange(t, dtype=torch.float32), torch.arange(hh, dtype=torch.float32),
        torch.arange(ww, dtype=torch.float32), indexing="ij"), -1).reshape(-1, 3).to(device)
    n = pos.shape[0]
    # frequencies: a few cycles over ~8-64 tokens of each axis
    freq = (torch.randn(3, d // 2, generator=g) * torch.tensor([0.15, 0.25, 0.25]).unsqueeze(-1)).to(device)
    phase = (torch.rand(d // 2, generator=g) * 2 * math.pi).to(device)
    ang = pos @ freq + phase
    feat = torch.cat([ang.cos(), ang.sin()], -1) * math.sqrt(2.0)  # (n, d), unit variance
    mix = (torch.randn(heads, d, d, generator=g) / math.sqrt(d)).to(device)
    base = torch.einsum("nd,hde->hne", feat, mix)  # (heads, n, d)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    noise = lambda: torch.randn(heads, n, d, device=device, generator=gen)
    q = 3.0 * (base + 0.5 * noise())
    k = base + 0.5 * noise()
    v = noise()
    return tuple(x.unsqueeze(0).to(dtype).contiguous() for x in (q, k, v))


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
def _bench(fn, rep_ms: int) -> float:
    if not torch.cuda.is_available():  # CPU smoke runs (interpreter): one call, wall clock
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=max(10, rep_ms // 4), rep=rep_ms, return_mode="median"))


def graph_ms(fn, rep_ms: int = 200) -> float:
    """Median ms of replaying one CUDA graph of ``fn`` (warmed up on a side stream first): the
    kernels' time without the host's launch overhead, as a compiled ``reduce-overhead`` model sees it."""
    import triton.testing

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return float(triton.testing.do_bench(graph.replay, warmup=max(10, rep_ms // 4), rep=rep_ms, return_mode="median"))


def _try(fn):
    try:
        return fn(), None
    except Exception as err:  # noqa: BLE001 - reported in the table
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"


def run_shape(name: str, grid, heads: int, d: int, args) -> list[dict]:
    """Every row of one shape: dense SDPA, then vidhash (and FlexAttention) per key-block size."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    q, k, v = video_like_qkv(grid, heads, d, dtype, args.device, args.seed)
    base = dict(shape=name, n=q.shape[-2], heads=heads, head_dim=d, causal=args.causal)
    # 1. dense SDPA
    rows, dense_fwd, dense_fb = _dense_rows(q, k, v, base, args)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    # 2. per key-block size: the selection, its parts, the attention, FlexAttention on the same blocks
    for bk in [int(x) for x in args.block_sizes.split(",")]:
        rows += _block_size_rows(q, k, v, bk, base, args, dense_fwd, dense_fb)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


_EXACT = {"recall": 1.0, "oracle": 1.0, "output_error": 0.0}  # dense attention keeps everything


def _dense_rows(q, k, v, base: dict, args) -> tuple[list[dict], float | None, float | None]:
    """Dense SDPA forward (and forward+backward) rows, with their times."""
    rep, rows = args.rep_ms, []
    sdpa = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=args.causal)
    dense_fwd, err = _try(lambda: _bench(sdpa, rep))
    rows.append({**base, "method": "dense SDPA", "what": "fwd", "ms": dense_fwd, "error": err, **_EXACT})
    dense_fb = None
    if not args.no_backward:
        qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))
        do = torch.randn_like(q)

        def sdpa_fb():
            F.scaled_dot_product_attention(qg, kg, vg, is_causal=args.causal).backward(do)

        dense_fb, err = _try(lambda: _bench(sdpa_fb, rep))
        rows.append({**base, "method": "dense SDPA", "what": "fwd+bwd", "ms": dense_fb, "error": err, **_EXACT})
    return rows, dense_fwd, dense_fb


def _block_size_rows(q, k, v, bk: int, base: dict, args, dense_fwd, dense_fb) -> list[dict]:
    """The vidhash and FlexAttention rows of key-block size ``bk``, each with the selection's recall and
    its speed-up over dense (``x_dense``)."""
    from vidhash.kernels.ops import select_blocks_triton

    kw = dict(density=args.density, block_size=bk, query_block_size=args.query_block, causal=args.causal)
    tag = dict(base, block_size=bk, query_block_size=args.query_block, density=args.density, scorer=args.scorer)
    sel = _select(q, k, kw, args)
    quality = selection_quality(q, k, v, sel, args)
    tag.update(kept=sel.kept, key_blocks=sel.num_key_blocks)
    rows = []

    def add(method, what, ms, err=None, **extra):
        row = {**tag, "method": method, "what": what, "ms": ms, "error": err, **quality, **extra}
        dense = dense_fb if "fwd+bwd" in what else dense_fwd
        if ms and dense:
            row["x_dense"] = dense / ms
        rows.append(row)
        return row

    if args.scorer == "pooled":
        _pooled_selection_rows(add, q, k, sel, kw, args)
    else:
        sel_exact = select_blocks_triton(q, k, exact_signatures=True, **kw)
        _selection_rows(add, q, k, sel, kw, args, float((sel_exact.indices == sel.indices).float().mean()))
    attn_ms, fwd_row = _attention_rows(add, q, k, v, sel, kw, args)
    flex_ms = None
    if not args.no_flex and str(bk) in args.flex_block_sizes.split(","):
        flex_ms = _flex_rows(add, q, k, v, sel, args.rep_ms)
    if flex_ms and fwd_row.get("ms"):
        fwd_row["x_flex_kernel"] = flex_ms / fwd_row["ms"]
    if flex_ms and attn_ms:
        rows[-1]["attention_vs_flex"] = flex_ms / attn_ms
    return rows


def selection_quality(q, k, v, sel, args) -> dict:
    """``recall``, ``oracle`` (same count of the heaviest key blocks) and ``output_error`` (relative,
    against dense attention) of the selection ``sel``, over ``args.recall_blocks`` query blocks."""
    from vidhash.kernels.ops import block_sparse_attention_triton

    blocks = eval_query_blocks(sel.num_query_blocks, args.recall_blocks, q.device)
    recall = selection_recall(q, k, sel, max_query_blocks=args.recall_blocks)
    oracle = oracle_recall(q, k, sel.kept, block_size=sel.block_size, query_block_size=sel.query_block_size,
                           causal=sel.causal, max_query_blocks=args.recall_blocks)
    out = block_sparse_attention_triton(q, k, v, sel)
    err = attention_error(q, k, v, out, query_block_size=sel.query_block_size, causal=sel.causal, query_blocks=blocks)
    return {"recall": recall, "oracle": oracle, "output_error": err}


def _select(q, k, kw: dict, args):
    """The selection the rows time: ``pooled`` — the int8 block codes and the level kernel
    (``select_blocks(scorer="pooled", backend="triton")``, the library's default on CUDA); ``simhash`` —
    the SimHash signature + selection kernels."""
    from vidhash.kernels.ops import select_blocks_codes, select_blocks_triton

    if args.scorer == "pooled":
        return select_blocks_codes(q, k, backend="triton", **kw)
    return select_blocks_triton(q, k, **kw)


def _pooled_selection_rows(add, q, k, sel, kw: dict, args) -> None:
    """The pooled selection and its parts: the float block codes (block means: reads q and k once),
    their int8 quantisation (two launches), the level kernel alone, the transposed list (backward prep)."""
    import triton

    from vidhash.kernels.block_score import ops as score_ops
    from vidhash.kernels.block_score.naive import float_codes
    from vidhash.kernels.sparse_attention.ops import _group, transpose_selection

    rep, bk, n = args.rep_ms, kw["block_size"], q.shape[-2]
    ms, err = _try(lambda: _bench(lambda: _select(q, k, kw, args), rep))
    add("vidhash", "selection", ms, err)
    if q.is_cuda:  # eager rows of small shapes time the host's launches; a graph times the kernels
        ms, err = _try(lambda: graph_ms(lambda: _select(q, k, kw, args), rep))
        add("vidhash", "selection (CUDA graph)", ms, err)
    code_kw = dict(block_size=bk, query_block_size=args.query_block, scale=None)
    ms, err = _try(lambda: _bench(lambda: float_codes(q, k, **code_kw), rep))
    add("vidhash", "  block means q+k", ms, err)
    cq, ck, factor, rows_q, rows_k = float_codes(q, k, **code_kw)
    ms, err = _try(lambda: _bench(lambda: score_ops.quantize_codes_triton(cq, ck, factor, rows_q, rows_k), rep))
    add("vidhash", "  int8 codes kernel", ms, err)
    qi, ki, shift = score_ops.quantize_codes_triton(cq, ck, factor, rows_q, rows_k)
    level_kw = dict(kept=sel.kept, num_queries=n, num_keys=n, block_size=bk, query_block_size=args.query_block,
                    local_blocks=1, sink_blocks=1, causal=args.causal)
    ms, err = _try(lambda: _bench(lambda: score_ops.select_from_codes(qi, ki, shift, **level_kw), rep))
    add("vidhash", "  level kernel alone", ms, err)
    ms, err = _try(lambda: _bench(lambda: transpose_selection(sel, _group(triton.next_power_of_2(bk))), rep))
    add("vidhash", "  transposed list (bwd prep)", ms, err)


def _selection_rows(add, q, k, sel, kw: dict, args, agree: float) -> None:
    """The SimHash selection (fast and reference signatures) and its parts: block signatures three ways,
    the selection kernel alone, the transposed list the backward pass uses."""
    import triton

    from vidhash.attention import default_hasher
    from vidhash.kernels.block_select.ops import SIGNATURE_METHODS, block_signatures_fast, select_from_signatures
    from vidhash.kernels.ops import select_blocks_triton
    from vidhash.kernels.sparse_attention.ops import _group, transpose_selection

    rep, bk, n = args.rep_ms, kw["block_size"], q.shape[-2]
    ms, err = _try(lambda: _bench(lambda: select_blocks_triton(q, k, **kw), rep))
    add("vidhash", "selection", ms, err, signature_agreement=agree)
    ms, err = _try(lambda: _bench(lambda: select_blocks_triton(q, k, exact_signatures=True, **kw), rep))
    add("vidhash", "selection (reference signatures)", ms, err)
    hasher = default_hasher(q.shape[-1], device=q.device)
    for method in SIGNATURE_METHODS:
        def sigs(method=method):
            block_signatures_fast(q, args.query_block, hasher, "query", method)
            block_signatures_fast(k, bk, hasher, "key", method)

        ms, err = _try(lambda: _bench(sigs, rep))
        add("vidhash", f"  signatures q+k ({method})", ms, err)
    q_sig = block_signatures_fast(q, args.query_block, hasher, "query", "reference")
    k_sig = block_signatures_fast(k, bk, hasher, "key", "reference")
    sel_kw = dict(n_bits=hasher.n_bits, kept=sel.kept, num_queries=n, num_keys=n, block_size=bk,
                  query_block_size=args.query_block, local_blocks=1, sink_blocks=1, causal=args.causal)
    ms, err = _try(lambda: _bench(lambda: select_from_signatures(q_sig, k_sig, **sel_kw), rep))
    add("vidhash", "  selection kernel alone", ms, err)
    ms, err = _try(lambda: _bench(lambda: transpose_selection(sel, _group(triton.next_power_of_2(bk))), rep))
    add("vidhash", "  transposed list (bwd prep)", ms, err)


def _attention_rows(add, q, k, v, sel, kw: dict, args) -> tuple[float | None, dict]:
    """Attention over the selected blocks alone, selection + attention forward, and both with backward;
    returns the attention-alone time and the forward row."""
    from vidhash.attention import hash_attention as library_hash_attention
    from vidhash.kernels.ops import block_sparse_attention_triton
    from vidhash.kernels.ops import hash_attention as simhash_attention

    if args.scorer == "pooled":  # the library's default path: select_blocks (codes + level kernel), then the kernel
        def hash_attention(q, k, v, **kw):
            return library_hash_attention(q, k, v, scorer="pooled", backend="triton", **kw)
    else:  # the fused SimHash path
        hash_attention = simhash_attention
    rep = args.rep_ms
    attn_ms, err = _try(lambda: _bench(lambda: block_sparse_attention_triton(q, k, v, sel), rep))
    add("vidhash", "attention", attn_ms, err)
    ms, err = _try(lambda: _bench(lambda: hash_attention(q, k, v, **kw), rep))
    fwd_row = add("vidhash", "select+attn fwd", ms, err)
    if q.is_cuda:  # as a compiled reduce-overhead model runs it: no host launch time
        ms, err = _try(lambda: graph_ms(lambda: hash_attention(q, k, v, **kw), rep))
        add("vidhash", "select+attn fwd (CUDA graph)", ms, err)
    if not args.no_backward:
        qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))
        do = torch.randn_like(q)

        def fb():
            hash_attention(qg, kg, vg, **kw).backward(do)

        ms, err = _try(lambda: _bench(fb, rep))
        add("vidhash", "fwd+bwd", ms, err)

        def attn_fb():
            block_sparse_attention_triton(qg, kg, vg, sel).backward(do)

        ms, err = _try(lambda: _bench(attn_fb, rep))
        add("vidhash", "attention fwd+bwd", ms, err)
    return attn_ms, fwd_row


def _flex_rows(add, q, k, v, sel, rep: int) -> float | None:
    """FlexAttention on the blocks ``sel`` keeps: BlockMask build and kernel time (its compile time and
    its difference from vidhash's output in the row); returns the kernel time."""
    from vidhash.kernels.ops import block_sparse_attention_triton

    flex_ms = None
    t0 = time.perf_counter()
    bm, err = _try(lambda: flex_block_mask(sel, backward=True))
    if bm is None:
        add("FlexAttention", "BlockMask build", None, err)
        return None
    build, _ = _try(lambda: _bench(lambda: flex_block_mask(sel, backward=True), rep))
    add("FlexAttention", "BlockMask build", build, None)
    fn = flex_attention_fn(q.device)
    opts, err = _try(lambda: flex_kernel_options(sel))
    if err is not None:
        add("FlexAttention", "kernel", None, err)
        return None
    out, err = _try(lambda: fn(q, k, v, block_mask=bm, kernel_options=opts))
    compile_s = time.perf_counter() - t0
    if err is not None:
        add("FlexAttention", "kernel", None, err)
        return None
    flex_ms, err = _try(lambda: _bench(lambda: fn(q, k, v, block_mask=bm, kernel_options=opts), rep))
    ref = block_sparse_attention_triton(q, k, v, sel)
    diff = float((out.float() - ref.float()).norm() / ref.float().norm())
    add("FlexAttention", "kernel", flex_ms, err, compile_s=compile_s, rel_diff_vs_vidhash=diff)
    return flex_ms


def print_table(rows: list[dict]) -> None:
    print(f"\n{'shape':>16} {'bk':>4} {'method':>13} {'what':>34} {'ms':>9} {'×dense':>8} {'×flex':>6} {'recall':>7} "
          f"{'oracle':>7} {'rel err':>8}")
    for r in rows:
        ms = f"{r['ms']:.3f}" if r.get("ms") else "—"
        xd = f"{r['x_dense']:.1f}" if r.get("x_dense") else ""
        xf = f"{r['x_flex_kernel']:.2f}" if r.get("x_flex_kernel") else ""
        rec = f"{r['recall']:.3f}" if r.get("recall") is not None else ""
        orc = f"{r['oracle']:.3f}" if r.get("oracle") is not None else ""
        err = f"{r['output_error']:.4f}" if r.get("output_error") is not None else ""
        print(f"{r['shape']:>16} {r.get('block_size', ''):>4} {r['method']:>13} {r['what']:>34} {ms:>9} {xd:>8} {xf:>6} "
              f"{rec:>7} {orc:>7} {err:>8}")
        if r.get("error"):
            print(f"{'':>16}      error: {r['error']}")


def run(args) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("vidhash bench attention needs a CUDA device (--device cpu only for smoke runs under TRITON_INTERPRET=1)")
    if not args.device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"--device {args.device} runs the Triton kernels only in Triton's interpreter: set "
                         "TRITON_INTERPRET=1 before the command (a smoke run; its times mean nothing)")
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError as err:
        raise ValueError(f"--sizes must be comma-separated integers, got {args.sizes!r}") from err
    if not sizes and args.no_wan:
        raise ValueError("nothing to run: --sizes is empty and --no-wan skips the Wan shape")
    shapes = [(f"N={n}", grid_for(n), args.heads, args.head_dim) for n in sizes]
    if not args.no_wan:
        shapes.append(("Wan1.3B-81f-480p", WAN_1_3B_GRID, WAN_1_3B_HEADS, WAN_1_3B_HEAD_DIM))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"attention bench on {device}: {args.dtype}, density {args.density:.4g}, query blocks {args.query_block}, "
          f"{'causal' if args.causal else 'non-causal'}, torch {torch.__version__}")
    rows = []
    for name, grid, heads, d in shapes:
        t0 = time.perf_counter()
        new = run_shape(name, grid, heads, d, args)
        rows.extend(new)
        print(f"  {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        print_table(new)
        if args.json:  # after every shape, so a cut-off run keeps what it measured
            _write(args.json, device, args, rows, {})
    print("\nall shapes:")
    print_table(rows)
    tuned = autotuned_configs()
    for name, cfgs in tuned.items():
        for key, cfg in cfgs.items():
            print(f"autotuned {name} {key}: {cfg}")
    if args.json:
        _write(args.json, device, args, rows, tuned)
        print(f"wrote {args.json}")
    return 0


def autotuned_configs() -> dict[str, dict[str, str]]:
    """The configs the autotuner chose, per sparse-attention kernel (pointer and TMA) and key."""
    from vidhash.kernels.sparse_attention import kernel as sk
    from vidhash.kernels.sparse_attention import kernel_tma as tk

    kernels = {name: getattr(sk, name) for name in ("sparse_attn_fwd_kernel", "sparse_attn_bwd_dq_kernel",
                                                     "sparse_attn_bwd_dkdv_kernel")}
    kernels.update({name: getattr(tk, name) for name in ("sparse_attn_fwd_tma_kernel", "sparse_attn_bwd_dq_tma_kernel",
                                                          "sparse_attn_bwd_dkdv_tma_kernel")})
    return {name: {str(key): str(cfg) for key, cfg in getattr(fn, "cache", {}).items()} for name, fn in kernels.items()}


def _write(path, device, args, rows, tuned) -> None:
    write_json(path, {"device": device, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "autotuned": tuned,
                      "config": {k: v for k, v in recorded_flags(args).items() if not k.startswith("_")}, "rows": rows}, indent=2)
